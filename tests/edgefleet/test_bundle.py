"""Bundle files: written as a plain tar, read by member name only, hostile shapes refused."""

from __future__ import annotations

import asyncio
import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from edgefleet.bundle import HEADER_NAME, BundleFile, BundleHeader, write_bundle
from edgefleet.errors import MalformedInputError
from tests.edgefleet.trustkit import Fleet, manifest


def _header() -> BundleHeader:
    fleet = Fleet()
    targets = fleet.targets(1, manifest())
    return BundleHeader(
        "m@1", (fleet.sign_root(fleet.root()),), fleet.timestamp(1, targets), targets, None
    )


async def _read(bundle: BundleFile, sha256: str, offset: int = 0, limit: int = 0) -> bytes:
    return b"".join([data async for _, data in bundle.read_blob(sha256, offset, limit)])


def test_round_trip(tmp_path: Path) -> None:
    """Header, chunk index and model come back byte for byte, from any offset."""
    blob = bytes(range(256)) * 1000
    sha, index_sha = hashlib.sha256(blob).hexdigest(), "ab" * 32
    path = tmp_path / "m.bundle"
    with path.open("wb") as out:
        write_bundle(
            out, _header(), b"index", index_sha, sha, len(blob), iter([blob[:100], blob[100:]])
        )
    bundle = BundleFile(path)
    assert bundle.header().model == "m@1"
    assert asyncio.run(_read(bundle, sha)) == blob
    assert asyncio.run(_read(bundle, sha, 1000, 10)) == blob[1000:1010]
    assert asyncio.run(_read(bundle, index_sha)) == b"index"
    bundle.close()
    with tarfile.open(path) as tar:
        names = [m.name for m in tar]
    assert names == [
        HEADER_NAME,
        f"chunks/{index_sha}",
        f"blobs/{sha}",
    ]


def _tar(path: Path, *members: tuple[tarfile.TarInfo, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def test_links_and_extra_members_are_refused(tmp_path: Path) -> None:
    """A symlink member, or more members than a bundle has, is refused outright."""
    link = tarfile.TarInfo("blobs/" + "ab" * 32)
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    with pytest.raises(MalformedInputError, match="is not a file"):
        BundleFile(_tar(tmp_path / "link.bundle", (link, b"")))
    many = [(tarfile.TarInfo(f"x{i}"), b"x") for i in range(4)]
    with pytest.raises(MalformedInputError, match="more members"):
        BundleFile(_tar(tmp_path / "many.bundle", *many))


def test_members_are_found_by_exact_name_only(tmp_path: Path) -> None:
    """A traversal name is never read or written; a blob not carried is named as missing."""
    header = tarfile.TarInfo(HEADER_NAME)
    evil = tarfile.TarInfo("../../blobs/" + "cd" * 32)
    bundle = BundleFile(
        _tar(tmp_path / "evil.bundle", (header, _header().to_bytes()), (evil, b"x"))
    )
    with pytest.raises(MalformedInputError, match="does not carry blob"):
        asyncio.run(_read(bundle, "cd" * 32))
    with pytest.raises(MalformedInputError, match="not a hex SHA-256"):
        asyncio.run(_read(bundle, "../../etc/passwd"))
    assert not (tmp_path.parent / "blobs").exists()
    bundle.close()
