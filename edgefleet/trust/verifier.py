"""The pure trust state machine: bytes in, verified metadata out, no I/O.

An agent pins the fingerprint of root version 1 (given out of band), follows root
rotations one version at a time, refuses lower versions (rollback) and newly received
metadata that has expired (freeze), and accepts targets only when signed by a threshold
of the keys the trusted root names for the targets role.

A sync delivers a *snapshot*: a timestamp signed by the timestamp role that names the
exact targets and policy payloads of one moment. :meth:`TrustedState.update_snapshot`
accepts the three together or not at all, so metadata of different moments is never
combined (mix-and-match) and a stale replay is refused once the timestamp expires.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from edgefleet.errors import (
    ExpiredMetadataError,
    MalformedInputError,
    NotFoundError,
    RollbackError,
    SignatureError,
    SnapshotMismatchError,
)
from edgefleet.rbac import Policy
from edgefleet.trust.envelope import Envelope, verify_envelope
from edgefleet.trust.metadata import (
    POLICY_TYPE,
    ROOT_TYPE,
    TARGETS_TYPE,
    TIMESTAMP_TYPE,
    MetaRef,
    ModelManifest,
    Root,
    Targets,
    Timestamp,
)

MAX_ROOT_CHAIN = 1024


def root_fingerprint(root_v1: Envelope) -> str:
    """The value an operator hands a device out of band: hex SHA-256 of root v1's payload."""
    return hashlib.sha256(root_v1.payload).hexdigest()


def _verify_root(envelope: Envelope, signer: Root) -> Root:
    """Check ``envelope`` is signed by a threshold of ``signer``'s root keys and parse it."""
    root_keys = signer.roles["root"]
    payload = verify_envelope(
        envelope, ROOT_TYPE, signer.keys, root_keys.keyids, root_keys.threshold, "root"
    )
    return Root.from_payload(payload)


