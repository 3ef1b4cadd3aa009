"""Getting a blob onto the device: resumable, verified chunk by chunk, bounded, repairable.

A source is anything that streams a blob from an offset — the controller over gRPC, a
bundle file. Nothing from a source is trusted: the chunk index is checked against the
signed manifest, every chunk against the index before it is written, the whole file
against the manifest's SHA-256 before it is committed, and a source that sends more than
the manifest's length is cut off before the excess is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from edgefleet.agent.registry.blobs import BlobStore
from edgefleet.agent.sync.metering import Meter
from edgefleet.errors import HashMismatchError, MalformedInputError, TransportError
from edgefleet.files import sha256_of_file
from edgefleet.gguf import read_gguf_file
from edgefleet.trust.chunks import ChunkChecker, ChunkIndex, index_length
from edgefleet.trust.digest import BoundedDigest
from edgefleet.trust.metadata import ModelManifest

# Received bytes go to the file in writes of at most this size. With 1 MiB writes the
# kernel's copy into the page cache (copy_folio_from_iter_atomic; likely large folios on
# this 6.x kernel and ext4) took 35-42 % of the agent's CPU samples: benchmarks/transfer.py
# measured 2.8-3.8 s of agent CPU per GB with 1 MiB writes, 1.95 with 64 KiB (the size
# the HTTP path's reads have).
WRITE_BYTES = 64 * 1024

# A piece of a blob as a source yields it: bytes, or a view into a received message.
Chunk = bytes | memoryview


class BlobSource(Protocol):
    """Streams ``(offset, bytes)`` of a blob from ``offset`` (``limit`` 0: to the end)."""

    def read_blob(
        self, sha256: str, offset: int, limit: int = 0
    ) -> AsyncIterator[tuple[int, Chunk]]:
        """The blob's bytes, in order."""
        ...


@dataclass
class Transfer:
    """What one fetch moved: bytes received from the source and chunks written."""

    bytes_received: int = 0
    chunks_written: int = 0
    repaired_chunks: tuple[int, ...] = ()


def _resume_point(partial: Path, index: ChunkIndex, length: int) -> tuple[int, bytes]:
    """(verified bytes, the unfinished chunk after them) of a ``.partial`` file.

    Whole chunks at the start that match the index count as verified; the bytes of a
    chunk still being received are kept (checked once it is complete); a complete
    chunk that does not match, and anything after it, is cut off.
    """
    good = index.verified_prefix(partial)
    tail_length = partial.stat().st_size - good
    with partial.open("r+b") as handle:
        if 0 < tail_length < min(index.chunk_size, length - good):
            handle.seek(good)
            return good, handle.read()
        handle.truncate(good)
    return good, b""


class ProgressSink(Protocol):
    """Who hears how a download goes: the sync's board (status reports), or a command's
    progress bar."""

    def update(self, manifest: ModelManifest, received: int) -> None: ...


