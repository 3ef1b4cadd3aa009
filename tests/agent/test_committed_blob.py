"""An agent killed after a blob was committed to the store but before the install was
recorded: the next sync installs that blob without fetching it again."""

from __future__ import annotations

from pathlib import Path

from tests.attacks.kit import make_device, newer, with_v1_serving


def test_a_committed_blob_is_installed_without_a_second_download(tmp_path: Path) -> None:
    device = make_device(tmp_path)
    try:
        with_v1_serving(device)
        v2 = newer(device)
        sha = v2.manifest.sha256
        # The state SIGKILL leaves: the verified blob committed, nothing recorded, and the
        # start of a second fetch of it in a .partial file.
        device.blobs.partial_of(sha).write_bytes(v2.data)
        device.blobs.commit(sha)
        device.blobs.partial_of(sha).write_bytes(v2.data[: len(v2.data) // 3])
        device.controller.publish(v2)
        device.controller.assign("m@2")
        assert device.sync() == ""
        assert device.active("m") == "2"
        assert not any(read[0] == sha for read in device.controller.reads)
        assert not device.blobs.partial_of(sha).exists()
    finally:
        device.close()
