"""The controller's tables (SQLAlchemy 2.0 declarative)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, validates

from edgefleet.controller.store.records import Record, RecordList, as_record, as_records
from edgefleet.fleet import (
    BenchResult,
    DeviceResources,
    DownloadProgress,
    InstalledModel,
    ModelHealth,
)


class Base(DeclarativeBase):
    """Declarative base of every controller table."""


class EnrollmentToken(Base):
    """A one-time enrollment token, stored only as its hash."""

    __tablename__ = "enrollment_tokens"
    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    labels: Mapped[dict[str, str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    device_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Set by `edgefleetctl token revoke`: the token enrolls nothing from then on.
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Device(Base):
    """An enrolled (or pending) device and what it last reported."""

    __tablename__ = "devices"
    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    labels: Mapped[dict[str, str]] = mapped_column(JSON)
    # pending | active | rejected | revoked
    state: Mapped[str] = mapped_column(String(16), default="active")
    key_fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    certificate_serial: Mapped[str] = mapped_column(String(64))
    # The serial before the last renewal, accepted until the device uses the new one.
    previous_serial: Mapped[str] = mapped_column(String(64), default="")
    audit_public_key: Mapped[str] = mapped_column(String(64))
    enrolled_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    agent_version: Mapped[str] = mapped_column(String(64), default="")
    installed: Mapped[tuple[InstalledModel, ...]] = mapped_column(
        RecordList(InstalledModel), default=tuple
    )
    last_error: Mapped[str] = mapped_column(String(1024), default="")
    bench: Mapped[tuple[BenchResult, ...]] = mapped_column(RecordList(BenchResult), default=tuple)
    downloads: Mapped[tuple[DownloadProgress, ...]] = mapped_column(
        RecordList(DownloadProgress), default=tuple
    )
    data_used_today: Mapped[int] = mapped_column(BigInteger, default=0)
    daily_data_budget: Mapped[int] = mapped_column(BigInteger, default=0)
    # edgefleet.fleet.DeviceResources as last reported (memory, disk, machine).
    resources: Mapped[DeviceResources] = mapped_column(
        Record(DeviceResources), default=DeviceResources
    )
    # The highest audit sequence number the device reported writing.
    audit_head_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    # edgefleet.fleet.ModelHealth of each installed version, as last reported.
    health: Mapped[tuple[ModelHealth, ...]] = mapped_column(RecordList(ModelHealth), default=tuple)
    # The network address an enrollment came from (pending devices are limited per source).
    enrolled_from: Mapped[str] = mapped_column(String(64), default="", index=True)
    # When the current certificate was issued (renewals wait for half its lifetime).
    certificate_issued_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )

    @validates("installed", "bench", "downloads", "health")
    def _records(self, key: str, value: Any) -> tuple[Any, ...]:
        """Reports are dataclasses as soon as they are assigned, not only once stored."""
        return as_records(REPORT_RECORDS[key], value)

    @validates("resources")
    def _resources(self, key: str, value: Any) -> DeviceResources:
        return as_record(DeviceResources, value)


REPORT_RECORDS: dict[str, type[Any]] = {
    "installed": InstalledModel,
    "bench": BenchResult,
    "downloads": DownloadProgress,
    "health": ModelHealth,
}


class Operator(Base):
    """A person or tool that operates the controller, with one role."""

    __tablename__ = "operators"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(64))
    certificate_serial: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Preauthorization(Base):
    """A device TLS key allowed to enroll without a token, with the labels it gets."""

    __tablename__ = "preauthorizations"
    key_fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    labels: Mapped[dict[str, str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_by: Mapped[str] = mapped_column(String(64), default="")


class PolicyVersion(Base):
    """Every signed policy version; the newest is served to devices and enforced here."""

    __tablename__ = "policy_versions"
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    envelope: Mapped[bytes] = mapped_column(LargeBinary)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Model(Base):
    """A published model version and its signed manifest fields."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("name", "version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    manifest: Mapped[dict[str, object]] = mapped_column(JSON)
    published_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # A quantized variant's measurements (edgefleet.controller.catalog.quantization.family);
    # None otherwise.
    evaluation: Mapped[dict[str, object] | None] = mapped_column(JSON, nullable=True)


