"""The model catalog: receive a GGUF upload, verify it, store the blob, sign new targets."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from edgefleet.audit import AuditEvent
from edgefleet.canonical import parse_object
from edgefleet.controller.audit.log import record_event
from edgefleet.controller.catalog.blobs import BlobStore
from edgefleet.controller.catalog.published import RemovedVersion
from edgefleet.controller.catalog.quantization.family import parse_evaluation
from edgefleet.controller.store.database import Database
from edgefleet.controller.store.schema import (
    Assignment,
    Model,
    Pin,
    Rollout,
    RolloutTarget,
    TargetsVersion,
)
from edgefleet.controller.trust.keyring import Keyring, TrustMaterial
from edgefleet.errors import ConflictError, MalformedInputError, NotFoundError, StorageError
from edgefleet.gguf import read_gguf_file
from edgefleet.trust.chunks import DEFAULT_CHUNK_SIZE, ChunkIndexBuilder
from edgefleet.trust.envelope import Envelope
from edgefleet.trust.metadata import (
    ModelManifest,
    Targets,
    check_model_name,
    check_model_version,
)

log = structlog.get_logger("edgefleet.controller.catalog.publish")


def readable_manifests(payload: bytes, version: int) -> tuple[dict[str, ModelManifest], list[str]]:
    """The entries of a targets payload that parse, and the refs of those that do not.

    Raises StorageError when the payload itself is unreadable: only an entry-level fault
    is repaired by dropping entries, never a damaged database."""
    try:
        doc = parse_object(payload, f"targets version {version}")
        entries = doc["models"]
        if not isinstance(entries, dict):
            raise MalformedInputError("models is not an object")
    except (MalformedInputError, KeyError) as e:
        raise StorageError(
            f"targets version {version} in the database is unreadable ({e}); restore the "
            "database from a backup (docs/operations.md)"
        ) from e
    readable, dropped = {}, []
    for ref, entry in entries.items():
        try:
            manifest = ModelManifest.from_dict(entry)
        except MalformedInputError:
            dropped.append(str(ref)[:200])
            continue
        if manifest.ref == ref:
            readable[ref] = manifest
        else:
            dropped.append(str(ref)[:200])
    return readable, dropped


@dataclass(frozen=True)
class Published:
    """A model version now in signed targets metadata."""

    manifest: ModelManifest
    targets_version: int


def latest_targets(session: Session) -> tuple[Targets, Envelope] | None:
    """The newest signed targets metadata, or None before the first."""
    row = session.execute(
        select(TargetsVersion).order_by(TargetsVersion.version.desc()).limit(1)
    ).scalar_one_or_none()
    if row is None:
        return None
    envelope = Envelope.from_json(row.envelope)
    return Targets.from_payload(envelope.payload), envelope


class Catalog:
    """Publishes models: one publish at a time, so targets versions never collide."""

    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        keyring: Keyring,
        expiry: timedelta,
        max_model_bytes: int,
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.keyring = keyring
        self.expiry = expiry
        self.max_model_bytes = max_model_bytes
        self._lock = threading.Lock()

    def start_upload(
        self, name: str, version: str, length: int, evaluation_json: str = ""
    ) -> Upload:
        """Check the name, version, declared size and any variant measurements before any
        byte is accepted."""
        check_model_name(name)
        check_model_version(version)
        evaluation = parse_evaluation(evaluation_json, version)
        if not 0 < length <= self.max_model_bytes:
            raise MalformedInputError(
                f"declared length {length} is outside 1..{self.max_model_bytes} bytes"
            )
        with self.db.session() as session:
            if self._find(session, name, version) is not None:
                raise ConflictError(f"{name}@{version} is already published")
        return Upload(self, name, version, length, evaluation)

    @staticmethod
    def _find(session: Session, name: str, version: str) -> Model | None:
        return session.execute(
            select(Model).where(Model.name == name, Model.version == version)
        ).scalar_one_or_none()

    def ensure_targets(self) -> None:
        """Sign an empty targets version 1 on a new controller, so devices always get one;
        and if the newest version holds entries no device can read, sign the next one
        without them (`_repair_targets`)."""
        with self._lock, self.db.session(exclusive="targets") as session:
            row = session.execute(
                select(TargetsVersion).order_by(TargetsVersion.version.desc()).limit(1)
            ).scalar_one_or_none()
            if row is None:
                self.sign_targets(session, None)
            else:
                self._repair_targets(session, row)

    def _repair_targets(self, session: Session, row: TargetsVersion) -> None:
        """Targets signed by a release without today's checks may name a manifest that every
        device refuses, and with it the whole version: nothing would reach devices. Sign
        the next version with the readable entries only, drop the catalog rows of the
        others, and say which version and entries in the log and the audit trail."""
        payload = Envelope.from_json(row.envelope).payload
        try:
            Targets.from_payload(payload)
            return
        except MalformedInputError as e:
            reason = str(e)
        readable, dropped = readable_manifests(payload, row.version)
        version = self._sign(session, readable, row.version + 1)
        for ref in dropped:
            name, _, model_version = ref.partition("@")
            found = self._find(session, name, model_version)
            if found is not None:
                session.delete(found)
        details = {"unreadable_version": row.version, "dropped": dropped, "reason": reason[:200]}
        record_event(
            session,
            AuditEvent(
                "controller",
                "targets.repair",
                "targets",
                "success",
                {**details, "targets_version": version},
            ),
        )
        log.error("targets.repaired", targets_version=version, **details)

    def resign(self, material: TrustMaterial) -> None:
        """After a targets key rotation: the same models as a new version under the new keys."""
        with self._lock, self.db.session(exclusive="targets") as session:
            current = latest_targets(session)
            if current is None or material.vouches("targets", current[1]):
                return
            version = self.sign_targets(session, None)
            record_event(
                session,
                AuditEvent(
                    "controller",
                    "targets.resign",
                    "targets",
                    "success",
                    {"targets_version": version, "root_version": material.root.version},
                ),
            )

    def sign_targets(self, session: Session, add: ModelManifest | None) -> int:
        """Sign a new targets version that adds ``add``; return its version."""
        current = latest_targets(session)
        models = dict(current[0].models) if current else {}
        if add is not None:
            models[add.ref] = add
        return self._sign(session, models, current[0].version + 1 if current else 1)

    def _sign(self, session: Session, models: dict[str, ModelManifest], version: int) -> int:
        expires = datetime.now(UTC).replace(microsecond=0) + self.expiry
        targets = Targets(version, expires, models)
        envelope = self.keyring.current().sign("targets", targets)
        session.add(
            TargetsVersion(
                version=version, envelope=envelope.to_json(), created_at=datetime.now(UTC)
            )
        )
        return version

    def register(
        self, operator: str, manifest: ModelManifest, evaluation: dict[str, Any] | None = None
    ) -> Published:
        """Record the model and sign targets naming it, with its audit record, atomically."""
        with self._lock, self.db.session(exclusive="targets") as session:
            if self._find(session, manifest.name, manifest.version) is not None:
                raise ConflictError(f"{manifest.ref} is already published")
            session.add(
                Model(
                    name=manifest.name,
                    version=manifest.version,
                    sha256=manifest.sha256,
                    manifest=manifest.to_dict(),
                    published_at=datetime.now(UTC),
                    evaluation=evaluation,
                )
            )
            version = self.sign_targets(session, manifest)
            record_event(
                session,
                AuditEvent(
                    f"operator:{operator}",
                    "model.publish",
                    manifest.ref,
                    "success",
                    {
                        "sha256": manifest.sha256,
                        "length": manifest.length,
                        "targets_version": version,
                    },
                ),
            )
        return Published(manifest, version)

    def remove(self, operator: str, name: str, version: str, force: bool) -> RemovedVersion:
        """Take ``name@version`` out of the catalog and sign targets without it; devices
        uninstall it at their next sync. Refused while devices are assigned it, a rollout
        under way names it or a pin holds it, unless ``force``: then those assignments
        and pins go and those rollouts are aborted, all named in the audit record."""
        check_model_name(name)
        check_model_version(version)
        ref = f"{name}@{version}"
        with self._lock, self.db.session(exclusive="targets") as session:
            row = self._find(session, name, version)
            if row is None:
                raise NotFoundError(f"{ref} is not published")
            in_use = _uses(session, name, version)
            if in_use.any and not force:
                raise ConflictError(
                    f"{ref} is in use ({in_use.describe()}): pass --force to remove it anyway "
                    "(devices stop running it at their next sync)"
                )
            if force:
                in_use.release(session, f"{ref} was removed from the catalog by {operator}")
            blobs = {row.sha256, str(row.manifest.get("chunks_sha256", ""))} - {""}
            session.delete(row)
            current = latest_targets(session)
            models = {k: v for k, v in (current[0].models if current else {}).items() if k != ref}
            targets_version = self._sign(session, models, current[0].version + 1 if current else 1)
            record_event(
                session,
                AuditEvent(
                    f"operator:{operator}",
                    "model.remove",
                    ref,
                    "success",
                    {
                        "forced": force,
                        "sha256": row.sha256,
                        "targets_version": targets_version,
                        **in_use.details(),
                    },
                ),
            )
            still_used = {
                digest
                for other in session.execute(select(Model)).scalars()
                for digest in (other.sha256, str(other.manifest.get("chunks_sha256", "")))
            }
        for digest in blobs - still_used:
            self.blobs.remove(digest)
        return RemovedVersion(name, version, targets_version, in_use.devices, in_use.rollouts)


@dataclass(frozen=True)
class _Uses:
    """What holds a model version: assignments, rollouts under way, pins."""

    devices: list[str]
    rollouts: list[int]
    pins: list[int]
    # (device, model, version) of each assignment
    assignments: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def any(self) -> bool:
        return bool(self.devices or self.rollouts or self.pins)

    def describe(self) -> str:
        parts = []
        if self.devices:
            shown = ", ".join(self.devices[:3]) + (" …" if len(self.devices) > 3 else "")
            parts.append(f"assigned to {len(self.devices)} device(s): {shown}")
        if self.rollouts:
            parts.append("rollout " + ", ".join(str(r) for r in self.rollouts) + " names it")
        if self.pins:
            parts.append(f"{len(self.pins)} pin(s) hold it")
        return "; ".join(parts)

    def details(self) -> dict[str, Any]:
        return {"devices": self.devices, "rollouts": self.rollouts, "pins": len(self.pins)}

    def release(self, session: Session, reason: str) -> None:
        session.execute(delete(Pin).where(Pin.id.in_(self.pins)))
        aborted = select(Rollout).where(Rollout.id.in_(self.rollouts))
        for rollout in session.execute(aborted).scalars():
            rollout.state, rollout.reason = "aborted", reason
        session.execute(
            update(RolloutTarget)
            .where(RolloutTarget.rollout_id.in_(self.rollouts), RolloutTarget.state == "pending")
            .values(state="skipped", reason="the rollout was aborted")
        )
        for device_id, name, version in self.assignments:
            session.execute(
                delete(Assignment).where(
                    Assignment.device_id == device_id,
                    Assignment.model_name == name,
                    Assignment.version == version,
                )
            )


def _uses(session: Session, name: str, version: str) -> _Uses:
    assignments = list(
        session.execute(
            select(Assignment).where(Assignment.model_name == name, Assignment.version == version)
        ).scalars()
    )
    rollouts = session.execute(
        select(Rollout.id).where(
            Rollout.name == name,
            Rollout.version == version,
            Rollout.state.in_(("running", "paused")),
        )
    ).scalars()
    pins = session.execute(
        select(Pin.id).where(Pin.model_name == name, Pin.version == version)
    ).scalars()
    return _Uses(
        sorted(a.device_id for a in assignments),
        sorted(rollouts),
        sorted(pins),
        [(a.device_id, a.model_name, a.version) for a in assignments],
    )


class Upload:
    """One model upload in progress: bounded, hashed as it arrives, removed on failure."""

    def __init__(
        self,
        catalog: Catalog,
        name: str,
        version: str,
        length: int,
        evaluation: dict[str, Any] | None,
    ) -> None:
        self.catalog = catalog
        self.name, self.version, self.length = name, version, length
        self.evaluation = evaluation
        fd, self.path = catalog.blobs.open_incoming()
        self._file = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self._chunks = ChunkIndexBuilder(DEFAULT_CHUNK_SIZE)
        self.received = 0

    def write(self, data: bytes) -> None:
        """Append bytes; refuse anything past the declared length."""
        if self.received + len(data) > self.length:
            raise MalformedInputError(f"upload is longer than the declared {self.length} bytes")
        self._file.write(data)
        self._hash.update(data)
        self._chunks.update(data)
        self.received += len(data)

    def finish(self, operator: str) -> Published:
        """Check length and GGUF header, store the blob, and publish signed metadata."""
        try:
            if self.received != self.length:
                raise MalformedInputError(
                    f"upload ended after {self.received} of {self.length} bytes"
                )
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            info = read_gguf_file(self.path)
            sha256 = self._hash.hexdigest()
            chunks = self._chunks.finish()
            self.catalog.blobs.put_bytes(chunks.to_bytes())
            manifest = ModelManifest(
                name=self.name,
                version=self.version,
                sha256=sha256,
                length=self.length,
                architecture=info.architecture,
                parameter_count=info.parameter_count,
                quantization=info.quantization,
                context_length=info.context_length,
                kv_bytes_per_token=info.kv_bytes_per_token,
                chunk_size=chunks.chunk_size,
                chunks_sha256=chunks.sha256,
            )
            if not self.catalog.blobs.path_of(sha256).exists():
                self.catalog.blobs.commit(self.path, sha256)
            return self.catalog.register(operator, manifest, self.evaluation)
        finally:
            self.abort()

    def abort(self) -> None:
        """Drop the temporary file (no-op once committed)."""
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            Path(self.path).unlink()
