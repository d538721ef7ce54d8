"""The embedded `Engine` under etcd's auth: an in-process Engine is the application's own
trusted code, so its calls are not checked (as root's) even while auth is enabled; the
client ports' requests are (docs/auth.md, "The embedded Engine")."""

from __future__ import annotations

import asyncio
from pathlib import Path

from dengine import Engine
from dengine.kv import auth as kvauth
from dengine.node.engine import KV_AUTH
from dengine.proto.auth_pb2 import AuthCommand
from dengine.proto.etcd import rpc_pb2 as pb

FAST = {"tick_ms": 5, "election_timeout_ms": 50, "heartbeat_interval_ms": 15,
        "clock_drift_ms": 10}


def test_the_embedded_engine_is_trusted_while_auth_is_enabled(tmp_path: Path) -> None:
    async def main() -> None:
        async with await Engine.start(str(tmp_path), **FAST) as engine:
            await engine.wait_ready(timeout=5)
            hashed = kvauth.hash_password("pw", b"0123456789abcdef")
            for command in (
                    AuthCommand(user_add=pb.AuthUserAddRequest(name="root", password=hashed)),
                    AuthCommand(user_grant_role=pb.AuthUserGrantRoleRequest(user="root",
                                                                            role="root")),
                    AuthCommand(auth_enable=pb.AuthEnableRequest())):
                result = await engine.kv_request(KV_AUTH, command.SerializeToString())
                assert not isinstance(result.response, BaseException), result.response
            assert engine.query_local(lambda store: store.auth.enabled)
            # no token, no user: the application's own calls are served
            await engine.put(b"/app/a", b"1")
            assert await engine.get(b"/app/a", consistency="linearizable") == b"1"
            assert (await engine.range(b"/", b"0")).count == 1
            await engine.delete(b"/app/a")
            assert await engine.get(b"/app/a") is None

    asyncio.run(asyncio.wait_for(main(), 60))
