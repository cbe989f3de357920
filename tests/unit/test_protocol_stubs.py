"""The generated stubs under fedn/v1 must match proto/: regenerate with `make proto`."""

from __future__ import annotations

import ast
import re
from importlib.metadata import version
from pathlib import Path

import pytest
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ["fedn_pb2.py", "fedn_pb2.pyi", "fedn_pb2_grpc.py"]


def _descriptor(pb2_source: str) -> bytes:
    """The serialized FileDescriptorProto: what the .proto says, whichever generator wrote the file."""
    match = re.search(r"AddSerializedFile\((b'.*?')\)\n", pb2_source)
    assert match, "no serialized descriptor in fedn_pb2.py"
    return ast.literal_eval(match.group(1))


def _generator(grpc_source: str) -> str:
    match = re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", grpc_source)
    assert match, "no GRPC_GENERATED_VERSION in fedn_pb2_grpc.py"
    return match.group(1)


def test_generated_stubs_are_fresh(tmp_path: Path) -> None:
    proto_root = ROOT / "proto"
    include = Path(protoc.__file__).parent / "_proto"
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{include}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            str(proto_root / "fedn" / "v1" / "fedn.proto"),
        ]
    )
    assert code == 0
    fresh = {name: (tmp_path / "fedn" / "v1" / name).read_text() for name in GENERATED}
    committed = {name: (ROOT / "fedn" / "v1" / name).read_text() for name in GENERATED}
    # The stubs come from the pinned generator of `make proto` (its gencode runs on every protobuf in
    # range); with another grpcio-tools installed, only the descriptor can be compared.
    if version("grpcio-tools") != _generator(committed["fedn_pb2_grpc.py"]):
        if _descriptor(fresh["fedn_pb2.py"]) != _descriptor(committed["fedn_pb2.py"]):
            pytest.fail("fedn/v1/fedn_pb2.py is stale: run `make proto` and commit the result")
        return
    for name in GENERATED:
        if fresh[name] != committed[name]:
            pytest.fail(f"fedn/v1/{name} is stale: run `make proto` and commit the result")
