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

from agent.audit.log import AuditLog
from agent.database import ActiveRow, AgentDatabase, InstalledRow, TrustRow
from agent.registry.blobs import BlobStore
from edgefleet.audit import AuditEvent
from edgefleet.errors import NotFoundError, StorageError
from edgefleet.fleet import InstalledModel
from edgefleet.trust.envelope import Envelope
from edgefleet.trust.metadata import ModelManifest
from edgefleet.trust.verifier import TrustedState


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
        if "targets" in stored:
            state = state.update_targets(_decode_envelopes(stored["targets"])[0], now=None)
        if "policy" in stored:
            state = state.update_policy(_decode_envelopes(stored["policy"])[0], now=None)
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


def _epoch() -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC)
