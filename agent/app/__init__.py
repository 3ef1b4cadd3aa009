"""The agent's composition: configuration, local stores, the `run` service."""

from pathlib import Path

# Where the agent keeps its state unless told otherwise (the systemd unit's StateDirectory).
DEFAULT_DATA_DIR = Path("/var/lib/edgefleet-agent")
