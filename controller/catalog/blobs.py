"""Content-addressed blob storage on the controller: ``blobs/sha256/<hex>``, read-only."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edgefleet.errors import MalformedInputError, NotFoundError, StorageError
from edgefleet.files import publish_read_only
from edgefleet.trust.metadata import SHA256_PATTERN


class BlobStore:
    """Stores blobs under their SHA-256; a blob is visible only once complete and fsynced."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.incoming = root / "incoming"
        self.objects = root / "sha256"
        self.incoming.mkdir(parents=True, exist_ok=True)
        self.objects.mkdir(parents=True, exist_ok=True)

    def path_of(self, sha256: str) -> Path:
        """Where the blob named ``sha256`` lives (it may not exist)."""
        if not SHA256_PATTERN.match(sha256):
            raise MalformedInputError("blob name is not a hex SHA-256")
        return self.objects / sha256

    def open_incoming(self) -> tuple[int, Path]:
        """A new temporary file for an upload: (fd, path)."""
        fd, name = tempfile.mkstemp(dir=self.incoming, suffix=".partial")
        return fd, Path(name)

    def commit(self, temporary: Path, sha256: str) -> Path:
        """Make a fully written temporary file visible under its digest (atomic rename)."""
        return publish_read_only(temporary, self.path_of(sha256))

    def remove(self, sha256: str) -> None:
        """Delete a blob no published version uses any more."""
        with contextlib.suppress(FileNotFoundError):
            self.path_of(sha256).unlink()

    def put_bytes(self, data: bytes) -> str:
        """Store a small blob (a chunk index) under its digest; return the digest."""
        sha256 = hashlib.sha256(data).hexdigest()
        if self.path_of(sha256).exists():
            return sha256
        fd, path = self.open_incoming()
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return self.commit(path, sha256).name

    def read_all(self, sha256: str) -> bytes:
        """A small blob's bytes (a chunk index)."""
        try:
            return self.path_of(sha256).read_bytes()
        except FileNotFoundError as e:
            raise NotFoundError(f"blob {sha256[:16]}… is not stored") from e

    def read(self, sha256: str, offset: int, limit: int, chunk: int) -> Iterator[tuple[int, bytes]]:
        """Yield (offset, bytes) chunks from ``offset``; ``limit`` 0 reads to the end."""
        path = self.path_of(sha256)
        try:
            size = path.stat().st_size
            handle = path.open("rb")
        except FileNotFoundError as e:
            raise NotFoundError(f"blob {sha256[:16]}… is not stored") from e
        except OSError as e:
            raise StorageError(f"cannot read blob {sha256[:16]}…: {e.strerror}") from e
        if offset > size:
            handle.close()
            raise MalformedInputError(f"offset {offset} is past the blob's {size} bytes")
        end = size if limit == 0 else min(size, offset + limit)
        with handle:
            handle.seek(offset)
            position = offset
            while position < end:
                data = handle.read(min(chunk, end - position))
                if not data:
                    raise StorageError(f"blob {sha256[:16]}… shrank while being read")
                yield position, data
                position += len(data)
