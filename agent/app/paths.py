"""Where the agent keeps things under its data directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgefleet.agent.enrollment.identity import IdentityFiles


@dataclass(frozen=True)
class AgentPaths:
    """Where the agent keeps things under its data directory."""

    data_dir: Path

    @property
    def identity(self) -> IdentityFiles:
        return IdentityFiles(self.data_dir / "identity")

    @property
    def database(self) -> Path:
        return self.data_dir / "agent.db"

    @property
    def blobs(self) -> Path:
        return self.data_dir / "blobs"
