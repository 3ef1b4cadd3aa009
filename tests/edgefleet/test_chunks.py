"""Chunk indexes: build, parse, locate damage, find the resume point."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from edgefleet.errors import HashMismatchError, MalformedInputError
from edgefleet.trust.chunks import (
    MIN_CHUNK_SIZE,
    ChunkChecker,
    ChunkIndex,
    ChunkIndexBuilder,
    check_chunk_size,
    index_length,
)

SIZE = MIN_CHUNK_SIZE


def _file(tmp_path: Path, length: int) -> Path:
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(length))
    return path


def test_index_round_trip_and_length(tmp_path: Path) -> None:
    """3.5 chunks make a 4-digest index that parses back to itself."""
    path = _file(tmp_path, 3 * SIZE + SIZE // 2)
    index = ChunkIndex.of_file(path, SIZE)
    assert len(index.to_bytes()) == index_length(path.stat().st_size, SIZE) == 4 * 32
    assert ChunkIndex.from_bytes(index.to_bytes(), SIZE, path.stat().st_size) == index
    with pytest.raises(HashMismatchError, match="needs 128"):
        ChunkIndex.from_bytes(index.to_bytes()[:-1], SIZE, path.stat().st_size)


def test_bad_chunks_names_damaged_and_missing_chunks(tmp_path: Path) -> None:
    """A flipped byte in chunk 1 and a file cut inside chunk 3 name chunks 1 and 3."""
    path = _file(tmp_path, 4 * SIZE)
    index = ChunkIndex.of_file(path, SIZE)
    data = bytearray(path.read_bytes())
    data[SIZE + 7] ^= 1
    path.write_bytes(bytes(data[: 3 * SIZE + 10]))
    assert index.bad_chunks(path) == [1, 3]


def test_verified_prefix_stops_at_the_first_bad_or_partial_chunk(tmp_path: Path) -> None:
    """The resume point covers whole matching chunks only; a short last chunk counts."""
    path = _file(tmp_path, 2 * SIZE + 100)
    index = ChunkIndex.of_file(path, SIZE)
    assert index.verified_prefix(path) == 2 * SIZE + 100
    path.write_bytes(path.read_bytes()[: SIZE + 5])
    assert index.verified_prefix(path) == SIZE


@pytest.mark.parametrize("size", [0, 1000, SIZE + 1, 128 * 1024 * 1024])
def test_chunk_sizes_outside_the_bounds_are_refused(size: int) -> None:
    """Only powers of two between 64 KiB and 64 MiB."""
    with pytest.raises(MalformedInputError, match="power of two"):
        check_chunk_size(size)


def test_an_index_built_from_pieces_equals_the_file_index(tmp_path: Path) -> None:
    """Bytes arriving in pieces of any size (an upload) give the same index as the file."""
    path = _file(tmp_path, 2 * SIZE + 12345)
    data = path.read_bytes()
    builder = ChunkIndexBuilder(SIZE)
    for start in range(0, len(data), 50_000):
        builder.update(data[start : start + 50_000])
    assert builder.finish() == ChunkIndex.of_file(path, SIZE)


def _pieces(data: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), 40))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def test_checker_follows_pieces_of_any_size() -> None:
    """Pieces cut anywhere, from the start or from inside a chunk, check out chunk by chunk."""
    rng = random.Random(3)
    data = os.urandom(5 * SIZE + 123)
    index = ChunkIndex.of_chunks([data[i : i + SIZE] for i in range(0, len(data), SIZE)], SIZE)
    for start in (0, SIZE, 2 * SIZE + 77):  # a resume: verified chunks, then an unfinished one
        first, tail = start // SIZE, data[start // SIZE * SIZE : start]
        checker = ChunkChecker(index, len(data), first, tail)
        for piece in _pieces(data[start:], rng):
            assert checker.update(memoryview(piece)) is None
        assert checker.number == 6  # every chunk, the short last one too


def test_checker_names_the_first_bad_chunk() -> None:
    """One flipped byte in chunk 3 is reported when chunk 3 completes, not before."""
    data = bytearray(os.urandom(5 * SIZE))
    index = ChunkIndex.of_chunks(
        [bytes(data[i : i + SIZE]) for i in range(0, len(data), SIZE)], SIZE
    )
    data[3 * SIZE + 10] ^= 1
    checker = ChunkChecker(index, len(data), 0)
    assert checker.update(bytes(data[: 4 * SIZE - 1])) is None and checker.number == 3
    assert checker.update(bytes(data[4 * SIZE - 1 :])) == 3
