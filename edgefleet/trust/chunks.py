"""Per-chunk SHA-256 digests of a blob, so damage is located and repaired chunk by chunk.

A chunk index is itself content-addressed: its bytes are the raw 32-byte digests of the
blob's fixed-size chunks, concatenated, and the signed manifest names the index's
SHA-256. An index is therefore verified exactly like a blob, and a manifest stays small
however large the model is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from edgefleet.errors import HashMismatchError, MalformedInputError

DIGEST_BYTES = 32
DEFAULT_CHUNK_SIZE = 1024 * 1024
MIN_CHUNK_SIZE = 64 * 1024
MAX_CHUNK_SIZE = 64 * 1024 * 1024


def check_chunk_size(chunk_size: int) -> int:
    """Refuse chunk sizes that are not a power of two between 64 KiB and 64 MiB."""
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE or chunk_size & (chunk_size - 1):
        raise MalformedInputError(
            f"chunk size {chunk_size} must be a power of two from 64 KiB to 64 MiB"
        )
    return chunk_size


def chunk_count(length: int, chunk_size: int) -> int:
    """How many chunks a blob of ``length`` bytes has."""
    return -(-length // chunk_size)


def index_length(length: int, chunk_size: int) -> int:
    """The exact size in bytes of the chunk index of a ``length``-byte blob."""
    return chunk_count(length, chunk_size) * DIGEST_BYTES


def iter_chunks(handle: BinaryIO, chunk_size: int) -> Iterator[bytes]:
    """Read a file chunk by chunk (a buffered read returns fewer bytes only at the end)."""
    return iter(lambda: handle.read(chunk_size), b"")


class ChunkIndexBuilder:
    """Builds a chunk index from bytes as they arrive, in pieces of any size (an upload)."""

    def __init__(self, chunk_size: int) -> None:
        self.chunk_size = check_chunk_size(chunk_size)
        self._digests: list[bytes] = []
        self._hash = hashlib.sha256()
        self._filled = 0

    def update(self, data: bytes) -> None:
        """Add the next bytes."""
        view = memoryview(data)
        while view:
            take = min(len(view), self.chunk_size - self._filled)
            self._hash.update(view[:take])
            self._filled += take
            view = view[take:]
            if self._filled == self.chunk_size:
                self._digests.append(self._hash.digest())
                self._hash, self._filled = hashlib.sha256(), 0

    def finish(self) -> ChunkIndex:
        """The index of everything added."""
        if self._filled:
            self._digests.append(self._hash.digest())
            self._hash, self._filled = hashlib.sha256(), 0
        return ChunkIndex(self.chunk_size, tuple(self._digests))


class ChunkChecker:
    """Checks a blob's bytes against its index as they arrive, in pieces of any size,
    without copying them (a download: each chunk is hashed piece by piece)."""

    def __init__(
        self, index: ChunkIndex, length: int, first: int, received: bytes | memoryview = b""
    ) -> None:
        """Start at chunk ``first``, of which ``received`` bytes have arrived already."""
        self.index, self.length, self.number = index, length, first
        self._hash = hashlib.sha256(received)
        self._filled = len(received)

    def update(self, data: bytes | memoryview) -> int | None:
        """Add the next bytes; return the number of a chunk they complete that does not
        match the index (None when every completed chunk matches)."""
        view = memoryview(data)
        while view:
            size = self.index.span(self.number, self.length)[1]
            take = min(len(view), size - self._filled)
            self._hash.update(view[:take])
            self._filled += take
            view = view[take:]
            if self._filled == size:
                if not self.index.has_digest(self.number, self._hash.digest()):
                    return self.number
                self.number += 1
                self._hash, self._filled = hashlib.sha256(), 0
        return None


@dataclass(frozen=True)
class ChunkIndex:
    """The digests of a blob's chunks, in order."""

    chunk_size: int
    digests: tuple[bytes, ...]

    def to_bytes(self) -> bytes:
        """The content-addressed form: raw digests concatenated."""
        return b"".join(self.digests)

    @property
    def sha256(self) -> str:
        """The name of the index in a manifest and in a blob store."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def from_bytes(cls, data: bytes, chunk_size: int, length: int) -> ChunkIndex:
        """Parse an index for a blob of ``length`` bytes (its digest is checked by the caller)."""
        expected = index_length(length, check_chunk_size(chunk_size))
        if len(data) != expected:
            raise HashMismatchError(
                f"chunk index has {len(data)} bytes, a {length}-byte blob needs {expected}"
            )
        digests = tuple(data[i : i + DIGEST_BYTES] for i in range(0, len(data), DIGEST_BYTES))
        return cls(chunk_size, digests)

    @classmethod
    def of_chunks(cls, chunks: Iterable[bytes], chunk_size: int) -> ChunkIndex:
        """Build the index of a blob given as consecutive chunks."""
        return cls(chunk_size, tuple(hashlib.sha256(c).digest() for c in chunks))

    @classmethod
    def of_file(cls, path: Path, chunk_size: int) -> ChunkIndex:
        """Build the index of a file."""
        with path.open("rb") as handle:
            return cls.of_chunks(iter_chunks(handle, chunk_size), chunk_size)

    def span(self, number: int, length: int) -> tuple[int, int]:
        """(offset, size) of chunk ``number`` in a blob of ``length`` bytes."""
        offset = number * self.chunk_size
        return offset, min(self.chunk_size, length - offset)

    def matches(self, number: int, data: bytes | memoryview) -> bool:
        """Tell whether ``data`` is chunk ``number``."""
        return self.has_digest(number, hashlib.sha256(data).digest())

    def has_digest(self, number: int, digest: bytes) -> bool:
        """Tell whether chunk ``number``'s digest is ``digest``."""
        return 0 <= number < len(self.digests) and digest == self.digests[number]

    def bad_chunks(self, path: Path) -> list[int]:
        """Numbers of the chunks of ``path`` that differ from the index or are missing.

        The caller checks the file's total length; bytes past the last chunk are not read.
        """
        bad: list[int] = []
        with path.open("rb") as handle:
            chunks = iter_chunks(handle, self.chunk_size)
            for number in range(len(self.digests)):
                if not self.matches(number, next(chunks, b"")):
                    bad.append(number)
        return bad

    def verified_prefix(self, path: Path, on_chunk: Callable[[bytes], object] | None = None) -> int:
        """Bytes at the start of ``path`` made of whole chunks that match (a resume point);
        ``on_chunk`` sees each of those chunks in order."""
        good = 0
        last = len(self.digests) - 1
        with path.open("rb") as handle:
            for number, data in enumerate(iter_chunks(handle, self.chunk_size)):
                complete = len(data) == self.chunk_size or number == last
                if number > last or not complete or not self.matches(number, data):
                    break
                if on_chunk is not None:
                    on_chunk(data)
                good += len(data)
        return good
