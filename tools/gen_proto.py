"""Regenerate the checked-in protobuf modules: `python tools/gen_proto.py`.

Needs the dev extra (grpcio-tools). Writes *_pb2.py, *_pb2.pyi and *_pb2_grpc.py next to
each .proto under src/dengine/proto/.
"""

from __future__ import annotations

import pathlib
import sys

from grpc_tools import protoc


def main() -> int:
    src = pathlib.Path(__file__).resolve().parent.parent / "src"
    protos = sorted(str(p.relative_to(src)) for p in (src / "dengine" / "proto").glob("*.proto"))
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{src}",
        f"-I{include}",
        f"--python_out={src}",
        f"--pyi_out={src}",
        f"--grpc_python_out={src}",
        *protos,
    ]
    rc = protoc.main(args)
    if rc == 0:
        # gRPC stubs are only useful for files that declare services.
        for grpc_file in (src / "dengine" / "proto").glob("*_pb2_grpc.py"):
            if "Stub" not in grpc_file.read_text():
                grpc_file.unlink()
        print("generated:", ", ".join(protos))
    return rc


if __name__ == "__main__":
    sys.exit(main())
