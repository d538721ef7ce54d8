"""Writes checked as they apply (etcd's authApplierV3, docs/auth.md): a request proposed
while auth is on carries its user and the auth revision it was checked at
(`WriteCommand.auth_info`), and the store checks the permission again on the auth state it
applies to: one stamped at an older auth revision is refused ("etcdserver: revision of
auth store is old", whatever the permission is by then, as etcd 3.4), on every replica
alike."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_auth import HASH, cmd, grant, root_and_u1

from dengine.errors import InvalidRequest, KvError
from dengine.kv.codec import (
    OP_AUTH,
    OP_COMPACTION,
    OP_DELETE_RANGE,
    OP_LEASE_GRANT,
    OP_LEASE_REVOKE,
    OP_PUT,
    OP_STAMPED,
    OP_TXN,
    decode_any_command,
    encode_delete,
    encode_insert,
    encode_request,
    stamp_command,
    stamp_request,
)
from dengine.kv.mvcc import MvccStore
from dengine.kv.validate import Limits, check_encoded_commands
from dengine.proto import AuthInfo, WriteCommand
from dengine.proto.etcd import rpc_pb2 as pb
from dengine.proto.etcd.auth_pb2 import Permission

OLD = "INVALID_ARGUMENT etcdserver: revision of auth store is old"
LIMITS = Limits(max_key_size=200, max_value_size=200, max_request_size=1 << 20)
DENIED = "PERMISSION_DENIED etcdserver: permission denied"
EMPTY = "INVALID_ARGUMENT etcdserver: user name is empty"


def stamped(op: int, request: bytes, user: str | None = None, revision: int = 0) -> bytes:
    """The command a member proposes: unstamped (user None: auth off, or the Engine)."""
    command = encode_request(op, request)
    if user is None:
        return command
    return stamp_request(command, AuthInfo(username=user, revision=revision)
                         .SerializeToString())


def put(key: bytes, user: str | None = None, revision: int = 0, **kw: object) -> bytes:
    return stamped(OP_PUT, pb.PutRequest(key=key, value=b"v", **kw).SerializeToString(),
                   user, revision)


def apply(store: MvccStore, command: bytes) -> object:
    return store.apply(*decode_any_command(command)).response


def outcome(response: object) -> str:
    return f"{response.grpc_code} {response.message}" if isinstance(response, KvError) \
        else "ok"


def auth(store: MvccStore, data: bytes) -> None:
    assert outcome(apply(store, encode_request(OP_AUTH, data))) == "ok"


def enabled() -> MvccStore:
    """root; u1 with role r1 (readwrite /x); auth enabled."""
    store = MvccStore()
    for data in root_and_u1(grant("r1", b"/x", b"", Permission.READWRITE)):
        auth(store, data)
    return store


def test_the_stamp_is_field_11_and_decodes_as_the_key_of_the_request():
    request = pb.PutRequest(key=b"/x", value=b"v").SerializeToString()
    info = AuthInfo(username="u1", revision=7)
    command = stamped(OP_PUT, request, "u1", 7)
    assert command == WriteCommand(put=request, auth_info=info).SerializeToString()
    assert decode_any_command(command) == (OP_PUT, info.SerializeToString(), request)
    assert decode_any_command(encode_request(OP_PUT, request)) == (OP_PUT, b"", request)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["put", "delete_range", "txn", "lease_revoke", "insert", "delete"]),
       st.binary(max_size=300), st.text(max_size=40), st.integers(0, (1 << 64) - 1))
def test_stamping_equals_protobufs_encoding_and_decodes_back(field, data, user, revision):
    info = AuthInfo(username=user, revision=revision)
    if field in ("insert", "delete"):
        command = WriteCommand(**{field: {"key": data}})
    else:
        command = WriteCommand(**{field: data})
    plain = command.SerializeToString()
    command.auth_info.CopyFrom(info)
    stamped_bytes = stamp_command(plain, info.SerializeToString())
    assert stamped_bytes == command.SerializeToString()
    op, key, value = decode_any_command(stamped_bytes)
    if field in ("insert", "delete"):
        assert (op, value) == (OP_STAMPED, plain)
    else:
        assert value == data and op == decode_any_command(plain)[0]
    assert key == info.SerializeToString()


def test_a_write_stamped_at_the_current_revision_applies_and_an_older_one_is_refused():
    store = enabled()
    now = store.auth.revision
    assert outcome(apply(store, put(b"/x", "u1", now))) == "ok"
    assert outcome(apply(store, put(b"/y", "u1", now))) == DENIED
    # the permission is revoked after the write was checked, before it applies
    auth(store, cmd("root", role_revoke_permission=pb.AuthRoleRevokePermissionRequest(
        role="r1", key=b"/x")))
    revision = store.revision
    assert outcome(apply(store, put(b"/x", "u1", now))) == OLD
    assert store.revision == revision  # nothing applied
    # checked after the revoke: denied as it applies too
    assert outcome(apply(store, put(b"/x", "u1", store.auth.revision))) == DENIED


def test_an_older_revision_is_refused_even_when_the_permission_still_holds():
    """etcd 3.4's isOpPermitted compares the revision before anything else (root too)."""
    store = enabled()
    then = store.auth.revision
    auth(store, cmd("root", user_add=pb.AuthUserAddRequest(name="other", password=HASH)))
    assert outcome(apply(store, put(b"/x", "u1", then))) == OLD
    assert outcome(apply(store, put(b"/x", "root", then))) == OLD
    assert outcome(apply(store, put(b"/x", "u1", store.auth.revision))) == "ok"
    assert outcome(apply(store, put(b"/x", "u1", 0))) == EMPTY  # etcd: revision 0, no user


