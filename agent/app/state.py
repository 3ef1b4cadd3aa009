"""The agent's local stores (database, audit log, blobs, registry), opened from its data
directory: what `run` serves from and what the command line inspects and repairs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgefleet.agent.app.database import AgentDatabase
from edgefleet.agent.app.paths import AgentPaths
from edgefleet.agent.audit.log import AuditLog
from edgefleet.agent.registry.blobs import BlobStore
from edgefleet.agent.registry.registry import Registry


@dataclass
class LocalState:
    """The agent's local stores, opened from its data directory."""

    paths: AgentPaths
    db: AgentDatabase
    audit: AuditLog
    blobs: BlobStore
    registry: Registry

    @classmethod
    def open(cls, data_dir: Path) -> LocalState:
        """Open the stores of an enrolled device."""
        paths = AgentPaths(data_dir)
        enrollment = paths.identity.load()
        db = AgentDatabase(paths.database)
        audit = AuditLog(db, enrollment.device_id)
        blobs = BlobStore(paths.blobs)
        return cls(paths, db, audit, blobs, Registry(db, blobs, audit))
