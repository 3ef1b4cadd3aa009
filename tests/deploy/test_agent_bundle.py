"""The offline install bundle, as a site technician uses it: built and signed once, then
installed with no network at all (in a network namespace when run as root) — and refused
with a one-line reason, nothing installed, when one byte was altered, when it was signed
for another fleet, when it is for another architecture, or when it is not signed."""

from __future__ import annotations

import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from edgefleet.controller.app.datadir import initialize
from edgefleet.controller.catalog.agent_bundles import build_bundle, sign_bundle

pytestmark = pytest.mark.integration
PYTHON = shutil.which("python3") or sys.executable


def _pypi_reachable() -> bool:
    probe = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "-d", "/tmp/edgefleet-pypi-probe", "rfc8785==0.1.4"]  # fmt: skip
    return subprocess.run(probe, capture_output=True, check=False, timeout=120).returncode == 0


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An unsigned x86-64 bundle (the architecture this test machine runs)."""
    if platform.machine() != "x86_64":
        pytest.skip("builds the x86_64 bundle; this machine is not x86_64")
    if not _pypi_reachable():
        pytest.skip("building a bundle needs the package index, which is unreachable here")
    out = tmp_path_factory.mktemp("build") / "agent.tar"
    build_bundle("x86_64", out)
    return out


def _fleet(root: Path) -> tuple[Path, str]:
    result = initialize(root, "plant-7", ["127.0.0.1"], "")
    return root, result.root_fingerprint


def _unpack(bundle: Path, where: Path) -> Path:
    with tarfile.open(bundle) as tar:
        tar.extractall(where, filter="data")
    return next(where.iterdir())


def _install(site: Path, fingerprint: str, prefix: Path) -> subprocess.CompletedProcess[str]:
    command = [PYTHON, str(site / "install.py"), "--root-fingerprint", fingerprint,
               "--no-service", "--prefix", str(prefix)]  # fmt: skip
    if os.geteuid() == 0 and shutil.which("unshare"):
        command = ["unshare", "--net", *command]  # no network at all, not even loopback
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)


def _signed(
    built: Path, tmp: Path, release_edit: dict[str, object] | None = None
) -> tuple[Path, str]:
    data_dir, fingerprint = _fleet(tmp / "fleet")
    source = built
    if release_edit:  # a release that says something else (files unchanged)
        source = tmp / "edited.tar"
        with tarfile.open(built) as original, tarfile.open(source, "w") as edited:
            for member in original.getmembers():
                data = original.extractfile(member) if member.isfile() else None
                if member.name.endswith("/release.json") and data is not None:
                    release = json.loads(data.read())
                    release.update(release_edit)
                    raw = json.dumps(release).encode()
                    member.size, data = len(raw), io.BytesIO(raw)
                edited.addfile(member, data)
    signed = tmp / "signed.tar"
    sign_bundle(source, data_dir, signed)
    return signed, fingerprint


def test_a_signed_bundle_installs_with_no_network(built: Path, tmp_path: Path) -> None:
    signed, fingerprint = _signed(built, tmp_path)
    site = _unpack(signed, tmp_path / "site")
    prefix = tmp_path / "opt"
    result = _install(site, fingerprint, prefix)
    assert result.returncode == 0, result.stderr
    assert "verified: edgefleet agent 0.1.0 for x86_64, llama.cpp build x86-64-v3" in result.stdout
    agent = prefix / "venv" / "bin"
    assert (
        subprocess.run(
            [str(agent / "edgefleet-agent"), "--help"], capture_output=True, check=False
        ).returncode
        == 0
    )
    # The gateway's install holds llama.cpp and none of the controller's stack (SQLAlchemy
    # included: the agent's database is on sqlite3), and the running agent's modules load.
    probe = (
        "import importlib.util as u; import edgefleet.agent.app.service; "
        "print(u.find_spec('llama_cpp') is not None, "
        "*(u.find_spec(m) is None for m in ('alembic', 'sqlalchemy', 'psycopg')))"
    )
    assert subprocess.run(
        [str(agent / "python"), "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split() == ["True", "True", "True", "True"]


def _refused(site: Path, fingerprint: str, prefix: Path, reason: str) -> None:
    result = _install(site, fingerprint, prefix)
    assert result.returncode == 1, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("install.py: ") and reason in lines[0], lines
    assert not prefix.exists(), "something was installed"


def test_one_altered_byte_is_refused(built: Path, tmp_path: Path) -> None:
    signed, fingerprint = _signed(built, tmp_path)
    site = _unpack(signed, tmp_path / "site")
    wheel = next((site / "wheels").glob("grpcio-*.whl"))  # one the agent runs on
    data = bytearray(wheel.read_bytes())
    data[len(data) // 2] ^= 0x01
    wheel.write_bytes(bytes(data))
    _refused(site, fingerprint, tmp_path / "opt", "does not match the signed release")


def test_an_altered_verifier_wheel_is_refused_before_it_runs(built: Path, tmp_path: Path) -> None:
    signed, fingerprint = _signed(built, tmp_path)
    site = _unpack(signed, tmp_path / "site")
    wheel = next((site / "wheels").glob("edgefleet-*.whl"))
    wheel.write_bytes(wheel.read_bytes() + b"\0")
    _refused(site, fingerprint, tmp_path / "opt", "does not match this installer")


def test_a_bundle_signed_for_another_fleet_is_refused(built: Path, tmp_path: Path) -> None:
    signed, _ = _signed(built, tmp_path)
    _, other = _fleet(tmp_path / "other-fleet")
    site = _unpack(signed, tmp_path / "site")
    _refused(site, other, tmp_path / "opt", "root v1 does not match the pinned root fingerprint")


def test_a_bundle_for_another_architecture_is_refused(built: Path, tmp_path: Path) -> None:
    signed, fingerprint = _signed(built, tmp_path, {"arch": "aarch64"})
    site = _unpack(signed, tmp_path / "site")
    _refused(
        site, fingerprint, tmp_path / "opt", "the bundle is for aarch64; this machine is x86_64"
    )


def test_an_unsigned_bundle_is_refused(built: Path, tmp_path: Path) -> None:
    _, fingerprint = _fleet(tmp_path / "fleet")
    site = _unpack(built, tmp_path / "site")
    _refused(site, fingerprint, tmp_path / "opt", "the bundle is not signed")


def test_a_wheel_with_stale_top_level_packages_is_refused(tmp_path: Path) -> None:
    """A checkout's build/ folder from an older layout (top-level `agent`) must not reach
    gateways: the builder names the folder to remove."""
    import zipfile

    from edgefleet.controller.catalog.agent_bundles import _check_project_wheel
    from edgefleet.errors import ConfigError

    wheel = tmp_path / "edgefleet-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("edgefleet/__init__.py", "")
        archive.writestr("edgefleet-0.1.0.dist-info/METADATA", "")
    _check_project_wheel(tmp_path)
    with zipfile.ZipFile(wheel, "a") as archive:
        archive.writestr("agent/__init__.py", "")
    with pytest.raises(ConfigError, match=r"holds agent beside edgefleet: remove the stale"):
        _check_project_wheel(tmp_path)
