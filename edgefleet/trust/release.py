"""An agent release: the signed list of every file of an offline install bundle.

A bundle built for one architecture (`make bundle-arm64`, `make bundle-amd64`) names each
of its files with its SHA-256 and the llama.cpp builds it carries, best first, with the
CPU features each needs. A controller signs it with the fleet's targets key(s)
(`edgefleetctl agent-bundle sign`); the installer on the gateway verifies the signature
from the root fingerprint, then every file, before it installs anything — a bundle
carried through a site on a USB stick is as trustworthy as a sync over mTLS.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from edgefleet.canonical import canonical_bytes, parse_object
from edgefleet.errors import MalformedInputError
from edgefleet.trust.envelope import Envelope, verify_envelope
from edgefleet.trust.metadata import SHA256_PATTERN, VERSION_PATTERN, format_time, parse_time
from edgefleet.trust.verifier import TrustedState

RELEASE_TYPE = "application/vnd.edgefleet.agent-release+json"
ARCHITECTURES = ("aarch64", "x86_64")  # what `uname -m` prints on the gateway
PATH_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*(/[A-Za-z0-9][A-Za-z0-9._+-]*)*$")
FEATURE_PATTERN = re.compile(r"^[a-z0-9_]{1,32}$")
PYTHON_PATTERN = re.compile(r"^3\.[0-9]{1,2}$")
MAX_FILES = 2000
MAX_PATH = 240


@dataclass(frozen=True)
class LlamaBuild:
    """One llama.cpp build in the bundle: for CPUs with every one of ``features``
    (names as in /proc/cpuinfo, e.g. ``asimddp`` for dotprod)."""

    name: str
    wheel: str
    features: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "wheel": self.wheel, "features": list(self.features)}

    @classmethod
    def from_dict(cls, doc: Any) -> LlamaBuild:
        if not isinstance(doc, dict) or not isinstance(doc.get("features"), list):
            raise MalformedInputError("agent release: a llama.cpp build is malformed")
        return cls(doc.get("name"), doc.get("wheel"), tuple(doc["features"]))  # type: ignore[arg-type]


@dataclass(frozen=True)
class AgentRelease:
    """What a bundle holds; validated on construction (before signing) and on parse."""

    PAYLOAD_TYPE: ClassVar[str] = RELEASE_TYPE

    version: str
    arch: str
    python: str
    created: datetime
    files: Mapping[str, str] = field(default_factory=dict)
    llama: tuple[LlamaBuild, ...] = ()

    def __post_init__(self) -> None:
        what = "agent release"
        if not isinstance(self.version, str) or not VERSION_PATTERN.match(self.version):
            raise MalformedInputError(f"{what}: version is malformed")
        if self.arch not in ARCHITECTURES:
            raise MalformedInputError(f"{what}: arch must be one of {', '.join(ARCHITECTURES)}")
        if not isinstance(self.python, str) or not PYTHON_PATTERN.match(self.python):
            raise MalformedInputError(f"{what}: python must be like 3.11")
        if not isinstance(self.files, Mapping) or not 0 < len(self.files) <= MAX_FILES:
            raise MalformedInputError(f"{what}: 1 to {MAX_FILES} files")
        for path, digest in self.files.items():
            if not isinstance(path, str) or len(path) > MAX_PATH or not PATH_PATTERN.match(path):
                raise MalformedInputError(f"{what}: file name {str(path)[:60]!r} is not allowed")
            if not isinstance(digest, str) or not SHA256_PATTERN.match(digest):
                raise MalformedInputError(f"{what}: {path} has no hex SHA-256")
        if not self.llama:
            raise MalformedInputError(f"{what}: no llama.cpp build")
        for build in self.llama:
            if not isinstance(build.name, str) or not VERSION_PATTERN.match(build.name):
                raise MalformedInputError(f"{what}: a llama.cpp build name is malformed")
            if build.wheel not in self.files or not build.wheel.endswith(".whl"):
                raise MalformedInputError(f"{what}: {build.name}'s wheel is not in the bundle")
            if not all(isinstance(f, str) and FEATURE_PATTERN.match(f) for f in build.features):
                raise MalformedInputError(f"{what}: {build.name} names a malformed CPU feature")

    def to_payload(self) -> bytes:
        return canonical_bytes(
            {
                "_type": "agent-release",
                "version": self.version,
                "arch": self.arch,
                "python": self.python,
                "created": format_time(self.created),
                "files": dict(self.files),
                "llama": [b.to_dict() for b in self.llama],
            }
        )

    @classmethod
    def from_payload(cls, payload: bytes) -> AgentRelease:
        doc = parse_object(payload, "agent release")
        if doc.get("_type") != "agent-release":
            raise MalformedInputError("agent release: _type is not 'agent-release'")
        llama = doc.get("llama")
        if not isinstance(llama, list):
            raise MalformedInputError("agent release: llama is not a list")
        return cls(
            doc.get("version"),  # type: ignore[arg-type]
            doc.get("arch"),  # type: ignore[arg-type]
            doc.get("python"),  # type: ignore[arg-type]
            parse_time(doc.get("created"), "agent release created"),
            doc.get("files"),  # type: ignore[arg-type]
            tuple(LlamaBuild.from_dict(b) for b in llama),
        )

    def build_for(self, cpu_features: set[str]) -> LlamaBuild | None:
        """The best llama.cpp build this CPU runs (the first whose features it has)."""
        return next((b for b in self.llama if set(b.features) <= cpu_features), None)


def verify_release(
    fingerprint: str, root_chain: Sequence[Envelope], signed: Envelope, now: datetime
) -> AgentRelease:
    """The release, once the root chain checks out from ``fingerprint`` and a threshold of
    that root's targets keys signed it; SignatureError (or MalformedInputError) if not."""
    state = TrustedState.bootstrap(fingerprint, root_chain, now)
    targets = state.root.roles["targets"]
    payload = verify_envelope(
        signed, RELEASE_TYPE, state.root.keys, targets.keyids, targets.threshold, "agent release"
    )
    return AgentRelease.from_payload(payload)
