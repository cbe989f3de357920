"""The generated stubs under fedn/v1 must match proto/: regenerate with `make proto`."""

from __future__ import annotations

from pathlib import Path

import pytest
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ["fedn_pb2.py", "fedn_pb2.pyi", "fedn_pb2_grpc.py"]


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
    for name in GENERATED:
        fresh = (tmp_path / "fedn" / "v1" / name).read_text()
        committed = (ROOT / "fedn" / "v1" / name).read_text()
        if fresh != committed:
            pytest.fail(f"fedn/v1/{name} is stale: run `make proto` and commit the result")
