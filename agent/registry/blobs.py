"""The agent's content-addressed blob store, with resumable ``.partial`` downloads."""

from __future__ import annotations

import contextlib
from pathlib import Path

from edgefleet.errors import MalformedInputError
from edgefleet.files import publish_read_only
from edgefleet.trust.metadata import SHA256_PATTERN


class BlobStore:
    """``sha256/<hex>`` holds verified read-only blobs; ``partial/`` holds downloads."""

    def __init__(self, root: Path) -> None:
        self.objects = root / "sha256"
        self.partials = root / "partial"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.partials.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _check(sha256: str) -> str:
        if not SHA256_PATTERN.match(sha256):
            raise MalformedInputError("blob name is not a hex SHA-256")
        return sha256

    def path_of(self, sha256: str) -> Path:
        """Where the verified blob lives (it may not exist)."""
        return self.objects / self._check(sha256)

    def partial_of(self, sha256: str) -> Path:
        """Where its in-progress download lives."""
        return self.partials / f"{self._check(sha256)}.partial"

    def has(self, sha256: str, length: int) -> bool:
        """Tell whether a blob of the expected length is present."""
        path = self.path_of(sha256)
        return path.exists() and path.stat().st_size == length

    def commit(self, sha256: str) -> Path:
        """Move a completely verified download into the store."""
        return publish_read_only(self.partial_of(sha256), self.path_of(sha256))

    def discard_partial(self, sha256: str) -> None:
        """Drop a download that failed verification."""
        with contextlib.suppress(FileNotFoundError):
            self.partial_of(sha256).unlink()