class Fetcher:
    """Downloads and repairs blobs into a :class:`BlobStore`."""

    def __init__(
        self,
        blobs: BlobStore,
        stall_seconds: float,
        meter: Meter | None = None,
        board: ProgressSink | None = None,
    ) -> None:
        self.blobs = blobs
        self.stall_seconds = stall_seconds
        self.meter = meter  # transfer windows, bandwidth cap, daily budget
        self.board = board  # progress for status reports

    async def _stream(
        self, source: BlobSource, sha256: str, offset: int, limit: int, transfer: Transfer
    ) -> AsyncGenerator[tuple[int, Chunk], None]:
        """The source's chunks, checked for order; a stall past the timeout is abandoned."""
        stream = source.read_blob(sha256, offset, limit)
        expected = offset
        try:
            while True:
                try:
                    async with asyncio.timeout(self.stall_seconds):  # not wait_for: see watch
                        item = await anext(stream, None)
                except TimeoutError as e:
                    raise TransportError(
                        f"blob {sha256[:16]}… stalled: nothing received for "
                        f"{self.stall_seconds:g} s at byte {expected}; it resumes at the next sync"
                    ) from e
                if item is None:
                    return
                at, data = item
                if at != expected:
                    raise MalformedInputError(f"chunk at offset {at}, expected {expected}")
                transfer.bytes_received += len(data)
                expected += len(data)
                if self.meter is not None:
                    await self.meter.took(len(data))  # counted and paced
                yield at, data  # bytes paid for are kept, then the transfer may pause
                if self.meter is not None:
                    self.meter.check()
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    async def chunk_index(self, source: BlobSource, manifest: ModelManifest) -> ChunkIndex:
        """The manifest's chunk index: from the store, or fetched and verified."""
        index = await asyncio.to_thread(self.blobs.chunk_index, manifest)
        if index is not None:
            return index
        length = index_length(manifest.length, manifest.chunk_size)
        digest = BoundedDigest(manifest.chunks_sha256, length)
        parts = []
        stream = self._stream(source, manifest.chunks_sha256, 0, 0, Transfer())
        async with contextlib.aclosing(stream):
            async for _, data in stream:
                digest.update(data)
                parts.append(data)
        digest.finish()
        data = b"".join(parts)
        await asyncio.to_thread(self.blobs.put_verified, manifest.chunks_sha256, data)
        return ChunkIndex.from_bytes(data, manifest.chunk_size, manifest.length)

    async def download(self, source: BlobSource, manifest: ModelManifest) -> Transfer:
        """Fetch the blob from where an earlier attempt stopped, check every chunk, commit.

        A blob already in the store was verified before it was committed there (an agent
        killed between commit and recording the install finds it so): nothing is fetched,
        and a stray ``.partial`` beside it is dropped."""
        with self.blobs.claim(manifest.sha256):
            if self.blobs.has(manifest.sha256, manifest.length):
                self.blobs.discard_partial(manifest.sha256)
                return Transfer()
            return await self._download(source, manifest)

    async def _download(self, source: BlobSource, manifest: ModelManifest) -> Transfer:
        if self.meter is not None:
            self.meter.check()
        index = await self.chunk_index(source, manifest)
        partial = self.blobs.partial_of(manifest.sha256)
        partial.touch(exist_ok=True)
        verified, tail = await asyncio.to_thread(_resume_point, partial, index, manifest.length)
        transfer = Transfer()
        checker = ChunkChecker(index, manifest.length, verified // index.chunk_size, tail)
        received = verified + len(tail)
        handle = partial.open("ab")
        # Closed as soon as the loop ends, on any error too (a full disk): the gRPC call is
        # cancelled then, not whenever the garbage collector reaches the generator.
        stream = self._stream(source, manifest.sha256, received, 0, transfer)
        try:
            async for _, data in stream:
                if received + len(data) > manifest.length:
                    raise HashMismatchError(
                        f"blob is longer than its manifest's {manifest.length} bytes"
                    )
                # Written at once, checked as its chunk fills: a cut link or a restart
                # loses only what was still in flight. Both happen on the loop (about 1 ms
                # per MiB): a thread hop per message doubled the agent's CPU per GB with
                # grpc.aio (benchmarks/transfer.py).
                received += len(data)
                before = checker.number
                bad = checker.update(data)
                view = memoryview(data)
                for at in range(0, len(view), WRITE_BYTES):
                    handle.write(view[at : at + WRITE_BYTES])
                if bad is not None:
                    handle.flush()
                    handle.truncate(bad * index.chunk_size)
                    raise HashMismatchError(
                        f"{manifest.ref}: chunk {bad} does not match its signed hash"
                    )
                transfer.chunks_written += checker.number - before
                if self.board is not None:
                    self.board.update(manifest, received)
        finally:
            await stream.aclose()
            await asyncio.to_thread(_close_durably, handle)
        if received < manifest.length:
            raise TransportError(
                f"{manifest.ref}: the source stopped at byte {received} of "
                f"{manifest.length}; it resumes at the next sync"
            )
        try:
            # Every byte is now checked: each chunk against the chunk index whose SHA-256
            # the signed manifest names. Signed is not the same as sane, though: parse the
            # header defensively before llama.cpp ever sees the file, and hold it to the
            # facts the manifest was signed with.
            await asyncio.to_thread(check_model_header, partial, manifest)
        except (HashMismatchError, MalformedInputError):
            # Signed, yet hostile or not what its manifest describes: keep nothing of it.
            self.blobs.discard_partial(manifest.sha256)
            raise
        await asyncio.to_thread(self.blobs.commit, manifest.sha256)
        return transfer

    async def repair(self, source: BlobSource, manifest: ModelManifest) -> Transfer:
        """Re-fetch only the damaged chunks of a stored or quarantined blob."""
        if self.meter is not None:
            self.meter.check()
        index = await self.chunk_index(source, manifest)
        damaged = self.blobs.path_of(manifest.sha256)
        if not damaged.exists():
            damaged = self.blobs.quarantined_of(manifest.sha256)
        if not damaged.exists():
            return await self.download(source, manifest)
        with self.blobs.claim(manifest.sha256):
            return await self._repair(source, manifest, index, damaged)

    async def _repair(
        self, source: BlobSource, manifest: ModelManifest, index: ChunkIndex, damaged: Path
    ) -> Transfer:
        partial = self.blobs.partial_of(manifest.sha256)
        await asyncio.to_thread(_copy_truncated, damaged, partial, manifest.length)
        bad = await asyncio.to_thread(index.bad_chunks, partial)
        transfer = Transfer(repaired_chunks=tuple(bad))
        with partial.open("r+b") as handle:
            for number in bad:
                offset, size = index.span(number, manifest.length)
                piece = bytearray()
                stream = self._stream(source, manifest.sha256, offset, size, transfer)
                async with contextlib.aclosing(stream):
                    async for _, data in stream:
                        if len(piece) + len(data) > size:
                            raise HashMismatchError(
                                f"{manifest.ref}: the source sent more than chunk {number}'s "
                                f"{size} bytes"
                            )
                        piece += data
                if not index.matches(number, bytes(piece)):
                    raise HashMismatchError(
                        f"{manifest.ref}: re-fetched chunk {number} does not match its signed hash"
                    )
                handle.seek(offset)
                handle.write(piece)
                transfer.chunks_written += 1
            _close_durably(handle)
        if await asyncio.to_thread(sha256_of_file, partial) != manifest.sha256:
            self.blobs.discard_partial(manifest.sha256)
            raise HashMismatchError(f"{manifest.ref}: repaired file does not match its manifest")
        await asyncio.to_thread(self.blobs.commit, manifest.sha256)
        return transfer


def check_model_header(path: Path, manifest: ModelManifest) -> None:
    """Refuse a file whose GGUF header is hostile or disagrees with its signed manifest."""
    info = read_gguf_file(path)
    header = (info.architecture, info.quantization, info.kv_bytes_per_token)
    signed = (manifest.architecture, manifest.quantization, manifest.kv_bytes_per_token)
    if header != signed:
        raise MalformedInputError(
            f"{manifest.ref}: the GGUF header says {header}, the signed manifest {signed}"
        )


def _copy_truncated(source: Path, target: Path, length: int) -> None:
    target.unlink(missing_ok=True)
    shutil.copyfile(source, target)
    with target.open("r+b") as handle:
        handle.truncate(length)


def _close_durably(handle: BinaryIO) -> None:
    """fsync and close; closed even when the flush fails (a full disk)."""
    if handle.closed:
        return
    try:
        handle.flush()
        os.fsync(handle.fileno())
    finally:
        with contextlib.suppress(OSError):  # what could not be flushed is lost: resumed later
            handle.close()