def test_unstamped_writes_and_auth_disabled_by_then_apply_unchecked():
    store = enabled()
    then = store.auth.revision
    assert outcome(apply(store, put(b"/y"))) == "ok"  # the embedded Engine: trusted
    auth(store, cmd("root", auth_disable=pb.AuthDisableRequest()))
    assert outcome(apply(store, put(b"/y", "u1", then))) == "ok"  # etcd: auth off, no check


def test_a_txn_with_any_forbidden_op_is_refused_whole_as_it_applies():
    store = enabled()
    now = store.auth.revision
    ok = pb.TxnRequest(compare=[pb.Compare(key=b"/x")],
                       success=[pb.RequestOp(request_put=pb.PutRequest(key=b"/x"))])
    assert outcome(apply(store, stamped(OP_TXN, ok.SerializeToString(), "u1", now))) == "ok"
    bad = pb.TxnRequest()
    bad.CopyFrom(ok)
    bad.failure.add().request_delete_range.key = b"/y"  # the branch not taken counts
    revision = store.revision
    assert outcome(apply(store, stamped(OP_TXN, bad.SerializeToString(), "u1", now))) \
        == DENIED
    auth(store, cmd("root", role_add=pb.AuthRoleAddRequest(name="r2")))
    assert outcome(apply(store, stamped(OP_TXN, ok.SerializeToString(), "u1", now))) == OLD
    assert store.revision == revision
    # a delete range: the same rule
    delete = pb.DeleteRangeRequest(key=b"/x").SerializeToString()
    assert outcome(apply(store, stamped(OP_DELETE_RANGE, delete, "u1", now))) == OLD


def test_a_lease_revoke_is_checked_on_the_keys_of_the_lease_as_it_applies():
    store = enabled()
    now = store.auth.revision
    for lease_id in (1, 2):
        grant_req = pb.LeaseGrantRequest(ID=lease_id, TTL=60).SerializeToString()
        assert outcome(apply(store, encode_request(OP_LEASE_GRANT, grant_req))) == "ok"
    assert outcome(apply(store, put(b"/x", "u1", now, lease=1))) == "ok"
    auth(store, cmd("root", role_add=pb.AuthRoleAddRequest(name="r2")))

    def revoke(lease_id: int) -> bytes:
        return stamped(OP_LEASE_REVOKE, pb.LeaseRevokeRequest(ID=lease_id)
                       .SerializeToString(), "u1", now)

    assert outcome(apply(store, revoke(1))) == OLD and 1 in store.leases
    # no key attached: etcd checks nothing (checkLeasePuts has no key to check)
    assert outcome(apply(store, revoke(2))) == "ok" and 2 not in store.leases


def test_a_client_cannot_send_a_stamp_of_its_own():
    with pytest.raises(InvalidRequest, match="auth_info is set by the member"):
        check_encoded_commands([put(b"/x", "root", 1 << 40)], LIMITS)
    check_encoded_commands([put(b"/x")], LIMITS)


