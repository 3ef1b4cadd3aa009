"""The registry: trusted metadata, installed versions and the active one per model.

Nothing is recorded as installed unless its blob was verified against a manifest from
trusted targets metadata; activation switches the active version and keeps the previous
one (A/B). Every change is audited.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select

from edgefleet.agent.app.database import ActiveRow, AgentDatabase, InstalledRow, TrustRow
from edgefleet.agent.audit.log import AuditLog
from edgefleet.agent.registry.blobs import BlobStore
from edgefleet.agent.registry.integrity import Integrity, check_blob
from edgefleet.audit import AuditEvent
from edgefleet.errors import ConflictError, NotFoundError, StorageError
from edgefleet.fleet import InstalledModel
from edgefleet.trust.envelope import Envelope
from edgefleet.trust.metadata import ModelManifest
from edgefleet.trust.verifier import TrustedState

HOLD_BACK_PREFIX = "held_back:"


@dataclass(frozen=True)
class ActiveModel:
    """A model that serves requests: its manifest and where its verified file is."""

    manifest: ModelManifest
    path: str


def _encode_envelopes(envelopes: list[Envelope]) -> bytes:
    return json.dumps([json.loads(e.to_json()) for e in envelopes]).encode("utf-8")


def _decode_envelopes(data: bytes) -> list[Envelope]:
    return [Envelope.from_json(json.dumps(item).encode("utf-8")) for item in json.loads(data)]


class Registry:
    """Reads and changes the local registry, each change with its audit record."""

    def __init__(self, db: AgentDatabase, blobs: BlobStore, audit: AuditLog) -> None:
        self.db = db
        self.blobs = blobs
        self.audit = audit

    # --- trust metadata ---------------------------------------------------------------
    def save_trust(self, state: TrustedState) -> None:
        """Persist the verified root chain and targets, exactly as received."""
        with self.db.session() as session:
            session.merge(
                TrustRow(name="root", envelopes=_encode_envelopes(list(state.root_chain)))
            )
            for name, envelope in (
                ("timestamp", state.timestamp_envelope),
                ("targets", state.targets_envelope),
                ("policy", state.policy_envelope),
            ):
                if envelope is not None:
                    session.merge(TrustRow(name=name, envelopes=_encode_envelopes([envelope])))

    def load_trust(self, fingerprint: str) -> TrustedState:
        """Re-verify stored metadata from the pinned fingerprint (no expiry: offline-first)."""
        with self.db.session() as session:
            stored = {
                row.name: row.envelopes for row in session.execute(select(TrustRow)).scalars()
            }
        if "root" not in stored:
            raise StorageError("no trusted root is stored: enroll the device first")
        state = TrustedState.bootstrap(fingerprint, _decode_envelopes(stored["root"]), now=_epoch())
        if "timestamp" in stored:
            policy = _decode_envelopes(stored["policy"])[0] if "policy" in stored else None
            state = state.update_snapshot(
                _decode_envelopes(stored["timestamp"])[0],
                _decode_envelopes(stored["targets"])[0],
                policy,
                now=None,
            )
        return state

    # --- installed and active versions ------------------------------------------------
    def is_installed(self, manifest: ModelManifest) -> bool:
        """Tell whether this exact manifest is installed with its blob present."""
        with self.db.session() as session:
            row = session.get(InstalledRow, (manifest.name, manifest.version))
            found = row is not None and row.sha256 == manifest.sha256
        return found and self.blobs.has(manifest.sha256, manifest.length)

    def record_installed(self, manifest: ModelManifest) -> None:
        """Record a version whose blob was verified and committed."""
        with self.db.session() as session:
            session.merge(
                InstalledRow(
                    name=manifest.name,
                    version=manifest.version,
                    sha256=manifest.sha256,
                    length=manifest.length,
                    manifest=json.dumps(manifest.to_dict()).encode(),
                    installed_at=datetime.now(UTC),
                )
            )
        self.audit.append(
            AuditEvent(
                "agent",
                "model.install",
                manifest.ref,
                "success",
                {"sha256": manifest.sha256, "length": manifest.length},
            )
        )

    def activate(self, manifest: ModelManifest) -> None:
        """Make an installed version the active one, keeping the previous version."""
        with self.db.session() as session:
            if session.get(InstalledRow, (manifest.name, manifest.version)) is None:
                raise NotFoundError(f"{manifest.ref} is not installed")
            current = session.get(ActiveRow, manifest.name)
            previous = current.version if current else None
            if previous == manifest.version:
                return
            session.merge(
                ActiveRow(
                    name=manifest.name,
                    version=manifest.version,
                    previous_version=previous,
                    activated_at=datetime.now(UTC),
                )
            )
        self.audit.append(
            AuditEvent(
                "agent",
                "model.activate",
                manifest.ref,
                "success",
                {"sha256": manifest.sha256, "previous_version": previous},
            )
        )

    def active_version(self, name: str) -> str | None:
        """The active version of ``name``, if any."""
        with self.db.session() as session:
            row = session.get(ActiveRow, name)
            return row.version if row else None

    def active_models(self) -> list[ActiveModel]:
        """Every active model with the path of its verified blob."""
        with self.db.session() as session:
            rows = session.execute(
                select(InstalledRow)
                .join(
                    ActiveRow,
                    (ActiveRow.name == InstalledRow.name)
                    & (ActiveRow.version == InstalledRow.version),
                )
                .order_by(InstalledRow.name)
            ).scalars()
            manifests = [ModelManifest.from_dict(json.loads(r.manifest)) for r in rows]
        return [ActiveModel(m, str(self.blobs.path_of(m.sha256))) for m in manifests]

    def installed(self) -> list[InstalledModel]:
        """Every installed version, flagged when active."""
        with self.db.session() as session:
            active = {r.name: r.version for r in session.execute(select(ActiveRow)).scalars()}
            rows = session.execute(
                select(InstalledRow).order_by(InstalledRow.name, InstalledRow.version)
            ).scalars()
            return [
                InstalledModel(r.name, r.version, r.sha256, active.get(r.name) == r.version)
                for r in rows
            ]

    def manifests(self) -> list[ModelManifest]:
        """The manifest of every installed version."""
        with self.db.session() as session:
            rows = session.execute(
                select(InstalledRow).order_by(InstalledRow.name, InstalledRow.version)
            ).scalars()
            return [ModelManifest.from_dict(json.loads(r.manifest)) for r in rows]

    # --- integrity --------------------------------------------------------------------
    def verify(self, manifest: ModelManifest, mode: str, sample: int = 8) -> Integrity:
        """Check a stored blob; a damaged one is quarantined and audited, never served."""
        result = check_blob(self.blobs, manifest, mode, sample)
        if result.ok or self.blobs.quarantine_blob(manifest.sha256) is None:
            return result  # intact, or nothing here to quarantine (already done, or missing)
        self.audit.append(
            AuditEvent(
                "agent",
                "model.verify",
                manifest.ref,
                "corrupt",
                {
                    "sha256": manifest.sha256,
                    "reason": result.reason,
                    "bad_chunks": list(result.bad_chunks[:64]),
                    "mode": mode,
                },
            )
        )
        return result

    def record_repaired(
        self, manifest: ModelManifest, chunks: tuple[int, ...], fetched: int
    ) -> None:
        """Audit a repair that restored a verified blob."""
        self.audit.append(
            AuditEvent(
                "agent",
                "model.repair",
                manifest.ref,
                "success",
                {"chunks": list(chunks[:64]), "bytes_fetched": fetched},
            )
        )

    # --- A/B --------------------------------------------------------------------------
    def rollback(self, name: str) -> tuple[str, str]:
        """Switch ``name`` back to its previous version; return (from, to).

        The version rolled back from is held back: sync will not activate it again until
        the controller assigns another version.
        """
        with self.db.session() as session:
            current = session.get(ActiveRow, name)
            if current is None:
                raise NotFoundError(f"no version of {name} is active")
            previous = current.previous_version
            if previous is None:
                raise ConflictError(f"{name} has no previous version to roll back to")
            row = session.get(InstalledRow, (name, previous))
            if row is None or not self.blobs.has(row.sha256, row.length):
                raise ConflictError(f"{name}@{previous} is no longer installed intact")
            rolled_back = current.version
            session.merge(
                ActiveRow(
                    name=name,
                    version=previous,
                    previous_version=rolled_back,
                    activated_at=datetime.now(UTC),
                )
            )
        self.db.set_state(HOLD_BACK_PREFIX + name, rolled_back)
        self.audit.append(
            AuditEvent(
                "agent", "model.rollback", f"{name}@{previous}", "success", {"from": rolled_back}
            )
        )
        return rolled_back, previous

    def prune_unlisted(self, listed: set[str]) -> list[str]:
        """Uninstall every version the fleet's signed targets no longer list (``listed``:
        their NAME@VERSION): an operator removed it from the catalog. An active one gives
        way to its previous version when that is still listed and installed (otherwise
        the model has no active version); blobs no installed version uses are deleted.
        Return what was removed; each removal is audited."""
        removed: list[tuple[str, str, bool, str | None]] = []
        with self.db.session() as session:
            rows = list(session.execute(select(InstalledRow)).scalars())
            for row in rows:
                if f"{row.name}@{row.version}" in listed:
                    continue
                active = session.get(ActiveRow, row.name)
                was_active = active is not None and active.version == row.version
                fallback = None
                if active is not None and was_active:
                    previous = active.previous_version
                    if (
                        previous
                        and f"{row.name}@{previous}" in listed
                        and session.get(InstalledRow, (row.name, previous)) is not None
                    ):
                        active.version, active.previous_version = previous, None
                        active.activated_at = datetime.now(UTC)
                        fallback = previous
                    else:
                        session.delete(active)
                elif active is not None and active.previous_version == row.version:
                    active.previous_version = None
                session.delete(row)
                removed.append((row.name, row.version, was_active, fallback))
            dropped = {(name, version) for name, version, _, _ in removed}
            still_used = set().union(
                *(_blobs_of(r) for r in rows if (r.name, r.version) not in dropped)
            )
            unused = set().union(*(_blobs_of(r) for r in rows if (r.name, r.version) in dropped))
        for sha256 in unused - still_used:  # the model's blob and its chunk index
            self.blobs.remove(sha256)
        for name, version, was_active, fallback in removed:
            self.audit.append(
                AuditEvent(
                    "agent",
                    "model.remove",
                    f"{name}@{version}",
                    "success",
                    {
                        "reason": "no longer in the fleet's signed targets",
                        "was_active": was_active,
                        "now_active": fallback,
                    },
                )
            )
        return [f"{name}@{version}" for name, version, _, _ in removed]

    def held_back(self, name: str) -> str:
        """The version of ``name`` an operator rolled back from on the device ('' if none)."""
        return self.db.get_state(HOLD_BACK_PREFIX + name)

    def release_hold(self, name: str) -> None:
        """Forget a hold once the controller assigns another version."""
        self.db.set_state(HOLD_BACK_PREFIX + name, "")


def _blobs_of(row: InstalledRow) -> set[str]:
    """The blobs an installed version stands on: the model and its chunk index."""
    manifest = ModelManifest.from_dict(json.loads(row.manifest))
    return {manifest.sha256, manifest.chunks_sha256} - {""}


def _epoch() -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC)
