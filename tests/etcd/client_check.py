"""One etcd Python client library against one cluster, in a process of its own.

    python client_check.py etcd3|aetcd HOST:PORT PREFIX

Imports every dengine module first (its generated etcd protos included), then the client
library, in this one process: they must coexist (a library and dengine registering the
same .proto file or message names fail with "duplicate symbol"/"duplicate file name"). Then
put/get/get_prefix/delete/replace/transaction/status/members under PREFIX, and prints one
JSON report with revisions relative to the store revision when it started. A run against
real etcd is the expected report; test_clients.py compares.

The two libraries cannot share a process with each other (both register etcd's `kv.proto`
and `auth.proto` under the same file names in protobuf's default pool), hence one process
per library.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import pkgutil
import sys
from typing import Any


def import_dengine() -> list[str]:
    import dengine

    names = []
    for mod in pkgutil.walk_packages(dengine.__path__, "dengine."):
        if mod.name.endswith("__main__"):
            continue
        importlib.import_module(mod.name)
        names.append(mod.name)
    return names


def kv(value: bytes | None, meta: Any, base: int) -> Any:
    if value is None:
        return None
    return {"key": meta.key.decode().removeprefix(PREFIX), "value": value.decode(),
            "create": meta.create_revision - base, "mod": meta.mod_revision - base,
            "version": meta.version,
            "lease": getattr(meta, "lease", getattr(meta, "lease_id", 0))}


def check_etcd3(endpoint: str, p: str) -> dict[str, Any]:
    import etcd3

    host, port = endpoint.rsplit(":", 1)
    c = etcd3.client(host, int(port), timeout=10)
    r: dict[str, Any] = {}
    base = c.get_response(p.encode()).header.revision
    r["put"] = c.put(f"{p}a", "1").header.revision - base
    c.put(f"{p}a", "2")
    c.put(f"{p}b", "3")
    prev = c.put(f"{p}b", "4", prev_kv=True).prev_kv
    r["put_prev_kv"] = kv(prev.value, prev, base)
    r["get"] = kv(*c.get(f"{p}a"), base)
    r["get_missing"] = kv(*c.get(f"{p}missing"), base)
    r["get_prefix"] = [kv(v, m, base) for v, m in c.get_prefix(p)]
    r["get_prefix_desc"] = [m.key.decode().removeprefix(p) for _, m in
                            c.get_prefix(p, sort_order="descend", sort_target="mod")]
    r["get_range"] = [m.key.decode().removeprefix(p) for _, m in c.get_range(f"{p}a", f"{p}b")]
    r["replace_ok"] = c.replace(f"{p}a", "2", "5")
    r["replace_stale"] = c.replace(f"{p}a", "2", "6")
    r["put_if_not_exists"] = [c.put_if_not_exists(f"{p}n", "1"),
                              c.put_if_not_exists(f"{p}n", "2")]
    t = c.transactions
    ok, resps = c.transaction(
        compare=[t.value(f"{p}a") == "5", t.version(f"{p}b") == 2,
                 t.create(f"{p}missing") == 0, t.mod(f"{p}a") > 0],
        success=[t.put(f"{p}c", "7"), t.get(f"{p}a"), t.delete(f"{p}n")],
        failure=[t.put(f"{p}failed", "1")])
    r["txn_success"] = [ok, _etcd3_responses(resps, base)]
    ok, resps = c.transaction(compare=[t.value(f"{p}a") == "nope"],
                              success=[t.put(f"{p}x", "1")], failure=[t.get(f"{p}c")])
    r["txn_failure"] = [ok, _etcd3_responses(resps, base)]
    r["delete"] = [c.delete(f"{p}c"), c.delete(f"{p}c")]
    deleted = c.delete(f"{p}b", prev_kv=True, return_response=True)
    r["delete_prev_kv"] = [deleted.deleted, [kv(x.value, x, base) for x in deleted.prev_kvs]]
    r["after"] = [kv(v, m, base) for v, m in c.get_prefix(p)]
    r["revision"] = c.get_response(p.encode()).header.revision - base
    st = c.status()
    members = list(c.members)
    r["status"] = {"version": bool(st.version), "raft_term": st.raft_term > 0,
                   "raft_index": st.raft_index > 0,
                   "leader_is_member": st.leader is not None
                   and st.leader.id in {m.id for m in members}}
    r["members"] = sorted(u for m in members for u in m.client_urls)
    r["member_ids"] = len({m.id for m in members if m.id})
    r.update(_watch_etcd3(c, p, base))
    # leases: grant, attach, TimeToLive with keys, the keep-alive stream, revoke
    lease = c.lease(60)
    c.put(f"{p}lease-a", "1", lease=lease)
    c.put(f"{p}lease-b", "2", lease=lease.id)
    info = c.get_lease_info(lease.id)
    r["lease"] = {"id": lease.id > 0, "ttl": lease.ttl, "granted": info.grantedTTL,
                  "remaining": 55 <= info.TTL <= 60,
                  "keys": sorted(k.decode().removeprefix(p) for k in info.keys),
                  "attached": [kv(v, m, base)["lease"] == lease.id
                               for v, m in c.get_prefix(f"{p}lease-")],
                  "refresh": [x.TTL for x in lease.refresh()]}
    revision = c.get_response(p.encode()).header.revision
    lease.revoke()
    r["lease_revoked"] = {"keys": list(c.get_prefix(f"{p}lease-")),
                          "revision": c.get_response(p.encode()).header.revision - revision,
                          "ttl": lease.remaining_ttl,
                          "refresh": [x.TTL for x in lease.refresh()]}
    try:
        c.put(f"{p}lease-c", "3", lease=lease.id)
        r["lease_put_unknown"] = "ok"
    except Exception as e:
        r["lease_put_unknown"] = "lease not found" in f"{e} {e!r}"
    c.close()
    return r


def _watch_etcd3(c: Any, p: str, base: int) -> dict[str, Any]:
    """Watches: the history from the first write (prev_kv), a live one, a compacted one."""
    import threading

    import etcd3

    r: dict[str, Any] = {}

    def event(e: Any) -> list[Any]:
        prev = e.prev_value.decode() if e._event.HasField("prev_kv") else None
        kind = {"PutEvent": "PUT", "DeleteEvent": "DELETE"}[type(e).__name__]
        return [kind, e.key.decode().removeprefix(p), e.value.decode(),
                e.mod_revision - base, prev]

    events, cancel = c.watch_prefix(p, start_revision=base + 1, prev_kv=True)
    r["watch_history"] = [event(next(events)) for _ in range(4)]
    cancel()
    events, cancel = c.watch(f"{p}live")
    timer = threading.Timer(0.5, lambda: c.put(f"{p}live", "now"))
    timer.start()
    r["watch_live"] = event(next(events))
    cancel()
    timer.join()
    rev = c.get_response(p.encode()).header.revision
    c.compact(rev)
    events, cancel = c.watch_prefix(p, start_revision=base + 1)
    try:
        next(events)
        r["watch_compacted"] = "no error"
    except etcd3.exceptions.RevisionCompactedError as e:
        r["watch_compacted"] = ["RevisionCompactedError", e.compacted_revision - base]
    cancel()
    return r


def _etcd3_responses(resps: list[Any], base: int) -> list[Any]:
    out = []
    for resp in resps:
        if isinstance(resp, list):  # a range: [(value, metadata)]
            out.append(["range", [kv(v, m, base) for v, m in resp]])
        else:
            out.append([resp.WhichOneof("response")])
    return out


async def check_aetcd(endpoint: str, p: str) -> dict[str, Any]:
    import aetcd

    host, port = endpoint.rsplit(":", 1)
    r: dict[str, Any] = {}
    pb = p.encode()

    def b(s: str) -> bytes:
        return (p + s).encode()

    async with aetcd.Client(host, int(port), timeout=10) as c:
        base = (await c.get_prefix(pb)).header.revision
        r["put"] = (await c.put(b("a"), b"1")).header.revision - base
        await c.put(b("a"), b"2")
        await c.put(b("b"), b"3")
        prev = (await c.put(b("b"), b"4", prev_kv=True)).prev_kv
        r["put_prev_kv"] = kv(prev.value, prev, base)
        got = await c.get(b("a"))
        r["get"] = kv(got.value, got, base)
        r["get_missing"] = await c.get(b("missing"))
        r["get_prefix"] = [kv(x.value, x, base) for x in await c.get_prefix(pb)]
        r["get_prefix_desc"] = [x.key.decode().removeprefix(p) for x in await c.get_prefix(
            pb, sort_order="descend", sort_target="mod")]
        r["get_range"] = [x.key.decode().removeprefix(p)
                          for x in await c.get_range(b("a"), b("b"))]
        r["replace_ok"] = await c.replace(b("a"), b"2", b"5")
        r["replace_stale"] = await c.replace(b("a"), b"2", b"6")
        t = c.transactions
        created = []
        for value in (b"1", b"2"):
            ok, _ = await c.transaction(compare=[t.create(b("n")) == 0],
                                        success=[t.put(b("n"), value)], failure=[])
            created.append(ok)
        r["put_if_not_exists"] = created
        ok, resps = await c.transaction(
            compare=[t.value(b("a")) == b"5", t.version(b("b")) == 2,
                     t.create(b("missing")) == 0, t.mod(b("a")) > 0],
            success=[t.put(b("c"), b"7"), t.get(b("a")), t.delete(b("n"))],
            failure=[t.put(b("failed"), b"1")])
        r["txn_success"] = [ok, _aetcd_responses(resps, base)]
        ok, resps = await c.transaction(compare=[t.value(b("a")) == b"nope"],
                                        success=[t.put(b("x"), b"1")],
                                        failure=[t.get(b("c"))])
        r["txn_failure"] = [ok, _aetcd_responses(resps, base)]
        r["delete"] = [bool(await c.delete(b("c"))), bool(await c.delete(b("c")))]
        deleted = await c.delete_range(b("b"), b("b") + b"\0", prev_kv=True)
        r["delete_prev_kv"] = [deleted.deleted, [kv(x.value, x, base) for x in deleted]]
        r["after"] = [kv(x.value, x, base) for x in await c.get_prefix(pb)]
        r["revision"] = (await c.get_prefix(pb)).header.revision - base
        st = await c.status()
        members = [m async for m in c.members()]
        r["status"] = {"version": bool(st.version), "raft_term": st.raft_term > 0,
                       "raft_index": st.raft_index > 0,
                       "leader_is_member": st.leader is not None
                       and st.leader.id in {m.id for m in members}}
        r["members"] = sorted(u for m in members for u in m.client_urls)
        r["member_ids"] = len({m.id for m in members if m.id})
        r.update(await _watch_aetcd(c, p, base))
        lease = await c.lease(60)
        await c.put(b("lease-a"), b"1", lease=lease)
        await c.put(b("lease-b"), b"2", lease=lease.id)
        info = await c.get_lease_info(lease.id)
        r["lease"] = {"id": lease.id > 0, "ttl": lease.ttl, "granted": info.grantedTTL,
                      "remaining": 55 <= info.TTL <= 60,
                      "keys": sorted(k.decode().removeprefix(p) for k in info.keys),
                      "attached": [x.lease == lease.id for x in await c.get_prefix(b("lease-"))],
                      "refresh": [(await lease.refresh()).TTL]}
        revision = (await c.get_prefix(pb)).header.revision
        await lease.revoke()
        r["lease_revoked"] = {"keys": list(await c.get_prefix(b("lease-"))),
                              "revision": (await c.get_prefix(pb)).header.revision - revision,
                              "ttl": await lease.remaining_ttl(),
                              "refresh": [(await lease.refresh()).TTL]}
        try:
            await c.put(b("lease-c"), b"3", lease=lease.id)
            r["lease_put_unknown"] = "ok"
        except Exception as e:
            r["lease_put_unknown"] = "lease not found" in f"{e} {e!r}"
    return r


async def _watch_aetcd(c: Any, p: str, base: int) -> dict[str, Any]:
    """Watches: the history from the first write (prev_kv), a live one, a compacted one."""
    import aetcd

    r: dict[str, Any] = {}
    pb = p.encode()

    def event(e: Any) -> list[Any]:
        prev = e.prev_kv.value.decode() if e.prev_kv is not None and e.prev_kv.key else None
        return [str(getattr(e.kind, "name", e.kind)).upper(),
                e.kv.key.decode().removeprefix(p), e.kv.value.decode(),
                e.kv.mod_revision - base, prev]

    async def take(watch: Any, n: int) -> list[Any]:
        out: list[Any] = []
        async for e in watch:
            out.append(event(e))
            if len(out) == n:
                break
        return out

    watch = await c.watch_prefix(pb, start_revision=base + 1, prev_kv=True)
    r["watch_history"] = await asyncio.wait_for(take(watch, 4), 10)
    await watch.cancel()
    watch = await c.watch(pb + b"live")
    later = asyncio.get_running_loop().call_later(
        0.5, lambda: asyncio.ensure_future(c.put(pb + b"live", b"now")))
    r["watch_live"] = (await asyncio.wait_for(take(watch, 1), 10))[0]
    later.cancel()
    await watch.cancel()
    rev = (await c.get_prefix(pb)).header.revision
    await c.compact(rev)
    watch = await c.watch_prefix(pb, start_revision=base + 1)
    try:
        await asyncio.wait_for(take(watch, 1), 10)
        r["watch_compacted"] = "no error"
    except aetcd.exceptions.RevisionCompactedError as e:
        r["watch_compacted"] = ["RevisionCompactedError", e.compacted_revision - base]
    return r


def _aetcd_responses(resps: list[Any], base: int) -> list[Any]:
    out = []
    for resp in resps:
        if isinstance(resp, list):  # a range: [(value, Get)]
            out.append(["range", [kv(v, m, base) for v, m in resp]])
        else:
            out.append([resp.WhichOneof("response")])
    return out


PREFIX = ""


def main() -> None:
    global PREFIX
    library, endpoint, prefix = sys.argv[1:4]
    PREFIX = prefix
    imported = import_dengine()
    if library == "etcd3":
        report = check_etcd3(endpoint, prefix)
    else:
        report = asyncio.run(check_aetcd(endpoint, prefix))
    report["dengine_modules"] = len(imported)
    report["dengine_etcd_modules"] = [m for m in imported if "etcd" in m]
    print(json.dumps(report))


if __name__ == "__main__":
    main()
