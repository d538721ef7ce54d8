"""The auth store (kv/auth.py): etcd 3.4's rules and messages (checked against etcd by
tests/etcd/test_auth_differential.py), determinism, permission coverage against a
brute-force model."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dengine.errors import KvError
from dengine.kv.auth import AuthStore, hash_password, password_matches
from dengine.kv.codec import OP_AUTH, decode_any_command, encode_request
from dengine.kv.mvcc import MvccStore
from dengine.proto.auth_pb2 import AuthCommand
from dengine.proto.etcd import rpc_pb2 as pb
from dengine.proto.etcd.auth_pb2 import Permission

HASH = hash_password("pw", b"salt-salt-salt-1")


def cmd(user: str = "", **request: object) -> bytes:
    return AuthCommand(user=user, **request).SerializeToString()


def grant(role: str, key: bytes, range_end: bytes = b"", kind: int = Permission.READ
          ) -> bytes:
    req = pb.AuthRoleGrantPermissionRequest(name=role)
    req.perm.permType, req.perm.key, req.perm.range_end = kind, key, range_end
    return cmd("root", role_grant_permission=req)


def root_and_u1(*grants: bytes) -> list[bytes]:
    """The auth commands of: root (root role), auth enabled, u1 with role r1, then
    `grants` (to r1)."""
    return [
        cmd(user_add=pb.AuthUserAddRequest(name="root", password=HASH)),
        cmd(user_grant_role=pb.AuthUserGrantRoleRequest(user="root", role="root")),
        cmd(auth_enable=pb.AuthEnableRequest()),
        cmd("root", user_add=pb.AuthUserAddRequest(name="u1", password=HASH)),
        cmd("root", role_add=pb.AuthRoleAddRequest(name="r1")),
        cmd("root", user_grant_role=pb.AuthUserGrantRoleRequest(user="u1", role="r1")),
        *grants,
    ]


def enabled_store() -> AuthStore:
    """root (root role) and u1 (role r1: read /app/ prefix, readwrite [/x, /z)), enabled."""
    a = AuthStore()
    for data in root_and_u1(grant("r1", b"/app/", b"/app0"),
                            grant("r1", b"/x", b"/z", Permission.READWRITE)):
        assert not isinstance(a.apply(data), KvError)
    return a


def message(result: object) -> str:
    assert isinstance(result, KvError), result
    return f"{result.grpc_code} {result.message}"


def test_passwords_are_salted_slow_hashes():
    assert HASH.startswith("scrypt$16384$8$1$") and "pw" not in HASH.split("$", 4)[4]
    assert password_matches(HASH.encode(), "pw")
    assert not password_matches(HASH.encode(), "pW")
    assert hash_password("pw", b"another-salt-123") != HASH
    assert not password_matches(b"", "") and not password_matches(b"garbage$", "x")


def test_enable_needs_root_user_with_root_role():
    a = AuthStore()
    enable = cmd(auth_enable=pb.AuthEnableRequest())
    assert message(a.apply(enable)) == (
        "FAILED_PRECONDITION etcdserver: root user does not exist")
    a.apply(cmd(user_add=pb.AuthUserAddRequest(name="root", password=HASH)))
    assert message(a.apply(enable)) == (
        "FAILED_PRECONDITION etcdserver: root user does not have root role")
    a.apply(cmd(user_grant_role=pb.AuthUserGrantRoleRequest(user="root", role="root")))
    assert not isinstance(a.apply(enable), KvError) and a.enabled
    # enabled: admin calls need a root user
    assert message(a.apply(enable)) == "INVALID_ARGUMENT etcdserver: user name is empty"
    assert not isinstance(a.apply(cmd("root", auth_enable=pb.AuthEnableRequest())), KvError)


@pytest.mark.parametrize("request_kw, expected", [
    ({"user_add": pb.AuthUserAddRequest(name="u1")},
     "FAILED_PRECONDITION etcdserver: user name already exists"),
    ({"user_add": pb.AuthUserAddRequest(name="")},
     "INVALID_ARGUMENT etcdserver: user name is empty"),
    ({"role_add": pb.AuthRoleAddRequest(name="r1")},
     "FAILED_PRECONDITION etcdserver: role name already exists"),
    ({"role_add": pb.AuthRoleAddRequest(name="")},
     "INVALID_ARGUMENT etcdserver: role name is empty"),
    ({"user_delete": pb.AuthUserDeleteRequest(name="nope")},
     "FAILED_PRECONDITION etcdserver: user name not found"),
    ({"user_delete": pb.AuthUserDeleteRequest(name="root")},
     "INVALID_ARGUMENT etcdserver: invalid auth management"),
    ({"role_delete": pb.AuthRoleDeleteRequest(role="root")},
     "INVALID_ARGUMENT etcdserver: invalid auth management"),
    ({"role_delete": pb.AuthRoleDeleteRequest(role="nope")},
     "FAILED_PRECONDITION etcdserver: role name not found"),
    ({"user_grant_role": pb.AuthUserGrantRoleRequest(user="u1", role="nope")},
     "FAILED_PRECONDITION etcdserver: role name not found"),
    ({"user_grant_role": pb.AuthUserGrantRoleRequest(user="nope", role="r1")},
     "FAILED_PRECONDITION etcdserver: user name not found"),
    ({"user_revoke_role": pb.AuthUserRevokeRoleRequest(name="u1", role="nope")},
     "FAILED_PRECONDITION etcdserver: role is not granted to the user"),
    ({"user_revoke_role": pb.AuthUserRevokeRoleRequest(name="root", role="root")},
     "INVALID_ARGUMENT etcdserver: invalid auth management"),
    ({"role_revoke_permission": pb.AuthRoleRevokePermissionRequest(role="r1", key=b"/w")},
     "FAILED_PRECONDITION etcdserver: permission is not granted to the role"),
])
def test_refused_changes_give_etcds_errors_and_change_nothing(request_kw, expected):
    a = enabled_store()
    before = (a.image(), a.revision)
    assert message(a.apply(cmd("root", **request_kw))) == expected
    assert (a.image(), a.revision) == before


def test_admin_calls_need_root_and_users_see_themselves():
    a = enabled_store()
    add = pb.AuthRoleAddRequest(name="r2")
    assert message(a.apply(cmd("u1", role_add=add))) == (
        "PERMISSION_DENIED etcdserver: permission denied")
    assert message(a.apply(cmd("ghost", role_add=add))) == (
        "FAILED_PRECONDITION etcdserver: user name not found")
    assert list(a.user_get("u1", "u1").roles) == ["r1"]
    assert len(a.role_get("u1", "r1").perm) == 2
    with pytest.raises(KvError, match="permission denied"):
        a.user_get("u1", "root")
    with pytest.raises(KvError, match="permission denied"):
        a.user_list("u1")
    assert list(a.user_list("root").users) == ["root", "u1"]
    assert list(a.role_list("root").roles) == ["r1"]


def test_grants_are_idempotent_sorted_and_role_delete_revokes_it():
    a = enabled_store()
    assert a.apply(grant("r1", b"/a")) is not None
    before = a.revision
    a.apply(grant("r1", b"/a", b"", Permission.WRITE))  # same key: type replaced
    assert a.revision == before + 1
    perms = a.role_get("root", "r1").perm
    assert [p.key for p in perms] == [b"/a", b"/app/", b"/x"] and perms[0].permType == 1
    rev = a.revision
    assert not isinstance(a.apply(cmd("root", user_grant_role=pb.AuthUserGrantRoleRequest(
        user="u1", role="r1"))), KvError)
    assert a.revision == rev  # already granted: success, nothing changed
    a.apply(cmd("root", role_delete=pb.AuthRoleDeleteRequest(role="r1")))
    assert list(a.user_get("root", "u1").roles) == []


def test_tokens_are_learnt_from_the_log_and_dropped_with_their_user():
    a = enabled_store()
    resp = a.apply(cmd(authenticate={"name": "u1", "token": "abc.1"}))
    assert resp.token == "abc.1" and a.user_of("abc.1") == "u1"
    assert a.user_of(None) == "" and a.user_of("") == ""
    with pytest.raises(KvError, match="invalid auth token") as e:
        a.user_of("nope")
    assert e.value.grpc_code == "UNAUTHENTICATED"
    a.apply(cmd("root", user_change_password=pb.AuthUserChangePasswordRequest(
        name="u1", password=HASH)))
    with pytest.raises(KvError, match="invalid auth token"):
        a.user_of("abc.1")
    assert AuthStore().user_of("anything") is None  # auth off: nothing checked
    a.apply(cmd("root", auth_disable=pb.AuthDisableRequest()))
    assert message(a.apply(cmd(authenticate={"name": "u1", "token": "t"}))) == (
        "FAILED_PRECONDITION etcdserver: authentication is not enabled")


def test_kv_checks_read_write_txn_and_leases():
    a = enabled_store()
    a.check_range("u1", b"/app/a", b"")
    a.check_range("u1", b"/app/", b"/app0")
    a.check_range("root", b"", b"\0")
    for key, end in ((b"/other", b""), (b"/app/", b"\0"), (b"/ap", b"/app0")):
        with pytest.raises(KvError, match="permission denied"):
            a.check_range("u1", key, end)
    with pytest.raises(KvError, match="user name is empty"):
        a.check_range("", b"/app/a", b"")
    no_lease = lambda lease: ()  # noqa: E731
    with pytest.raises(KvError, match="permission denied"):
        a.check_put("u1", pb.PutRequest(key=b"/app/a"), no_lease)
    a.check_put("u1", pb.PutRequest(key=b"/y", prev_kv=True), no_lease)
    with pytest.raises(KvError, match="permission denied"):  # a lease with a key of /app/
        a.check_put("u1", pb.PutRequest(key=b"/y", lease=7), lambda lease: [b"/app/a"])
    with pytest.raises(KvError, match="permission denied"):
        a.check_lease_keys("u1", [b"/y", b"/app/a"])
    ok = pb.TxnRequest(compare=[pb.Compare(key=b"/app/a")],
                       success=[pb.RequestOp(request_put=pb.PutRequest(key=b"/x"))])
    a.check_txn("u1", ok, no_lease)
    bad = pb.TxnRequest()
    bad.CopyFrom(ok)
    bad.failure.add().request_delete_range.key = b"/app/a"  # the branch never taken counts
    with pytest.raises(KvError, match="permission denied"):
        a.check_txn("u1", bad, no_lease)


def test_auth_commands_through_the_mvcc_store_keep_its_revision():
    store = MvccStore()
    op, key, value = decode_any_command(encode_request(OP_AUTH, cmd(
        role_add=pb.AuthRoleAddRequest(name="r"))))
    applied = store.apply(op, key, value)
    assert applied.revision == 1 and applied.response.header.revision == 1
    assert store.auth.revision == 1
    op, key, value = decode_any_command(encode_request(OP_AUTH, b"\xff\xff"))
    assert isinstance(store.apply(op, key, value).response, KvError)
    restored = MvccStore.restore(1, 0, [], [], [], store.auth.image())
    assert restored.auth.image() == store.auth.image() and "r" in restored.auth.roles


KEYS = [b"", b"a", b"a\0", b"ab", b"b", b"ba", b"c"]
key_st = st.sampled_from(KEYS)


@settings(max_examples=300, deadline=None)
@given(perms=st.lists(st.tuples(key_st, st.sampled_from([b"", b"\0", *KEYS]),
                                st.sampled_from([0, 1, 2])), max_size=5),
       key=key_st, end=st.sampled_from([b"", b"\0", *KEYS]))
def test_permission_coverage_equals_a_brute_force_model(perms, key, end):
    """Over a small key universe (plus a key above every one), a range is permitted iff
    every key in it is covered by a permission of the right type."""
    a = enabled_store()
    for pkey, pend, kind in perms:
        a.apply(grant("r1", pkey, pend, kind))
    universe = sorted({*KEYS, *(k + b"\0" for k in KEYS), b"zzz"})

    def covered(k: bytes, write: bool) -> bool:
        for p in a.roles["r1"].keyPermission:
            if p.permType not in ((1, 2) if write else (0, 2)):
                continue
            if (not p.range_end and k == p.key) or (p.range_end == b"\0" and k >= p.key) or (
                    p.range_end not in (b"", b"\0") and p.key <= k < p.range_end):
                return True
        return False

    for write in (False, True):
        if not end:
            inside = [key]
        elif end == b"\0":
            inside = [k for k in universe if k >= key]
        else:
            inside = [k for k in universe if key <= k < end]
        want = all(covered(k, write) for k in inside)
        try:
            a._permitted("u1", key, end, write)
            got = True
        except KvError:
            got = False
        if inside or not end:  # an empty range: etcd's interval tree is the judge
            assert got == want, (perms, key, end, write)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 9), max_size=30))
def test_replicas_applying_the_same_commands_agree(choices):
    pool = [
        cmd(user_add=pb.AuthUserAddRequest(name="root", password=HASH)),
        cmd(user_grant_role=pb.AuthUserGrantRoleRequest(user="root", role="root")),
        cmd(auth_enable=pb.AuthEnableRequest()),
        cmd("root", auth_disable=pb.AuthDisableRequest()),
        cmd("root", user_add=pb.AuthUserAddRequest(name="u", password=HASH)),
        cmd("root", role_add=pb.AuthRoleAddRequest(name="r")),
        cmd("root", user_grant_role=pb.AuthUserGrantRoleRequest(user="u", role="r")),
        grant("r", b"k", b"", Permission.WRITE),
        cmd("root", role_delete=pb.AuthRoleDeleteRequest(role="r")),
        cmd("root", user_delete=pb.AuthUserDeleteRequest(name="u")),
    ]
    one, two = AuthStore(), AuthStore()
    for c in choices:
        r1, r2 = one.apply(pool[c]), two.apply(pool[c])
        assert repr(r1) == repr(r2)
        assert one.image() == two.image()
    assert AuthStore.from_image(one.image()).image() == one.image()
