"""Durable file placement: a file becomes visible only by atomic rename after fsync."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def fsync_directory(directory: Path) -> None:
    """Make a rename inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_read_only(temporary: Path, final: Path) -> Path:
    """fsync ``temporary``, make it read-only and rename it to ``final`` atomically."""
    with temporary.open("rb") as f:
        os.fsync(f.fileno())
    os.chmod(temporary, 0o444)
    os.replace(temporary, final)
    fsync_directory(final.parent)
    return final


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never half."""
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
    fsync_directory(path.parent)


def sha256_of_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()
