"""Checking stored blobs at the three costs, and quarantining what fails."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.errors import ConflictError
from tests.attacks.kit import CHUNK, Device, make_device, with_v1_serving


@pytest.fixture
def device(tmp_path: Path) -> Iterator[Device]:
    made = make_device(tmp_path)
    yield made
    made.close()


def _flip(device: Device, sha256: str, offset: int) -> None:
    path = device.blobs.path_of(sha256)
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_each_mode_catches_what_it_pays_for(device: Device) -> None:
    """size: a changed byte passes; sample: the first and last chunks are always checked;
    full: any chunk. A failure quarantines the blob and is audited with the chunk."""
    v1 = with_v1_serving(device)
    manifest = v1.manifest
    _flip(device, manifest.sha256, CHUNK + 1)  # chunk 1: in the middle
    assert device.registry.verify(manifest, "size").ok
    result = device.registry.verify(manifest, "full")
    assert not result.ok and result.bad_chunks == (1,)
    assert device.blobs.quarantined_of(manifest.sha256).exists()
    assert device.registry.verify(manifest, "sample").reason == "quarantined"
    device.audit.flush()
    record = json.loads(device.audit.all_records()[-1])
    assert (record["action"], record["outcome"], record["details"]["bad_chunks"]) == (
        "model.verify",
        "corrupt",
        [1],
    )


def test_sample_mode_always_checks_the_first_chunk(device: Device) -> None:
    """A damaged GGUF header (chunk 0) is found by the cheap check before every load."""
    v1 = with_v1_serving(device)
    _flip(device, v1.manifest.sha256, 10)
    result = device.registry.verify(v1.manifest, "sample", sample=0)
    assert not result.ok and result.bad_chunks == (0,)


def test_a_short_file_fails_the_size_check(device: Device) -> None:
    """Truncation is caught by the cheapest mode."""
    v1 = with_v1_serving(device)
    path = device.blobs.path_of(v1.manifest.sha256)
    path.chmod(0o644)
    path.write_bytes(path.read_bytes()[:-1])
    assert "size" in device.registry.verify(v1.manifest, "size").reason


def test_one_process_at_a_time_fetches_a_blob(device: Device) -> None:
    """A second claim on a blob being fetched (another process, another descriptor) fails."""
    sha = "ab" * 32
    with (
        device.blobs.claim(sha),
        pytest.raises(ConflictError, match="another process"),
        device.blobs.claim(sha),
    ):
        pass
    with device.blobs.claim(sha):  # released: free again
        pass
