"""Offline install bundles of the agent: built on any x86-64 Linux machine with network
access (`make bundle-arm64`, `make bundle-amd64`), signed for a fleet by its controller
(`edgefleetctl agent-bundle sign`), carried to the site, installed with no network.

A bundle is an uncompressed tar (its wheels are compressed already) of one folder:

    install.py                 the installer (deploy/agent/install-bundle.py, with the
                               digests of the wheels that verify the bundle written in)
    release.json               the release: every other file's SHA-256, the llama.cpp builds
    release.signed.json        added by `sign`: the release signed by the targets key(s)
    root/1.json …              added by `sign`: the root chain the signature verifies from
    wheels/*.whl               the agent and every dependency, for that platform and Python
    llama/<build>/*.whl        llama-cpp-python, one wheel per CPU target, best first
    deploy/                    the systemd unit, agent.toml.example, setup-service.sh
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from edgefleet import __version__
from edgefleet.controller.app.datadir import DataDir
from edgefleet.controller.trust.keyring import Keyring
from edgefleet.errors import ConfigError, MalformedInputError
from edgefleet.files import sha256_of_file
from edgefleet.release_check import SIGNED_RELEASE
from edgefleet.trust.release import AgentRelease, LlamaBuild

REPOSITORY = Path(__file__).resolve().parents[2]
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
# manylinux tags a Debian bookworm gateway (glibc 2.36) accepts, newest first
GLIBC_TAGS = ("2_36", "2_34", "2_31", "2_28", "2_27", "2_24", "2_17")
# the wheels the installer verifies the bundle with (edgefleet.release_check's imports)
VERIFIER_DISTRIBUTIONS = ("edgefleet", "cryptography", "cffi", "orjson", "rfc8785")
MAX_MEMBER = 1 << 30


@dataclass(frozen=True)
class Target:
    """A gateway platform a bundle is built for."""

    arch: str  # uname -m
    llama: tuple[tuple[str, tuple[str, ...]], ...]  # (build name, CPU features), best first

    def platforms(self) -> list[str]:
        tags = [f"manylinux_{g}_{self.arch}" for g in GLIBC_TAGS]
        return [*tags, f"manylinux2014_{self.arch}"]


TARGETS = {
    # Pi 5 (Cortex-A76: dotprod), then every ARMv8-A board (Pi 3/4: Cortex-A53/A72)
    "aarch64": Target("aarch64", (("armv8.2-a+dotprod", ("asimddp",)), ("armv8-a", ()))),
    # x86-64-v3 (AVX2, FMA, F16C), as `make` builds llama.cpp for x86 gateways
    "x86_64": Target("x86_64", (("x86-64-v3", ("avx2", "fma", "f16c")),)),
}


def _pip(*args: str, env: dict[str, str] | None = None) -> None:
    command = [sys.executable, "-m", "pip", *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(f"pip {args[0]} failed: {tail}")


def _requirements() -> list[str]:
    """The agent's dependencies (no extras), llama-cpp-python's own instead of it."""
    requirements = []
    for requirement in importlib.metadata.requires("edgefleet") or []:
        if "extra ==" in requirement:
            continue
        if requirement.lower().startswith("llama-cpp-python"):
            llama = importlib.metadata.requires("llama-cpp-python") or []
            requirements += [r for r in llama if "extra ==" not in r]
        else:
            requirements.append(requirement)
    return requirements


def _llama_wheels(target: Target, llama_dir: Path | None, stage: Path) -> list[LlamaBuild]:
    builds = []
    version = importlib.metadata.version("llama-cpp-python")
    for name, features in target.llama:
        folder = stage / "llama" / name
        folder.mkdir(parents=True)
        if llama_dir is not None:
            found = sorted((llama_dir / name).glob(f"llama_cpp_python-{version}-*.whl"))
            if not found:
                raise ConfigError(f"no llama.cpp wheel for {name} in {llama_dir / name}")
            shutil.copy2(found[0], folder / found[0].name)
        elif target.arch == "x86_64" and os.uname().machine == "x86_64":
            # built (or taken from pip's cache) for x86-64-v3, as `make` builds it
            env = {**os.environ, "CMAKE_ARGS": "-DGGML_NATIVE=OFF"}
            _pip(
                "wheel",
                "--quiet",
                "--no-deps",
                f"llama-cpp-python=={version}",
                "-w",
                str(folder),
                env=env,
            )
        else:
            raise ConfigError(
                f"pass the folder of the {target.arch} llama.cpp builds (make wheels-arm64)"
            )
        wheel = next(folder.glob("*.whl"))
        builds.append(LlamaBuild(name, str(wheel.relative_to(stage)), features))
    return builds


def _check_project_wheel(wheels: Path) -> None:
    """The project's wheel holds the ``edgefleet`` package alone: a ``build/`` folder left
    from an older layout of the checkout (setuptools builds in place and keeps it) would
    add stale top-level packages to every gateway."""
    (wheel,) = wheels.glob("edgefleet-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/")[0] for name in archive.namelist()}
    stray = sorted(t for t in tops if t != "edgefleet" and not t.endswith(".dist-info"))
    if stray:
        raise ConfigError(
            f"the agent's wheel holds {', '.join(stray)} beside edgefleet: remove the stale "
            f"{REPOSITORY / 'build'} folder and build again"
        )


def build_bundle(arch: str, out: Path, llama_dir: Path | None = None) -> AgentRelease:
    """Build the (unsigned) bundle for ``arch`` at ``out``; return its release."""
    if arch not in TARGETS:
        raise ConfigError(f"no bundle for {arch}: {', '.join(TARGETS)}")
    target = TARGETS[arch]
    with tempfile.TemporaryDirectory(prefix="agent-bundle-") as tmp:
        stage = Path(tmp) / f"edgefleet-agent-{__version__}-{arch}"
        wheels = stage / "wheels"
        wheels.mkdir(parents=True)
        _pip("wheel", "--quiet", "--no-deps", str(REPOSITORY), "-w", str(wheels))
        _check_project_wheel(wheels)
        platforms = [a for p in target.platforms() for a in ("--platform", p)]
        _pip(
            "download", "--quiet", "--only-binary=:all:", *platforms,
            "--python-version", PYTHON, "--implementation", "cp", "-d", str(wheels),
            *_requirements(),
        )  # fmt: skip
        builds = _llama_wheels(target, llama_dir, stage)
        deploy = stage / "deploy"
        deploy.mkdir()
        for source in (
            "deploy/systemd/edgefleet-agent.service",
            "deploy/agent/agent.toml.example",
            "deploy/agent/setup-service.sh",
        ):
            shutil.copy2(REPOSITORY / source, deploy / Path(source).name)
        _write_installer(stage)
        files = {
            str(p.relative_to(stage)): sha256_of_file(p)
            for p in sorted(stage.rglob("*"))
            if p.is_file()
        }
        release = AgentRelease(__version__, arch, PYTHON, datetime.now(UTC), files, tuple(builds))
        (stage / "release.json").write_bytes(release.to_payload())
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
            tar.add(stage, arcname=stage.name)
        os.replace(partial, out)
    return release


def _write_installer(stage: Path) -> None:
    """install.py, carrying the digests of the wheels that verify the bundle."""
    digests = {}
    for distribution in VERIFIER_DISTRIBUTIONS:
        pattern = re.compile(rf"^{distribution}-[^-]+-.*\.whl$", re.IGNORECASE)
        found = [p for p in (stage / "wheels").iterdir() if pattern.match(p.name)]
        if len(found) != 1:
            raise ConfigError(
                f"the bundle needs exactly one {distribution} wheel, has {len(found)}"
            )
        digests[found[0].name] = sha256_of_file(found[0])
    source = (REPOSITORY / "deploy/agent/install-bundle.py").read_text()
    line = "VERIFIER: dict[str, str] = {}"
    if line not in source:
        raise ConfigError("deploy/agent/install-bundle.py has no VERIFIER line to fill")
    filled = source.replace(line, f"VERIFIER: dict[str, str] = {json.dumps(digests, indent=4)}")
    (stage / "install.py").write_text(filled)
    (stage / "install.py").chmod(0o755)


def _members(bundle: tarfile.TarFile) -> tuple[str, list[tarfile.TarInfo]]:
    """The bundle's folder name and its members; refuse anything but plain files and
    folders inside one folder."""
    members = bundle.getmembers()
    tops = {m.name.split("/")[0] for m in members}
    if len(tops) != 1:
        raise MalformedInputError("an agent bundle holds exactly one folder")
    for member in members:
        if not (member.isfile() or member.isdir()) or ".." in member.name.split("/"):
            raise MalformedInputError(f"{member.name[:80]}: not a plain file of the bundle")
        if member.size > MAX_MEMBER:
            raise MalformedInputError(f"{member.name[:80]}: too large")
    return tops.pop(), members


def sign_bundle(bundle_path: Path, data_dir: Path, out: Path) -> AgentRelease:
    """Sign the bundle's release with the fleet's targets key(s) held in ``data_dir``;
    write the signed bundle (with the root chain it verifies from) to ``out``."""
    material = Keyring(DataDir(data_dir)).current()
    with tarfile.open(bundle_path) as bundle:
        top, members = _members(bundle)
        names = {m.name for m in members}
        if f"{top}/{SIGNED_RELEASE}" in names:
            raise MalformedInputError("the bundle is signed already; sign the unsigned one")
        extracted = bundle.extractfile(f"{top}/release.json")
        if extracted is None:
            raise MalformedInputError("the bundle has no release.json")
        release = AgentRelease.from_payload(extracted.read(1 << 24))
        envelope = material.sign("targets", release)
        partial = out.with_name(out.name + ".partial")
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as signed:
            for member in members:
                signed.addfile(member, bundle.extractfile(member) if member.isfile() else None)
            extra = {SIGNED_RELEASE: envelope.to_json()}
            extra |= {f"root/{i}.json": e.to_json() for i, e in enumerate(material.root_chain, 1)}
            for name, data in extra.items():
                info = tarfile.TarInfo(f"{top}/{name}")
                info.size, info.mode, info.mtime = (
                    len(data),
                    0o644,
                    int(datetime.now(UTC).timestamp()),
                )
                signed.addfile(info, io.BytesIO(data))
        os.replace(partial, out)
    return release