class TargetsVersion(Base):
    """Every signed targets metadata version, newest served to devices."""

    __tablename__ = "targets_versions"
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    envelope: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class TimestampVersion(Base):
    """Every signed timestamp: the targets and policy versions devices are to trust now."""

    __tablename__ = "timestamp_versions"
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    envelope: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Rollout(Base):
    """An operator's request to run a model version on matching devices."""

    __tablename__ = "rollouts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(64))
    selector: Mapped[dict[str, str]] = mapped_column(JSON)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # ``version`` is a release published as quantized variants: devices get the best fit.
    family: Mapped[bool] = mapped_column(Boolean, default=False)
    # running | paused | halted | completed | aborted | rolled_back
    state: Mapped[str] = mapped_column(String(16), default="running", index=True)
    # edgefleet.controller.rollouts.strategy.Strategy as a dict: canary, waves, soak and gates.
    strategy: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
    waves: Mapped[int] = mapped_column(Integer, default=1)
    current_wave: Mapped[int] = mapped_column(Integer, default=0)
    # When every device of the current wave was first seen healthy (the soak starts).
    wave_healthy_since: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )
    # Why it halted, or who paused, aborted or rolled it back.
    reason: Mapped[str] = mapped_column(String(1024), default="")


class Assignment(Base):
    """Which version of a model a device should run."""

    __tablename__ = "assignments"
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.device_id"), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[str] = mapped_column(String(64))
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id"))
    # The release of a model family this device gets the best fitting variant of ("" when
    # the rollout named one exact version); ``version`` is the variant picked.
    family: Mapped[str] = mapped_column(String(64), default="")


class RolloutTarget(Base):
    """One device of a rollout: its wave, what it gets, and how it did."""

    __tablename__ = "rollout_targets"
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id"), primary_key=True)
    # Indexed on its own too: each device's report looks up its rollouts.
    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.device_id"), primary_key=True, index=True
    )
    wave: Mapped[int] = mapped_column(Integer)
    # The version assigned (for a model family: the variant picked when assigned).
    version: Mapped[str] = mapped_column(String(64), default="")
    # The device's assignment before this rollout ("" none): where a rollback returns it.
    previous_version: Mapped[str] = mapped_column(String(64), default="")
    # Smoke-test tokens/s of the version the device ran before (0: unknown).
    baseline_tokens_per_second: Mapped[float] = mapped_column(Float, default=0.0)
    # pending | assigned | healthy | failed | rolled_back
    state: Mapped[str] = mapped_column(String(16), default="pending")
    reason: Mapped[str] = mapped_column(String(1024), default="")
    assigned_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # The device report (its last_seen) this state was judged from.
    judged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Pin(Base):
    """A model held at one version on one device, or on the devices a selector matches."""

    __tablename__ = "pins"
    __table_args__ = (UniqueConstraint("model_name", "device_id", "selector_key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[str] = mapped_column(String(64))
    # Either one device ("" otherwise) or a label selector (empty otherwise).
    device_id: Mapped[str] = mapped_column(String(64), default="")
    selector: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    # The selector as canonical text, so that one selector holds one pin per model.
    selector_key: Mapped[str] = mapped_column(String(512), default="")
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AuditRecordRow(Base):
    """One audit record of one chain (a device's, or the controller's own), stored verbatim."""

    __tablename__ = "audit_records"
    chain: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    canonical: Mapped[bytes] = mapped_column(LargeBinary)
    record_sha256: Mapped[str] = mapped_column(String(64))
    # The record's own time (YYYY-MM-DDTHH:MM:SSZ), for queries and exports by time range.
    recorded_at: Mapped[str] = mapped_column(String(20), index=True)
    actor: Mapped[str] = mapped_column(String(128), index=True, default="")
    action: Mapped[str] = mapped_column(String(64), index=True, default="")
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AuditCheckpointRow(Base):
    """A device-signed checkpoint, kept once it matched the stored record it names."""

    __tablename__ = "audit_checkpoints"
    chain: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    envelope: Mapped[bytes] = mapped_column(LargeBinary)


class AuditAlert(Base):
    """A range of a chain the controller found tampered with, and who cleared it, if anyone.

    The records stay stored (they are the evidence); exports carry the alert, and verifying
    them fails while it stands (a cleared alert still qualifies the range)."""

    __tablename__ = "audit_alerts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    chain: Mapped[str] = mapped_column(String(64), index=True)
    first_seq: Mapped[int] = mapped_column(Integer)
    last_seq: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(1024))
    detected_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    cleared_by: Mapped[str] = mapped_column(String(128), default="")
    cleared_reason: Mapped[str] = mapped_column(String(1024), default="")
    cleared_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AuditHead(Base):
    """The last verified record of each chain, and whether tampering was seen."""

    __tablename__ = "audit_heads"
    chain: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_seq: Mapped[int] = mapped_column(Integer, default=0)
    last_sha256: Mapped[str] = mapped_column(String(64))
    tamper_alert: Mapped[bool] = mapped_column(Boolean, default=False)
    tamper_reason: Mapped[str] = mapped_column(String(1024), default="")
