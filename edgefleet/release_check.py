"""Check an unpacked agent install bundle on the gateway, before anything is installed:

  python -m edgefleet.release_check BUNDLE_DIR --root-fingerprint FP

verifies the root chain from the fingerprint, the release's targets signature, the
SHA-256 of every file (and that no file is missing or extra), the architecture and the
Python version; picks the llama.cpp build for this CPU from /proc/cpuinfo; prints the
verified release as JSON (with the chosen build) and exits 0 — or prints one line saying
why not and exits 1. The installer (deploy/agent/install-bundle.py) runs it from a
throwaway environment holding only the wheels whose digests the installer itself carries.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

from edgefleet.errors import EdgefleetError, HashMismatchError, MalformedInputError
from edgefleet.files import sha256_of_file
from edgefleet.trust.envelope import Envelope
from edgefleet.trust.release import AgentRelease, LlamaBuild, verify_release

SIGNED_RELEASE = "release.signed.json"
ROOT_CHAIN = "root"  # root/1.json, root/2.json …
# files a bundle holds besides those its release names (the signature and its root chain)
UNLISTED = (SIGNED_RELEASE, "release.json")
MAX_ROOT_FILE = 1 << 20


def root_chain(bundle: Path) -> list[Envelope]:
    files = sorted(
        (bundle / ROOT_CHAIN).glob("*.json"),
        key=lambda p: int(p.stem) if p.stem.isdigit() else -1,
    )
    if not files or any(not p.stem.isdigit() for p in files):
        raise MalformedInputError("the bundle has no root chain (root/1.json …): is it signed?")
    return [Envelope.from_json(p.read_bytes()[:MAX_ROOT_FILE]) for p in files]


def cpu_features(cpuinfo: str) -> set[str]:
    """CPU feature names from /proc/cpuinfo (``Features`` on ARM, ``flags`` on x86)."""
    found: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("Features", "flags"):
            found |= set(value.split())
    return found


def check_bundle(
    bundle: Path, fingerprint: str, machine: str, python: str, features: set[str]
) -> tuple[AgentRelease, LlamaBuild]:
    """The verified release and the llama.cpp build for this CPU, or an EdgefleetError."""
    signed = bundle / SIGNED_RELEASE
    if not signed.is_file():
        raise MalformedInputError(f"the bundle is not signed (no {SIGNED_RELEASE})")
    envelope = Envelope.from_json(signed.read_bytes()[:MAX_ROOT_FILE])
    release = verify_release(fingerprint, root_chain(bundle), envelope, datetime.now(UTC))
    present = {
        str(p.relative_to(bundle))
        for p in bundle.rglob("*")
        if p.is_file() and not p.is_symlink() and p.parts[len(bundle.parts)] != ROOT_CHAIN
    } - set(UNLISTED)
    if missing := sorted(set(release.files) - present):
        raise HashMismatchError(f"the bundle lacks {missing[0]} (and {len(missing) - 1} more)")
    if extra := sorted(present - set(release.files)):
        raise HashMismatchError(f"the bundle holds {extra[0]}, which its release does not name")
    for name, expected in sorted(release.files.items()):
        path = bundle / name
        if path.is_symlink() or sha256_of_file(path) != expected:
            raise HashMismatchError(f"{name} does not match the signed release")
    if release.arch != machine:
        raise MalformedInputError(f"the bundle is for {release.arch}; this machine is {machine}")
    if release.python != python:
        raise MalformedInputError(
            f"the bundle is for Python {release.python}; this machine has Python {python}"
        )
    build = release.build_for(features)
    if build is None:
        names = ", ".join(f"{b.name} (needs {' '.join(b.features)})" for b in release.llama)
        raise MalformedInputError(f"no llama.cpp build in the bundle runs on this CPU: {names}")
    return release, build


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="release_check", description=__doc__)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--root-fingerprint", required=True)
    parser.add_argument("--cpuinfo", type=Path, default=Path("/proc/cpuinfo"))
    args = parser.parse_args(argv)
    try:
        features = cpu_features(args.cpuinfo.read_text(errors="replace"))
        release, build = check_bundle(
            args.bundle,
            args.root_fingerprint,
            platform.machine(),
            f"{sys.version_info.major}.{sys.version_info.minor}",
            features,
        )
    except (EdgefleetError, OSError) as e:
        print(f"release_check: refused: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"version": release.version, "arch": release.arch, "llama": build.to_dict()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
