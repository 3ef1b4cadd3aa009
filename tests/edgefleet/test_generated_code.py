"""The committed protobuf code is exactly what `make proto` generates from proto/."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_matches_proto(tmp_path: Path) -> None:
    """Regenerating into a scratch directory reproduces edgefleet/v1 byte for byte."""
    pytest.importorskip("grpc_tools")
    plugin_dir = Path(sys.executable).parent
    if shutil.which("protoc-gen-mypy", path=str(plugin_dir)) is None:
        pytest.skip("mypy-protobuf's protoc plugin is not installed")
    protos = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "proto/edgefleet/v1").glob("*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "--proto_path=proto",
            f"--python_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            f"--mypy_out={tmp_path}",
            f"--mypy_grpc_out={tmp_path}",
            *protos,
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        env={"PATH": f"{plugin_dir}:/usr/bin:/bin"},
    )
    generated = {p.name: p.read_bytes() for p in (tmp_path / "edgefleet/v1").iterdir()}
    committed = {
        p.name: p.read_bytes()
        for p in (ROOT / "edgefleet/v1").iterdir()
        if p.suffix in (".py", ".pyi") and p.name != "__init__.py"
    }
    assert sorted(generated) == sorted(committed)
    stale = [name for name in generated if generated[name] != committed[name]]
    assert not stale, f"run `make proto`: {stale} differ from a fresh generation"
