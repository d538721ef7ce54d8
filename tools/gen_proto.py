"""Regenerate the checked-in protobuf modules: `python tools/gen_proto.py`.

Needs the dev extra (grpcio-tools). Writes *_pb2.py and *_pb2.pyi next to each .proto under
src/dengine/proto/ and src/dengine/proto/etcd/, and *_pb2_grpc.py for dengine's own
services. The etcd protos get no gRPC stubs: their package is dengine's
(`dengine.etcd.etcdserverpb`), and the server registers the handlers by hand under etcd's
service names (docs/etcd-model.md), so generated stubs would use the wrong method paths.
"""

from __future__ import annotations

import pathlib
import sys

from grpc_tools import protoc


def _run(src: pathlib.Path, include: pathlib.Path, protos: list[str], grpc: bool) -> int:
    args = [
        "protoc",
        f"-I{src}",
        f"-I{include}",
        f"--python_out={src}",
        f"--pyi_out={src}",
        *([f"--grpc_python_out={src}"] if grpc else []),
        *protos,
    ]
    return int(protoc.main(args))


def main() -> int:
    src = pathlib.Path(__file__).resolve().parent.parent / "src"
    proto_dir = src / "dengine" / "proto"
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    own = sorted(str(p.relative_to(src)) for p in proto_dir.glob("*.proto"))
    etcd = sorted(str(p.relative_to(src)) for p in (proto_dir / "etcd").glob("*.proto"))
    rc = _run(src, include, own, grpc=True) or _run(src, include, etcd, grpc=False)
    if rc == 0:
        # gRPC stubs are only useful for files that declare services.
        for grpc_file in proto_dir.glob("*_pb2_grpc.py"):
            if "Stub" not in grpc_file.read_text():
                grpc_file.unlink()
        print("generated:", ", ".join(own + etcd))
    return rc


if __name__ == "__main__":
    sys.exit(main())
