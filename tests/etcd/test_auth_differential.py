"""Differential test of authentication and authorization: one etcdctl 3.4 script of
users, roles, permissions and denials against real etcd 3.4 and dengine, on clusters of
their own (auth, once enabled, is every client's business). The harness proof: a second
etcd cluster prints the same. docs/auth.md.

Run: `.venv/bin/python -m pytest tests/etcd/test_auth_differential.py`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from etcd_cluster import etcd_available
from etcd_diff import Script, script, watch
from test_differential import Trio, started_trio

pytestmark = pytest.mark.skipif(not etcd_available(), reason="etcd/etcdctl not installed")

R = "--user root:pw "  # root
U = "--user u1:p1 "  # the read-only user of /app/ (and read-write on [/x, /z))

AUTH = script(
    "auth",
    "auth disable",  # off already: fine
    "auth enable",  # root user does not exist
    "user add root:pw", "user add root:pw", "user get root", "user list", "role list",
    "auth enable",  # root lacks the root role: etcdctl adds the role, grants it, retries
    "auth enable",  # enabled: no token, "user name is empty"
    "user list", "get /app/a", "put /app/a 1",
    R + "auth enable", R + "user list", "--user root:bad user list", "--user nobody:x get a",
    R + "role add r1", R + "role add r1", R + "role get nope", R + "role get root",
    R + "user add u1:p1", R + "user add u1:p1", R + "user get nope",
    R + "user grant-role u1 r1", R + "user grant-role u1 r1", R + "user grant-role u1 nope",
    R + "user grant-role nope r1",
    R + "role grant-permission r1 read /app/ --prefix",
    R + "role grant-permission r1 readwrite /x /z", R + "role grant-permission r1 write /w",
    R + "role grant-permission r1 read /w2 --from-key",
    R + "role grant-permission nope read /a",
    R + "role get r1", R + "role get r1 -w json", R + "user get u1", R + "user get u1 -w json",
    R + "user get u1 --detail", R + "user list -w json", R + "role list -w json",
    R + "role revoke-permission r1 /nope", R + "role revoke-permission r1 /w",
    R + "role revoke-permission r1 /w2 --from-key",
    R + "put /app/a 1", R + "put /other/b 2", R + "get / --prefix",
    # the read-only user of /app/
    U + "get /app/a", U + "get /app/ --prefix", U + "get /app/ --prefix -w json",
    U + "get /app/a /app/b", U + "get /other/b", U + "get / --prefix", U + "get /ap --prefix",
    U + "put /app/a 2", U + "del /app/a", U + "del /app/ --prefix", U + "put /other/b 3",
    U + "put /x 1", U + "put /y 1 --prev-kv", U + "put /z 1", U + "del /x --prev-kv",
    watch(U + "watch /other/ --prefix", ends=True), watch(U + "watch /other/b", ends=True),
    watch(U + "watch /app/ --prefix"),  # allowed: no event
    (U + "txn", '\nget /app/a\nput /x 2\n\n'),
    (U + "txn", '\nget /app/a\nput /app/a 2\n\n'),
    (U + "txn", 'mod("/other/b") > "0"\n\nget /app/a\n\n'),
    (U + "txn", 'mod("/app/a") > "0"\n\nget /app/a\n\nget /other/b\n'),
    U + "member add m --peer-urls=http://127.0.0.1:1", U + "member remove 1234",
    U + "member update 1234 --peer-urls=http://127.0.0.1:1", U + "member promote 1234",
    U + "user list", U + "role list", U + "user get u1", U + "role get r1",
    U + "user get root", U + "role get root", U + "user add x:y", U + "role add x",
    U + "auth disable",
    # maintenance: HashKV, Defragment root's (auth's own error), MoveLeader anyone's (3.4)
    U + "defrag", U + "endpoint hashkv", U + "move-leader 1234", R + "endpoint hashkv",
    R + "defrag",
    # leases: revoking needs write on every key of the lease
    R + "lease grant 100", R + "put /app/l 1 --lease={l0}", U + "lease revoke {l0}",
    U + "put /y 2 --lease={l0}", R + "lease revoke {l0}", R + "get /app/l",
    # passwords
    U.replace("u1:p1", "u1") + "--password=p1 get /app/a",
    (R + "user passwd u1 --interactive=false", "np\n"),
    U + "get /app/a", "--user u1:np get /app/a",
    R + "user add x:''", "--user x: get /app/a", R + "user add nop --no-password",
    "--user nop:x get /app/a", R + "user delete x", R + "user delete nop",
    # root is protected while auth is on
    R + "user revoke-role u1 nope", R + "user delete nope", R + "role delete nope",
    R + "role delete root", R + "user revoke-role root root", R + "user delete root",
    R + "user revoke-role u1 r1", "--user u1:np get /app/a", R + "user get u1",
    R + "role delete r1", R + "user delete u1", R + "user list", R + "role list",
    R + "auth disable", "auth disable", "user list", "--user root:pw get /app/a",
    "get / --prefix", "user delete root", "role delete root", "user list", "role list",
    fresh=True,
)

AUTH_SCRIPTS: list[Script] = [AUTH]


@pytest.fixture(scope="module")
def auth_trio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trio]:
    yield from started_trio(tmp_path_factory, "etcd-auth")


@pytest.mark.parametrize("s", AUTH_SCRIPTS, ids=[s.name for s in AUTH_SCRIPTS])
def test_two_etcd_clusters_agree_on_auth(auth_trio: Trio, s: Script) -> None:
    diff = auth_trio.compare(s, auth_trio.b)
    assert not diff, diff


def test_the_auth_script_reaches_etcd(auth_trio: Trio) -> None:
    """The reference run shows the denials and etcd's errors the script is about."""
    run = auth_trio.on_reference(AUTH)
    errors = "\n".join(r.stderr for _, r in run.runs)
    for text in ("etcdserver: permission denied", "etcdserver: user name is empty",
                 "etcdserver: authentication failed, invalid user ID or password",
                 "etcdserver: root user does not exist", "etcdserver: user name already exists",
                 "etcdserver: role name not found", "etcdserver: invalid auth management",
                 "etcdserver: permission is not granted to the role",
                 "etcdserver: role is not granted to the user"):
        assert text in errors, text
    assert "Authentication Enabled" in "\n".join(r.stdout for _, r in run.runs)


@pytest.mark.parametrize("s", AUTH_SCRIPTS, ids=[s.name for s in AUTH_SCRIPTS])
def test_dengine_answers_auth_as_etcd(auth_trio: Trio, s: Script) -> None:
    diff = auth_trio.compare(s, auth_trio.d)
    assert not diff, diff
