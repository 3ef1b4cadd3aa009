"""What devices are told to trust now: a timestamp naming the current targets and policy.

The timestamp is re-signed when what it names changes, when it is half-way to expiry,
and after a key rotation; targets and policy are re-signed (as new versions) when the
current root no longer names the keys that signed them. Devices therefore always receive
a consistent snapshot signed by keys the newest root vouches for.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from edgefleet.bundle import BundleHeader
from edgefleet.controller.catalog.publish import Catalog, latest_targets
from edgefleet.controller.rbac.policies import PolicyService, latest_policy
from edgefleet.controller.store.database import Database
from edgefleet.controller.store.schema import PolicyVersion, TargetsVersion, TimestampVersion
from edgefleet.controller.trust.keyring import Keyring, TrustMaterial
from edgefleet.errors import NotFoundError, StorageError
from edgefleet.trust.envelope import Envelope
from edgefleet.trust.metadata import (
    MetaRef,
    ModelManifest,
    Targets,
    Timestamp,
    check_model_name,
    check_model_version,
)


@dataclass(frozen=True)
class Snapshot:
    """The metadata a device verifies in one go."""

    root_chain: tuple[Envelope, ...]
    timestamp: Envelope
    targets: Envelope
    policy: Envelope | None


def latest_timestamp(session: Session) -> tuple[Timestamp, Envelope] | None:
    """The newest signed timestamp, or None before the first."""
    row = session.execute(
        select(TimestampVersion).order_by(TimestampVersion.version.desc()).limit(1)
    ).scalar_one_or_none()
    if row is None:
        return None
    envelope = Envelope.from_json(row.envelope)
    return Timestamp.from_payload(envelope.payload), envelope


# Without an announced change, the versions a snapshot was built from are looked up again
# after this long (a safety net should a change notification be lost).
RECHECK_SECONDS = 2.0


class Snapshots:
    """Builds the current snapshot, signing what is missing or stale."""

    def __init__(
        self,
        db: Database,
        keyring: Keyring,
        catalog: Catalog,
        policies: PolicyService,
        expiry: timedelta,
    ) -> None:
        self.db = db
        self.keyring = keyring
        self.catalog = catalog
        self.policies = policies
        self.expiry = expiry
        self._lock = threading.Lock()
        self._vouched: dict[tuple[str, int, bytes], bool] = {}
        # The last snapshot built, what it was built from (root version and the newest
        # targets, policy and timestamp versions) and until when its timestamp is fresh.
        self._cached: tuple[tuple[int, int, int, int], datetime, Snapshot] | None = None
        # When the versions were last looked up, and whether a change came since: within
        # RECHECK_SECONDS of a lookup and with no change announced (`invalidate`, called by
        # the change feed, here or relayed from another replica), a sync needs no query.
        self._checked: float = 0.0
        self._changes = 0
        self._changes_seen = 0

    def invalidate(self) -> None:
        """Something that may change the snapshot happened: look it up at the next sync."""
        self._changes += 1

    def _versions(self) -> tuple[int, int, int]:
        """The newest targets, policy and timestamp versions: one round trip, so that a
        sync reuses the snapshot unless something changed (here or on another replica)."""
        with self.db.session() as session:
            row = session.execute(
                select(
                    select(func.max(TargetsVersion.version)).scalar_subquery(),
                    select(func.max(PolicyVersion.version)).scalar_subquery(),
                    select(func.max(TimestampVersion.version)).scalar_subquery(),
                )
            ).one()
        return int(row[0] or 0), int(row[1] or 0), int(row[2] or 0)

    def _vouches(self, material: TrustMaterial, role: str, envelope: Envelope) -> bool:
        key = (role, material.root.version, envelope.payload)
        if key not in self._vouched:
            if len(self._vouched) > 64:
                self._vouched.clear()
            self._vouched[key] = material.vouches(role, envelope)
        return self._vouched[key]

    def fresh(self, keys_max_age: float = 0.0) -> Snapshot | None:
        """The snapshot to serve now if that needs no query (else None: call `current`);
        ``keys_max_age``: how old the last look at the data directory's keys may be."""
        cached = self._cached
        if (
            cached is not None
            and cached[0][0] == self.keyring.current(keys_max_age).root.version
            and datetime.now(UTC) < cached[1]
            and self._changes == self._changes_seen
            and time.monotonic() - self._checked < RECHECK_SECONDS
        ):
            return cached[2]
        return None

    def current(self) -> Snapshot:
        """The snapshot to serve now (signing a new timestamp when needed)."""
        changes = self._changes
        fresh = self.fresh()
        if fresh is not None:
            return fresh
        material = self.keyring.current()
        now = datetime.now(UTC)
        cached = self._cached
        key = (material.root.version, *self._versions())
        if cached is not None and cached[0] == key and now < cached[1]:
            self._checked, self._changes_seen = time.monotonic(), changes
            return cached[2]
        with self._lock:
            snapshot = self._read(material)
            if snapshot is None:  # keys were rotated: re-sign, then read again
                self.catalog.resign(material)
                self.policies.resign(material)
                snapshot = self._read(material)
            if snapshot is None:
                raise StorageError("targets or policy are not signed by the current root's keys")
            timestamp = Timestamp.from_payload(snapshot.timestamp.payload)
            built_from = (
                material.root.version,
                timestamp.targets.version,
                timestamp.policy.version if timestamp.policy else 0,
                timestamp.version,
            )
            self._cached = (built_from, timestamp.expires - self.expiry / 2, snapshot)
            self._checked, self._changes_seen = time.monotonic(), changes
            return snapshot

    def _read(self, material: TrustMaterial) -> Snapshot | None:
        """The current snapshot, or None when the current root's keys did not sign its
        targets or policy (a rotation); one transaction, on every device's sync."""
        with self.db.session() as session:
            targets = latest_targets(session)
            if targets is None:
                raise StorageError("the controller has no targets metadata")
            policy = latest_policy(session)
            if not self._vouches(material, "targets", targets[1]) or (
                policy is not None and not self._vouches(material, "policy", policy[1])
            ):
                return None
            timestamp = self._timestamp(session, material, targets[1], policy)
        return Snapshot(material.root_chain, timestamp, targets[1], policy[1] if policy else None)

    def _timestamp(
        self,
        session: Session,
        material: TrustMaterial,
        targets: Envelope,
        policy: tuple[object, Envelope] | None,
    ) -> Envelope:
        now = datetime.now(UTC).replace(microsecond=0)
        targets_ref = MetaRef.of(targets.payload)
        policy_ref = MetaRef.of(policy[1].payload) if policy else None
        found = latest_timestamp(session)

        def still_good(found: tuple[Timestamp, Envelope]) -> bool:
            current, envelope = found
            return (
                current.targets == targets_ref
                and current.policy == policy_ref
                and current.expires - now > self.expiry / 2
                and self._vouches(material, "timestamp", envelope)
            )

        if found is not None and still_good(found):
            return found[1]
        # Another replica may be signing the same new version: take turns, then look again.
        self.db.hold(session, "timestamp")
        found = latest_timestamp(session)
        if found is not None and still_good(found):
            return found[1]
        version = found[0].version + 1 if found else 1
        timestamp = Timestamp(version, now + self.expiry, targets_ref, policy_ref)
        envelope = material.sign("timestamp", timestamp)
        session.add(TimestampVersion(version=version, envelope=envelope.to_json(), created_at=now))
        return envelope


def bundle_header(
    snapshots: Snapshots, name: str, version: str
) -> tuple[BundleHeader, ModelManifest]:
    """The metadata chain that lets an offline device install ``name@version``."""
    check_model_name(name)
    check_model_version(version)
    snapshot = snapshots.current()
    targets = Targets.from_payload(snapshot.targets.payload)
    manifest = targets.models.get(f"{name}@{version}")
    if manifest is None:
        raise NotFoundError(f"{name}@{version} is not published")
    header = BundleHeader(
        manifest.ref, snapshot.root_chain, snapshot.timestamp, snapshot.targets, snapshot.policy
    )
    return header, manifest
