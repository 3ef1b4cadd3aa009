"""The registry: trusted metadata, installed versions and the active one per model.

Nothing is recorded as installed unless its blob was verified against a manifest from
trusted targets metadata; activation switches the active version and keeps the previous
one (A/B). Every change is audited.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime

from edgefleet.agent.app.database import AgentDatabase, timestamp
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
SAVE_TRUST = "INSERT OR REPLACE INTO trust (name, envelopes) VALUES (?, ?)"
SELECT_INSTALLED = "SELECT name, version, sha256, length, manifest FROM installed"
SET_ACTIVE = (
    "INSERT OR REPLACE INTO active (name, version, previous_version, activated_at) "
    "VALUES (?, ?, ?, ?)"
)


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
            session.execute(SAVE_TRUST, ("root", _encode_envelopes(list(state.root_chain))))
            for name, envelope in (
                ("timestamp", state.timestamp_envelope),
                ("targets", state.targets_envelope),
                ("policy", state.policy_envelope),
            ):
                if envelope is not None:
                    session.execute(SAVE_TRUST, (name, _encode_envelopes([envelope])))

    def load_trust(self, fingerprint: str) -> TrustedState:
        """Re-verify stored metadata from the pinned fingerprint (no expiry: offline-first)."""
        with self.db.session() as session:
            stored = dict(session.execute("SELECT name, envelopes FROM trust").fetchall())
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
            row = session.execute(
                "SELECT sha256 FROM installed WHERE name = ? AND version = ?",
                (manifest.name, manifest.version),
            ).fetchone()
            found = row is not None and row[0] == manifest.sha256
        return found and self.blobs.has(manifest.sha256, manifest.length)

    def record_installed(self, manifest: ModelManifest) -> None:
        """Record a version whose blob was verified and committed."""
        with self.db.session() as session:
            session.execute(
                "INSERT OR REPLACE INTO installed "
                "(name, version, sha256, length, manifest, installed_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    manifest.name,
                    manifest.version,
                    manifest.sha256,
                    manifest.length,
                    json.dumps(manifest.to_dict()).encode(),
                    timestamp(datetime.now(UTC)),
                ),
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
            if _installed(session, manifest.name, manifest.version) is None:
                raise NotFoundError(f"{manifest.ref} is not installed")
            current = _active(session, manifest.name)
            previous = current[0] if current else None
            if previous == manifest.version:
                return
            session.execute(
                SET_ACTIVE,
                (manifest.name, manifest.version, previous, timestamp(datetime.now(UTC))),
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
            row = _active(session, name)
            return str(row[0]) if row else None

    def active_models(self) -> list[ActiveModel]:
        """Every active model with the path of its verified blob."""
        with self.db.session() as session:
            rows = session.execute(
                "SELECT installed.manifest FROM installed JOIN active ON "
                "active.name = installed.name AND active.version = installed.version "
                "ORDER BY installed.name"
            ).fetchall()
            manifests = [ModelManifest.from_dict(json.loads(manifest)) for (manifest,) in rows]
        return [ActiveModel(m, str(self.blobs.path_of(m.sha256))) for m in manifests]

    def installed(self) -> list[InstalledModel]:
        """Every installed version, flagged when active."""
        with self.db.session() as session:
            active = dict(session.execute("SELECT name, version FROM active").fetchall())
            rows = session.execute(
                "SELECT name, version, sha256 FROM installed ORDER BY name, version"
            ).fetchall()
            return [
                InstalledModel(name, version, sha256, active.get(name) == version)
                for name, version, sha256 in rows
            ]

    def manifests(self) -> list[ModelManifest]:
        """The manifest of every installed version."""
        with self.db.session() as session:
            rows = session.execute(
                "SELECT manifest FROM installed ORDER BY name, version"
            ).fetchall()
            return [ModelManifest.from_dict(json.loads(manifest)) for (manifest,) in rows]

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
            current = _active(session, name)
            if current is None:
                raise NotFoundError(f"no version of {name} is active")
            rolled_back, previous = current
            if previous is None:
                raise ConflictError(f"{name} has no previous version to roll back to")
            row = _installed(session, name, previous)
            if row is None or not self.blobs.has(row.sha256, row.length):
                raise ConflictError(f"{name}@{previous} is no longer installed intact")
            session.execute(SET_ACTIVE, (name, previous, rolled_back, timestamp(datetime.now(UTC))))
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
            rows = [_Installed(*r) for r in session.execute(SELECT_INSTALLED).fetchall()]
            for row in rows:
                if f"{row.name}@{row.version}" in listed:
                    continue
                active = _active(session, row.name)
                was_active = active is not None and active[0] == row.version
                fallback = None
                if active is not None and was_active:
                    previous = active[1]
                    if (
                        previous
                        and f"{row.name}@{previous}" in listed
                        and _installed(session, row.name, previous) is not None
                    ):
                        now = timestamp(datetime.now(UTC))
                        session.execute(SET_ACTIVE, (row.name, previous, None, now))
                        fallback = previous
                    else:
                        session.execute("DELETE FROM active WHERE name = ?", (row.name,))
                elif active is not None and active[1] == row.version:
                    session.execute(
                        "UPDATE active SET previous_version = NULL WHERE name = ?", (row.name,)
                    )
                session.execute(
                    "DELETE FROM installed WHERE name = ? AND version = ?", (row.name, row.version)
                )
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


@dataclass(frozen=True)
class _Installed:
    """A row of the ``installed`` table."""

    name: str
    version: str
    sha256: str
    length: int
    manifest: bytes


def _installed(session: sqlite3.Connection, name: str, version: str) -> _Installed | None:
    row = session.execute(
        SELECT_INSTALLED + " WHERE name = ? AND version = ?",
        (name, version),
    ).fetchone()
    return _Installed(*row) if row is not None else None


def _active(session: sqlite3.Connection, name: str) -> tuple[str, str | None] | None:
    """(version, previous version) of the active row of ``name``."""
    row = session.execute(
        "SELECT version, previous_version FROM active WHERE name = ?", (name,)
    ).fetchone()
    return (row[0], row[1]) if row is not None else None


def _blobs_of(row: _Installed) -> set[str]:
    """The blobs an installed version stands on: the model and its chunk index."""
    manifest = ModelManifest.from_dict(json.loads(row.manifest))
    return {manifest.sha256, manifest.chunks_sha256} - {""}


def _epoch() -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC)