def test_an_undecodable_stamp_is_refused_the_same_everywhere():
    request = pb.PutRequest(key=b"/x").SerializeToString()
    command = encode_request(OP_PUT, request) + b"\x5a\x02\xff\xff"
    for store in (enabled(), MvccStore()):
        assert "no valid" in outcome(apply(store, command))


# ---- replicas ---------------------------------------------------------------------------

_CHANGES = [
    grant("r1", b"/x", b"", Permission.READWRITE),
    cmd("root", role_revoke_permission=pb.AuthRoleRevokePermissionRequest(
        role="r1", key=b"/x")),
    cmd("root", user_revoke_role=pb.AuthUserRevokeRoleRequest(name="u1", role="r1")),
    cmd("root", user_grant_role=pb.AuthUserGrantRoleRequest(user="u1", role="r1")),
    cmd("root", auth_disable=pb.AuthDisableRequest()),
    cmd("root", auth_enable=pb.AuthEnableRequest()),
    cmd(auth_enable=pb.AuthEnableRequest()),
]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(_CHANGES)), st.integers(0, 3),
                          st.sampled_from(["u1", "root"])), max_size=25))
def test_replicas_judge_stamped_writes_alike_and_as_etcd(steps):
    """A log of auth changes and writes stamped at the auth revision of a few steps back
    (a proposal racing the changes): each answer is etcd's rule (auth off: applies; an
    older revision: refused; else the user's permission then); a second replica applying
    the log gives the same answers, a third replaying it in chunks (a restarted member's
    WAL replay) the same state."""
    first, second, third = enabled(), enabled(), enabled()
    seen = [first.auth.revision]  # the auth revision after each step
    log: list[bytes] = []
    for change, lag, user in steps:
        if change < len(_CHANGES):
            command = encode_request(OP_AUTH, _CHANGES[change])
            assert outcome(apply(first, command)) == outcome(apply(second, command))
        else:
            a = first.auth
            revision = seen[max(0, len(seen) - 1 - lag)]
            if not a.enabled:
                want = "ok"
            elif revision < a.revision:
                want = OLD
            elif user == "root" or any(p.key == b"/x" for r in a.users["u1"].roles
                                       for p in a.roles[r].keyPermission):
                want = "ok"
            else:
                want = DENIED
            command = put(b"/x", user, revision)
            assert outcome(apply(first, command)) == want
            assert outcome(apply(second, command)) == want
        log.append(command)
        seen.append(first.auth.revision)
    third.apply_ops([(n, 1, *decode_any_command(c)) for n, c in enumerate(log)])
    for replica in (second, third):
        assert replica.revision == first.revision
        assert replica.copy_packed() == first.copy_packed()
        assert replica.auth.image() == first.auth.image()


def test_plain_inserts_and_deletes_are_stamped_as_op_21_and_checked_as_a_put_or_delete():
    """dengine's own Write while auth is on (kv.codec.stamp_command): a plain insert is
    checked as a put of its key, a plain delete as a delete of its key; a compaction is
    not stamped (etcd checks it at apply not at all)."""
    info = AuthInfo(username="u1", revision=1).SerializeToString()
    plain = encode_insert(b"/x", b"v")
    assert decode_any_command(stamp_command(plain, info)) == (OP_STAMPED, info, plain)
    compaction = encode_request(OP_COMPACTION, pb.CompactionRequest(revision=1)
                                .SerializeToString())
    assert stamp_command(compaction, info) == compaction
    store = enabled()
    now = store.auth.revision
    stamp = AuthInfo(username="u1", revision=now).SerializeToString()
    assert outcome(apply(store, stamp_command(encode_insert(b"/x", b"1"), stamp))) == "ok"
    assert outcome(apply(store, stamp_command(encode_insert(b"/y", b"1"), stamp))) == DENIED
    auth(store, cmd("root", role_add=pb.AuthRoleAddRequest(name="r2")))
    revision = store.revision
    for command in (encode_insert(b"/x", b"2"), encode_delete(b"/x")):
        assert outcome(apply(store, stamp_command(command, stamp))) == OLD
    assert store.revision == revision and store.get(b"/x") == b"1"
    fresh = AuthInfo(username="u1", revision=store.auth.revision).SerializeToString()
    assert outcome(apply(store, stamp_command(encode_delete(b"/x"), fresh))) == "ok"
    assert store.get(b"/x") is None
    with pytest.raises(InvalidRequest, match="auth_info is set by the member"):
        check_encoded_commands([stamp_command(plain, info)], LIMITS)