@dataclass(frozen=True)
class TrustedState:
    """Metadata verified so far; every update returns a new state or raises."""

    root: Root
    root_chain: tuple[Envelope, ...]
    targets: Targets | None = None
    targets_envelope: Envelope | None = None
    policy: Policy | None = None
    policy_envelope: Envelope | None = None
    timestamp: Timestamp | None = None
    timestamp_envelope: Envelope | None = None

    @classmethod
    def bootstrap(cls, fingerprint: str, chain: Sequence[Envelope], now: datetime) -> TrustedState:
        """Start from root v1 matching the pinned fingerprint, then follow ``chain``."""
        if not chain:
            raise MalformedInputError("root chain is empty")
        first = chain[0]
        if root_fingerprint(first) != fingerprint.lower():
            raise SignatureError("root v1 does not match the pinned root fingerprint")
        root = Root.from_payload(first.payload)
        if root.version != 1:
            raise MalformedInputError("the root chain must start at version 1")
        root = _verify_root(first, root)
        state = cls(root=root, root_chain=(first,))
        return state.update_root_chain(chain, now)

    def update_root_chain(self, chain: Sequence[Envelope], now: datetime) -> TrustedState:
        """Apply root versions newer than the trusted one, one version at a time."""
        if len(chain) > MAX_ROOT_CHAIN:
            raise MalformedInputError("root chain is too long")
        root = self.root
        accepted = list(self.root_chain)
        for envelope in chain:
            claimed = Root.from_payload(envelope.payload)
            if claimed.version <= root.version:
                known = self.root_chain[claimed.version - 1] if claimed.version >= 1 else None
                if known is None or known.payload != envelope.payload:
                    raise RollbackError(
                        f"root version {claimed.version} differs from the trusted one"
                    )
                continue
            if claimed.version != root.version + 1:
                raise MalformedInputError(
                    f"root chain skips from version {root.version} to {claimed.version}"
                )
            _verify_root(envelope, root)  # a threshold of the old root keys
            root = _verify_root(envelope, claimed)  # and of the new ones
            accepted.append(envelope)
        if root.version != self.root.version and root.expires <= now:
            raise ExpiredMetadataError(f"root version {root.version} expired {root.expires}")
        if root is self.root:
            return self
        state = TrustedState(root=root, root_chain=tuple(accepted))
        # Keep what the new root's keys still vouch for; after a key rotation, wait for
        # metadata signed by the new keys.
        if self.targets_envelope is not None:
            with contextlib.suppress(SignatureError):
                state = state.update_targets(self.targets_envelope, now=None)
        if self.policy_envelope is not None:
            with contextlib.suppress(SignatureError):
                state = state.update_policy(self.policy_envelope, now=None)
        if self.timestamp_envelope is not None:
            with contextlib.suppress(SignatureError):
                state = state.update_timestamp(self.timestamp_envelope, now=None)
        return state

    def _check_new_version(
        self,
        role: str,
        version: int,
        expires: datetime | None,
        envelope: Envelope,
        trusted_version: int | None,
        trusted: Envelope | None,
        now: datetime | None,
    ) -> bool:
        """Rollback and freeze checks shared by every versioned role; False means unchanged."""
        if trusted_version is not None:
            if version < trusted_version:
                raise RollbackError(
                    f"{role} version {version} is lower than trusted version {trusted_version}"
                )
            if version == trusted_version:
                if trusted is not None and envelope.payload != trusted.payload:
                    raise RollbackError(f"{role} version {version} was reused")
                return False
        if now is not None and expires is not None and expires <= now:
            raise ExpiredMetadataError(f"{role} version {version} expired {expires}")
        return True

    def update_targets(self, envelope: Envelope, now: datetime | None) -> TrustedState:
        """Accept new targets metadata; ``now=None`` skips expiry for re-verification."""
        role = self.root.roles["targets"]
        payload = verify_envelope(
            envelope, TARGETS_TYPE, self.root.keys, role.keyids, role.threshold, "targets"
        )
        targets = Targets.from_payload(payload)
        current = self.targets.version if self.targets else None
        if not self._check_new_version(
            "targets",
            targets.version,
            targets.expires,
            envelope,
            current,
            self.targets_envelope,
            now,
        ):
            return self
        return replace(self, targets=targets, targets_envelope=envelope)

    def update_policy(self, envelope: Envelope, now: datetime | None) -> TrustedState:
        """Accept a new signed RBAC policy; older versions are refused (revocations stick)."""
        role = self.root.roles["policy"]
        payload = verify_envelope(
            envelope, POLICY_TYPE, self.root.keys, role.keyids, role.threshold, "policy"
        )
        policy = Policy.from_payload(payload)
        if policy.expires is None:
            raise MalformedInputError("a signed policy must carry an expiry")
        current = self.policy.version if self.policy else None
        if not self._check_new_version(
            "policy", policy.version, policy.expires, envelope, current, self.policy_envelope, now
        ):
            return self
        return replace(self, policy=policy, policy_envelope=envelope)

    def update_timestamp(self, envelope: Envelope, now: datetime | None) -> TrustedState:
        """Accept a timestamp signed by the timestamp role; ``now=None`` skips expiry.

        Expiry is checked even when the version is unchanged: a controller that stops
        refreshing its timestamp looks exactly like a freeze attack.
        """
        role = self.root.roles["timestamp"]
        payload = verify_envelope(
            envelope, TIMESTAMP_TYPE, self.root.keys, role.keyids, role.threshold, "timestamp"
        )
        timestamp = Timestamp.from_payload(payload)
        current = self.timestamp.version if self.timestamp else None
        changed = self._check_new_version(
            "timestamp",
            timestamp.version,
            timestamp.expires,
            envelope,
            current,
            self.timestamp_envelope,
            now,
        )
        if now is not None and timestamp.expires <= now:
            raise ExpiredMetadataError(
                f"timestamp version {timestamp.version} expired {timestamp.expires}"
            )
        if not changed:
            return self
        return replace(self, timestamp=timestamp, timestamp_envelope=envelope)

    def update_snapshot(
        self,
        timestamp: Envelope,
        targets: Envelope,
        policy: Envelope | None,
        now: datetime | None,
    ) -> TrustedState:
        """Accept a timestamp and the targets and policy it names, all or nothing."""
        state = self.update_timestamp(timestamp, now)
        assert state.timestamp is not None
        named = state.timestamp
        state = state.update_targets(targets, now)
        assert state.targets is not None
        _check_named("targets", named.targets, targets, state.targets.version)
        if named.policy is None:
            if policy is not None:
                raise SnapshotMismatchError("a policy was sent that the timestamp does not name")
        else:
            if policy is None:
                raise SnapshotMismatchError(
                    f"the timestamp names policy version {named.policy.version}, none was sent"
                )
            state = state.update_policy(policy, now)
            assert state.policy is not None
            _check_named("policy", named.policy, policy, state.policy.version)
        return state

    def manifest(self, name: str, version: str) -> ModelManifest:
        """The trusted manifest of ``name@version``."""
        if self.targets is None:
            raise NotFoundError("no trusted targets metadata yet")
        manifest = self.targets.models.get(f"{name}@{version}")
        if manifest is None:
            raise NotFoundError(f"{name}@{version} is not in trusted targets metadata")
        return manifest


def _check_named(role: str, named: MetaRef, envelope: Envelope, version: int) -> None:
    """Refuse ``role`` metadata that is not exactly what the timestamp names."""
    if hashlib.sha256(envelope.payload).hexdigest() != named.sha256 or version != named.version:
        raise SnapshotMismatchError(
            f"{role} version {version} is not the {role} version {named.version} the timestamp "
            "names (metadata of different moments refused)"
        )
