"""Fixtures shared by every test directory."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest

# A suite started in the background by a shell (`.ci/run &`, nohup) inherits SIGINT
# ignored, and so would every process the tests start: then the tests' Ctrl-C (SIGINT to
# a `dengine bench` child) does nothing. A handled SIGINT here is reset to the default
# in each child at exec, so children see Ctrl-C as they would from a terminal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_addoption(parser: pytest.Parser) -> None:
    from dengine.config import CLIENT_FRONTENDS

    parser.addoption(
        "--client-frontend", choices=CLIENT_FRONTENDS, default=None,
        help="the client port's gRPC server of every node the tests start (sets "
             "DENGINE_CLIENT_FRONTEND); CI runs the tests marked `frontends` with the "
             "non-default one (docs/grpc-frontend.md, \"The switch\")")


def pytest_configure(config: pytest.Config) -> None:
    frontend = config.getoption("--client-frontend")
    if frontend:
        # Nodes in this process and the `dengine serve` processes the tests start (they
        # inherit it) take it as NodeConfig's default.
        os.environ["DENGINE_CLIENT_FRONTEND"] = frontend


@dataclass(frozen=True)
class Certs:
    """Certificates of `dengine certs make`: `ca` (the cluster's CA: node1..node3 for
    127.0.0.1 and localhost, and the client `client`), and `other` (another CA, the same
    names: what an outsider has)."""

    ca: Path
    other: Path

    def node(self, name: str = "node1", *, other: bool = False) -> dict[str, str]:
        """etcd's server settings (cert_file, key_file, trusted_ca_file) for `name`."""
        d = self.other if other else self.ca
        return {"cert_file": str(d / f"{name}.crt"), "key_file": str(d / f"{name}.key"),
                "trusted_ca_file": str(d / "ca.crt")}

    def peer(self, name: str = "node1", *, other: bool = False) -> dict[str, str]:
        """The peer settings (peer_cert_file, peer_key_file, peer_trusted_ca_file)."""
        return {f"peer_{k}": v for k, v in self.node(name, other=other).items()}

    def client(self, *, other: bool = False, name: str = "client") -> dict[str, str]:
        """The client's cacert, cert, key."""
        d = self.other if other else self.ca
        return {"cacert": str(d / "ca.crt"), "cert": str(d / f"{name}.crt"),
                "key": str(d / f"{name}.key")}


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    from dengine.certs import make

    base = tmp_path_factory.mktemp("certs")
    for name in ("ca", "other"):
        make(base / name, nodes=["node1", "node2", "node3"], clients=["client"],
             hosts=["127.0.0.1", "localhost"])
    return Certs(base / "ca", base / "other")
