"""Builders for root and targets metadata in tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from edgefleet.trust.envelope import Envelope, sign_envelope
from edgefleet.trust.keys import SigningKey
from edgefleet.trust.metadata import (
    ROLES,
    ROOT_TYPE,
    TARGETS_TYPE,
    ModelManifest,
    RoleKeys,
    Root,
    Targets,
)

NOW = datetime(2026, 6, 1, tzinfo=UTC)
CA_SHA = "ab" * 32


def manifest(
    name: str = "m", version: str = "1", sha: str = "cd" * 32, length: int = 10
) -> ModelManifest:
    return ModelManifest(name, version, sha, length, "llama", 100, "Q4_0", 2048, 1024)


@dataclass
class Fleet:
    """Keys per role and helpers to sign metadata with them."""

    keys: dict[str, SigningKey] = field(
        default_factory=lambda: {r: SigningKey.generate() for r in ROLES}
    )

    def root(self, version: int = 1, expires: datetime = NOW + timedelta(days=30)) -> Root:
        return Root(
            version=version,
            expires=expires,
            keys={k.keyid: k.public for k in self.keys.values()},
            roles={r: RoleKeys((self.keys[r].keyid,), 1) for r in ROLES},
            ca_sha256=CA_SHA,
        )

    def sign_root(self, root: Root, *signers: SigningKey) -> Envelope:
        return sign_envelope(ROOT_TYPE, root.to_payload(), signers or [self.keys["root"]])

    def targets(
        self,
        version: int,
        *models: ModelManifest,
        expires: datetime = NOW + timedelta(days=7),
        signer: SigningKey | None = None,
    ) -> Envelope:
        payload = Targets(version, expires, {m.ref: m for m in models}).to_payload()
        return sign_envelope(TARGETS_TYPE, payload, [signer or self.keys["targets"]])
