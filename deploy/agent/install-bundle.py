#!/usr/bin/env python3
"""Install the edgefleet agent from an offline bundle, with no network at all.

On the gateway, as root, in the unpacked bundle:

    python3 install.py --root-fingerprint FINGERPRINT

Nothing is installed until the bundle has been verified: this script carries the SHA-256
of the few wheels that verify it (the edgefleet kernel and its cryptography); it checks
them, puts them in a throwaway environment and runs `edgefleet.release_check` there, which
verifies the root chain from the fingerprint, the release's signature by the fleet's
targets key(s), every file's SHA-256, the architecture and Python version, and picks the
llama.cpp build this CPU runs (/proc/cpuinfo). Only then is the agent installed into a
new virtual environment with `pip --no-index` and the hardened service set up exactly as
deploy/agent/install.sh does (deploy/setup-service.sh). Needs Python 3 with venv (on
Raspberry Pi OS and Debian: python3, python3-venv), libstdc++6 and libgomp1.

`make bundle-arm64` / `make bundle-amd64` copy this script into the bundle as install.py
with VERIFIER filled in; `edgefleetctl agent-bundle sign` signs the bundle for a fleet.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

# wheel file name (under wheels/) -> SHA-256; filled in when the bundle is built
VERIFIER: dict[str, str] = {}
PROG = "install.py"


class Refused(Exception):
    """The bundle is not installed; the message says why in one line."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run(command: list[str], what: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise Refused(f"{what}: {reason}")
    return result.stdout


def _claimed_arch(bundle: Path) -> str:
    """The architecture the (not yet verified) release says it is for, to refuse a bundle
    for another machine with a clear reason; verification checks it again."""
    try:
        return str(json.loads((bundle / "release.json").read_text())["arch"])[:16]
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def verify(bundle: Path, fingerprint: str, cpuinfo: Path, work: Path) -> dict[str, object]:
    """The verified release (as release_check prints it), from a throwaway environment."""
    if not VERIFIER:
        raise Refused("this installer carries no verifier digests: use the one in a bundle")
    claimed = _claimed_arch(bundle)
    if claimed and claimed != platform.machine():
        # the verifier's own wheels are for that platform: say so before trying them
        raise Refused(f"the bundle is for {claimed}; this machine is {platform.machine()}")
    wheels = work / "verifier-wheels"
    wheels.mkdir()
    for name, expected in sorted(VERIFIER.items()):
        source = bundle / "wheels" / name
        if not source.is_file() or source.is_symlink() or sha256(source) != expected:
            raise Refused(f"wheels/{name} does not match this installer: the bundle was altered")
        shutil.copyfile(source, wheels / name)
    env = work / "verifier"
    venv.EnvBuilder(with_pip=True).create(env)
    python = str(env / "bin" / "python")
    run(
        [python, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
         *map(str, sorted(wheels.iterdir()))],
        "the verifier could not be set up",
    )  # fmt: skip
    out = run(
        [python, "-m", "edgefleet.release_check", str(bundle),
         "--root-fingerprint", fingerprint, "--cpuinfo", str(cpuinfo)],
        "refused",
    )  # fmt: skip
    return dict(json.loads(out))


def install(bundle: Path, prefix: Path, release: dict[str, object]) -> Path:
    """A new virtual environment holding the agent; ``prefix/venv`` points at it."""
    version = str(release["version"])
    llama = release["llama"]
    assert isinstance(llama, dict)
    target = prefix / f"venv-{version}"
    if target.exists():
        shutil.rmtree(target)
    prefix.mkdir(parents=True, exist_ok=True)
    venv.EnvBuilder(with_pip=True).create(target)
    run(
        [str(target / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-index",
         "--find-links", str(bundle / "wheels"), str(bundle / str(llama["wheel"])),
         f"edgefleet=={version}"],
        "pip could not install the agent",
    )  # fmt: skip
    link = prefix / "venv"
    if link.is_dir() and not link.is_symlink():  # installed by install.sh from a checkout
        os.replace(link, prefix / "venv-from-source")
    staged = prefix / "venv.new"
    if staged.is_symlink() or staged.exists():
        staged.unlink()
    staged.symlink_to(target.name)
    os.replace(staged, link)  # atomic: the service sees the old or the new one
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--root-fingerprint", required=True, help="the fleet's, from its operator")
    parser.add_argument("--prefix", type=Path, default=Path("/opt/edgefleet"))
    parser.add_argument(
        "--no-service", action="store_true", help="install the agent only (no user, no unit)"
    )
    parser.add_argument("--cpuinfo", type=Path, default=Path("/proc/cpuinfo"))
    args = parser.parse_args(argv)
    bundle = Path(__file__).resolve().parent
    try:
        if not args.no_service and os.geteuid() != 0:
            raise Refused("run as root (it creates a user, a data directory and a systemd unit)")
        with tempfile.TemporaryDirectory(prefix="edgefleet-install-") as work:
            release = verify(bundle, args.root_fingerprint, args.cpuinfo, Path(work))
        llama = release["llama"]
        assert isinstance(llama, dict)
        print(f"verified: edgefleet agent {release['version']} for {release['arch']}, "
              f"llama.cpp build {llama['name']}")  # fmt: skip
        target = install(bundle, args.prefix, release)
        print(f"installed: {target} (as {args.prefix / 'venv'})")
        if not args.no_service:
            run(
                ["sh", str(bundle / "deploy" / "setup-service.sh"), str(args.prefix),
                 str(bundle / "deploy" / "edgefleet-agent.service"),
                 str(bundle / "deploy" / "agent.toml.example")],
                "the service could not be set up",
            )  # fmt: skip
            print("service: enroll as user edgefleet, then systemctl enable --now edgefleet-agent")
    except Refused as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
