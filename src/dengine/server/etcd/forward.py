"""A follower's writes go to the leader, as etcd's followers forward proposals: the etcd
request as the client sent it, over the leader's client port (the same etcd method), once.

A client's write is never refused with a redirect (etcd's clients do not follow one) and
never retried once sent: a forwarded write whose answer does not come back has an unknown
outcome ("request timed out"). The leader marks its answer with the log index of the
write (trailing metadata), and the follower waits for its own apply of that index before
answering, so that a serializable read on this member after the write sees it, as on
etcd. A request forwarded once is not forwarded again (leader changed meanwhile).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc

from dengine.errors import KvError
from dengine.server.etcd.errors import LEADER_CHANGED, TIMED_OUT, TIMED_OUT_CONNECTION_LOST

log = logging.getLogger("dengine.server.etcd")

FORWARDED = "dengine-forwarded"  # request metadata: sent by a follower
APPLIED_INDEX = "dengine-index"  # trailing metadata of the leader's answer: the log index
_MAX_CHANNELS = 8


def forwarded(context: Any) -> bool:
    """Whether this request came from a follower (never forwarded twice)."""
    return any(key == FORWARDED for key, _ in context.invocation_metadata() or ())


class Forwarder:
    """Channels to the leaders' client ports, by address; `call` sends one request."""

    def __init__(self, options: list[tuple[str, Any]],
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        self._options = options
        self._credentials = credentials  # TLS to the leaders' client ports (None: plaintext)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._closing: set[asyncio.Future[None]] = set()

    async def call(
        self, address: str, method: str, request: bytes, timeout: float | None
    ) -> tuple[bytes, int]:
        """The leader's answer to `request` at `method` (a full path such as
        "/etcdserverpb.KV/Put"), and the log index of the write (0: not said). An error
        of the leader is raised as it is (KvError); no answer: a timeout."""
        channel = self._channels.get(address)
        if channel is None:
            while len(self._channels) >= _MAX_CHANNELS:  # leaders of the past
                old = self._channels.pop(next(iter(self._channels)))
                self._closing.add(task := asyncio.ensure_future(old.close()))
                task.add_done_callback(self._closing.discard)
            channel = self._channels[address] = (
                grpc.aio.secure_channel(address, self._credentials, options=self._options)
                if self._credentials is not None
                else grpc.aio.insecure_channel(address, options=self._options))
        call = channel.unary_unary(method)
        try:
            invocation = call(request, timeout=timeout, metadata=((FORWARDED, "1"),))
            response = await invocation
            trailing = await invocation.trailing_metadata()
        except grpc.aio.AioRpcError as e:
            raise _status_of(e) from None
        index = 0
        for key, value in trailing or ():
            if key == APPLIED_INDEX and isinstance(value, str) and value.isdigit():
                index = int(value)
        return bytes(response), index

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()


def _status_of(e: grpc.aio.AioRpcError) -> KvError:
    code, details = e.code(), e.details() or ""
    if details.startswith("etcdserver: "):  # the leader's own answer
        return KvError(code.name, details)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return KvError("UNAVAILABLE", TIMED_OUT)
    if code == grpc.StatusCode.UNAVAILABLE:
        # Connection refused or lost: the write may or may not have reached the leader.
        log.debug("forwarding to the leader failed: %s", details)
        return KvError("UNAVAILABLE", TIMED_OUT_CONNECTION_LOST)
    if code == grpc.StatusCode.CANCELLED:
        return KvError("UNAVAILABLE", LEADER_CHANGED)
    return KvError(code.name, details)
