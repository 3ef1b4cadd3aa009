"""Builders for root, targets, policy and timestamp metadata in tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from edgefleet.trust.envelope import Envelope, sign_envelope
from edgefleet.trust.keys import SigningKey
from edgefleet.trust.metadata import (
    ROLES,
    ROOT_TYPE,
    TARGETS_TYPE,
    TIMESTAMP_TYPE,
    MetaRef,
    ModelManifest,
    RoleKeys,
    Root,
    Targets,
    Timestamp,
)

NOW = datetime(2026, 6, 1, tzinfo=UTC)
CA_SHA = "ab" * 32


def manifest(
    name: str = "m", version: str = "1", sha: str = "cd" * 32, length: int = 10
) -> ModelManifest:
    return ModelManifest(
        name, version, sha, length, "llama", 100, "Q4_0", 2048, 1024, 1024 * 1024, "ef" * 32
    )


@dataclass
class Fleet:
    """Keys per role (``extra`` holds more keys for k-of-n roles) and signing helpers."""

    keys: dict[str, SigningKey] = field(
        default_factory=lambda: {r: SigningKey.generate() for r in ROLES}
    )
    extra: dict[str, list[SigningKey]] = field(default_factory=dict)
    thresholds: dict[str, int] = field(default_factory=dict)

    def role_keys(self, role: str) -> list[SigningKey]:
        return [self.keys[role], *self.extra.get(role, [])]

    def root(self, version: int = 1, expires: datetime = NOW + timedelta(days=30)) -> Root:
        everything = [k for r in ROLES for k in self.role_keys(r)]
        return Root(
            version=version,
            expires=expires,
            keys={k.keyid: k.public for k in everything},
            roles={
                r: RoleKeys(tuple(k.keyid for k in self.role_keys(r)), self.thresholds.get(r, 1))
                for r in ROLES
            },
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
        signers: list[SigningKey] | None = None,
    ) -> Envelope:
        payload = Targets(version, expires, {m.ref: m for m in models}).to_payload()
        return sign_envelope(TARGETS_TYPE, payload, signers or [signer or self.keys["targets"]])

    def timestamp(
        self,
        version: int,
        targets: Envelope,
        policy: Envelope | None = None,
        expires: datetime = NOW + timedelta(days=1),
        signers: list[SigningKey] | None = None,
    ) -> Envelope:
        policy_ref = MetaRef.of(policy.payload) if policy else None
        payload = Timestamp(version, expires, MetaRef.of(targets.payload), policy_ref).to_payload()
        return sign_envelope(TIMESTAMP_TYPE, payload, signers or [self.keys["timestamp"]])
