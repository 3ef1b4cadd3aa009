"""The agent's content-addressed blob store: verified blobs, downloads, quarantine.

``sha256/<hex>`` holds verified read-only blobs (models and their chunk indexes),
``partial/<hex>.partial`` holds downloads and repairs in progress (never served; checked
chunk by chunk before they are committed), ``quarantine/<hex>`` holds blobs found damaged,
kept so a repair re-fetches only their bad chunks and never served, ``locks/<hex>`` lets
one process at a time fetch a blob.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from edgefleet.errors import ConflictError, HashMismatchError, MalformedInputError
from edgefleet.files import fsync_directory, publish_read_only, sha256_of_file
from edgefleet.trust.chunks import ChunkIndex
from edgefleet.trust.metadata import SHA256_PATTERN, ModelManifest


class BlobStore:
    """Named paths and the few moves between them."""

    def __init__(self, root: Path) -> None:
        self.objects = root / "sha256"
        self.partials = root / "partial"
        self.quarantine = root / "quarantine"
        self.locks = root / "locks"
        for folder in (self.objects, self.partials, self.quarantine, self.locks):
            folder.mkdir(parents=True, exist_ok=True)

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

    def quarantined_of(self, sha256: str) -> Path:
        """Where it is kept once found damaged."""
        return self.quarantine / self._check(sha256)

    def has(self, sha256: str, length: int) -> bool:
        """Tell whether a blob of the expected length is present."""
        path = self.path_of(sha256)
        return path.exists() and path.stat().st_size == length

    @contextlib.contextmanager
    def claim(self, sha256: str) -> Iterator[None]:
        """The exclusive right to fetch or repair this blob, across processes (the running
        agent and a command-line `models repair` or `import`)."""
        fd = os.open(self.locks / self._check(sha256), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            os.close(fd)
            raise ConflictError(f"blob {sha256[:16]}… is being fetched by another process") from e
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def commit(self, sha256: str) -> Path:
        """Move a completely verified download into the store."""
        final = publish_read_only(self.partial_of(sha256), self.path_of(sha256))
        with contextlib.suppress(FileNotFoundError):
            self.quarantined_of(sha256).unlink()
        return final

    def put_verified(self, sha256: str, data: bytes) -> Path:
        """Store a small blob already checked against ``sha256`` (a chunk index)."""
        partial = self.partial_of(sha256)
        partial.write_bytes(data)
        return self.commit(sha256)

    def quarantine_blob(self, sha256: str) -> Path | None:
        """Take a damaged blob out of service; return where it went (None if absent)."""
        source, target = self.path_of(sha256), self.quarantined_of(sha256)
        try:
            os.replace(source, target)
        except FileNotFoundError:
            return None
        fsync_directory(self.objects)
        return target

    def remove(self, sha256: str) -> None:
        """Delete a blob nothing installed uses any more (its space goes back)."""
        with contextlib.suppress(FileNotFoundError):
            self.path_of(sha256).unlink()
            fsync_directory(self.objects)

    def discard_partial(self, sha256: str) -> None:
        """Drop a download that failed verification."""
        with contextlib.suppress(FileNotFoundError):
            self.partial_of(sha256).unlink()

    def chunk_index(self, manifest: ModelManifest) -> ChunkIndex | None:
        """The stored, verified chunk index of ``manifest`` (None when missing or damaged)."""
        path = self.path_of(manifest.chunks_sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            index = ChunkIndex.from_bytes(data, manifest.chunk_size, manifest.length)
        except HashMismatchError:
            index = None
        if index is None or index.sha256 != manifest.chunks_sha256:
            self.quarantine_blob(manifest.chunks_sha256)
            return None
        return index

    def whole_file_matches(self, path: Path, manifest: ModelManifest) -> bool:
        """Full SHA-256 of a file against its manifest."""
        return path.stat().st_size == manifest.length and sha256_of_file(path) == manifest.sha256
