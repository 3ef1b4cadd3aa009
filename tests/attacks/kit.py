"""A device (real registry, blob store, audit log and sync worker) facing a scripted controller.

The controller is whatever the test makes it: it signs with the fleet's keys or with
stolen or rogue ones, serves the right bytes or arbitrary, endless or stalled ones. The
device runs the production code paths (:class:`edgefleet.agent.sync.worker.Syncer`), so every
refusal below is the one a real gateway would make.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from edgefleet.agent.app.config import AgentConfig
from edgefleet.agent.app.database import AgentDatabase
from edgefleet.agent.audit.log import AuditLog
from edgefleet.agent.registry.blobs import BlobStore
from edgefleet.agent.registry.registry import Registry
from edgefleet.agent.sync.state import LAST_ERROR_KEY
from edgefleet.agent.sync.worker import Syncer, SyncHooks
from edgefleet.fleet import DesiredState, ModelAssignment, StatusReport
from edgefleet.gguf import read_gguf_file
from edgefleet.rbac import Policy
from edgefleet.trust.chunks import MIN_CHUNK_SIZE, ChunkIndex
from edgefleet.trust.envelope import Envelope, sign_envelope
from edgefleet.trust.keys import SigningKey
from edgefleet.trust.metadata import (
    POLICY_TYPE,
    TARGETS_TYPE,
    TIMESTAMP_TYPE,
    MetaRef,
    ModelManifest,
    Targets,
    Timestamp,
)
from edgefleet.trust.verifier import TrustedState, root_fingerprint
from tests.edgefleet.trustkit import Fleet
from tests.ggufkit import write_tiny_gguf

CHUNK = MIN_CHUNK_SIZE  # 64 KiB: several chunks per test model
DEVICE = "dev-attacked"


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@dataclass
class Model:
    """A model file and its signed manifest."""

    manifest: ModelManifest
    data: bytes
    index: bytes


def make_model(folder: Path, name: str, version: str, seed: int, rows: int = 24_000) -> Model:
    """A valid GGUF file (about ``rows`` × 16 bytes) with its manifest and chunk index."""
    path = write_tiny_gguf(folder / f"{name}-{version}.gguf", seed=seed, rows=rows)
    data = path.read_bytes()
    info = read_gguf_file(path)
    index = ChunkIndex.of_file(path, CHUNK)
    manifest = ModelManifest(
        name,
        version,
        hashlib.sha256(data).hexdigest(),
        len(data),
        info.architecture,
        info.parameter_count,
        info.quantization,
        info.context_length,
        info.kv_bytes_per_token,
        CHUNK,
        index.sha256,
    )
    return Model(manifest, data, index.to_bytes())


@dataclass
class Controller:
    """A scripted controller: the metadata it serves and how it serves bytes."""

    fleet: Fleet
    root_chain: list[Envelope]
    models: dict[str, Model] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    assignments: list[ModelAssignment] = field(default_factory=list)
    targets_version: int = 0
    timestamp_version: int = 0
    policy_version: int = 0
    targets: Envelope | None = None
    timestamp: Envelope | None = None
    policy: Envelope | None = None
    # Serving behaviour
    endless: str = ""  # the blob served without end
    stall_after: int | None = None
    bytes_served: int = 0
    reads: list[tuple[str, int, int]] = field(default_factory=list)

    # --- signing, as an honest controller would --------------------------------------
    def sign_targets(
        self,
        models: Sequence[Model],
        version: int | None = None,
        signers: list[SigningKey] | None = None,
    ) -> Envelope:
        self.targets_version = version or self.targets_version + 1
        payload = Targets(
            self.targets_version,
            now() + timedelta(days=30),
            {m.manifest.ref: m.manifest for m in models},
        ).to_payload()
        return sign_envelope(
            TARGETS_TYPE,
            payload,
            signers or self.fleet.role_keys("targets")[: self.threshold("targets")],
        )

    def threshold(self, role: str) -> int:
        return self.fleet.thresholds.get(role, 1)

    def sign_policy(self, version: int | None = None) -> Envelope:
        self.policy_version = version or self.policy_version + 1
        policy = Policy(
            self.policy_version,
            {"reader": frozenset({"models.read"})},
            expires=now() + timedelta(days=30),
        )
        return sign_envelope(POLICY_TYPE, policy.to_payload(), [self.fleet.keys["policy"]])

    def sign_timestamp(
        self,
        targets: Envelope,
        policy: Envelope | None,
        version: int | None = None,
        expires: datetime | None = None,
        signers: list[SigningKey] | None = None,
    ) -> Envelope:
        self.timestamp_version = version or self.timestamp_version + 1
        payload = Timestamp(
            self.timestamp_version,
            expires or now() + timedelta(days=1),
            MetaRef.of(targets.payload),
            MetaRef.of(policy.payload) if policy else None,
        ).to_payload()
        return sign_envelope(TIMESTAMP_TYPE, payload, signers or [self.fleet.keys["timestamp"]])

    def publish(self, *models: Model, with_policy: bool = False) -> None:
        """Sign new targets naming every model so far, and a timestamp naming them."""
        for model in models:
            self.models[model.manifest.ref] = model
            self.blobs[model.manifest.sha256] = model.data
            self.blobs[model.manifest.chunks_sha256] = model.index
        self.targets = self.sign_targets(list(self.models.values()))
        if with_policy:
            self.policy = self.sign_policy()
        self.timestamp = self.sign_timestamp(self.targets, self.policy)

    def assign(self, ref: str) -> None:
        name, version = ref.split("@")
        self.assignments = [a for a in self.assignments if a.name != name]
        self.assignments.append(ModelAssignment(name, version))

    # --- the device-facing API -------------------------------------------------------
    async def sync(self, report: StatusReport) -> DesiredState:
        assert self.timestamp is not None and self.targets is not None
        return DesiredState(
            root_chain=tuple(self.root_chain),
            timestamp=self.timestamp,
            targets=self.targets,
            assignments=tuple(self.assignments),
            policy=self.policy,
        )

    async def read_blob(
        self, sha256: str, offset: int, limit: int = 0
    ) -> AsyncIterator[tuple[int, bytes]]:
        self.reads.append((sha256, offset, limit))
        data = self.blobs[sha256]
        end = len(data) if limit == 0 else min(len(data), offset + limit)
        position = offset
        endless = sha256 == self.endless
        while position < end or endless:
            if self.stall_after is not None and self.bytes_served >= self.stall_after:
                await asyncio.sleep(3600)
            piece = (
                data[position : min(position + CHUNK // 2, end)]
                if position < end
                else b"\0" * (CHUNK // 2)
            )
            self.bytes_served += len(piece)
            yield position, piece
            position += len(piece)

    async def push_audit(self, records: object, checkpoints: object = ()) -> tuple[int, None]:
        return 0, None


@dataclass
class Device:
    """The device under attack: production registry and sync worker in a temp dir."""

    folder: Path
    controller: Controller
    fingerprint: str
    config: AgentConfig
    db: AgentDatabase
    audit: AuditLog
    blobs: BlobStore
    registry: Registry
    syncer: Syncer

    def sync(self) -> str:
        """One sync pass; the error it ended with ('' when none)."""
        asyncio.run(self.syncer.run_once())
        return self.db.get_state(LAST_ERROR_KEY)

    def audit_records(self) -> list[dict[str, Any]]:
        self.audit.flush()
        return [json.loads(r) for r in self.audit.all_records()]

    def refusals(self) -> list[tuple[str, str, str, str]]:
        """(action, target, outcome, error class) of every refusal audited."""
        return [
            (r["action"], r["target"], r["outcome"], r["details"].get("error", ""))
            for r in self.audit_records()
            if r["outcome"] != "success"
        ]

    def active(self, name: str) -> str | None:
        return self.registry.active_version(name)

    def serving_intact(self, ref: str) -> bool:
        """``ref`` is active and its stored file still verifies in full."""
        name, version = ref.split("@")
        manifest = next(m for m in self.registry.manifests() if m.ref == ref)
        return self.active(name) == version and self.registry.verify(manifest, "full").ok

    def close(self) -> None:
        self.audit.flush()
        self.db.dispose()


def make_device(folder: Path, fleet: Fleet | None = None, **config: object) -> Device:
    """A device enrolled in ``fleet`` (root v1 pinned), with an honest controller."""
    fleet = fleet or Fleet()
    root_v1 = fleet.sign_root(
        fleet.root(expires=now() + timedelta(days=365)), *fleet.role_keys("root")
    )
    controller = Controller(fleet, [root_v1])
    fingerprint = root_fingerprint(root_v1)
    db = AgentDatabase(folder / "agent.db")
    audit = AuditLog(db, DEVICE)
    blobs = BlobStore(folder / "blobs")
    registry = Registry(db, blobs, audit)
    registry.save_trust(TrustedState.bootstrap(fingerprint, [root_v1], now()))
    settings: dict[str, object] = {"download_stall_seconds": 2, "memory_budget_bytes": 2**34}
    settings.update(config)
    agent_config = AgentConfig(data_dir=folder, **settings)  # type: ignore[arg-type]
    trust = registry.load_trust(fingerprint)
    hooks = SyncHooks(reload_trust=lambda: registry.load_trust(fingerprint))
    syncer = Syncer(agent_config, controller, registry, blobs, audit, trust, hooks)  # type: ignore[arg-type]
    return Device(folder, controller, fingerprint, agent_config, db, audit, blobs, registry, syncer)


def with_v1_serving(device: Device) -> Model:
    """Publish m@1, assign it, sync: the state every attack starts from."""
    model = make_model(device.folder, "m", "1", seed=1)
    device.controller.publish(model)
    device.controller.assign("m@1")
    assert device.sync() == ""
    assert device.active("m") == "1"
    return model


def newer(device: Device, version: str = "2", seed: int = 2) -> Model:
    """A second version of m."""
    return make_model(device.folder, "m", version, seed=seed)
