"""Other blob sources: a real nginx serving the controller's blob folder over HTTPS, and a
second agent fetching from the first as its LAN peer. Neither is trusted: a mirror that
serves wrong bytes is caught and the controller takes over."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.files import sha256_of_file
from tests.harness import Fleet, wait_for
from tests.integration.fleets import active_versions, agent_actions, publish_tiny
from tests.nginxkit import NGINX, NginxMirror

pytestmark = pytest.mark.integration


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """nginx on loopback with a certificate from a throwaway CA; (base URL, CA file, blob dir)."""
    if NGINX is None:
        pytest.skip("nginx is not installed (the Makefile installs Debian's nginx when it can)")
    blobs = tmp_path / "mirror-blobs"
    blobs.mkdir()
    with NginxMirror(tmp_path / "nginx", blobs) as mirror:
        yield mirror.url, mirror.ca_file, blobs


def _mirror(fleet: Fleet, blobs: Path) -> None:
    """Copy the controller's blobs to the mirror folder, as a CDN sync job would."""
    for blob in (fleet.controller_dir / "blobs" / "sha256").iterdir():
        target = blobs / blob.name
        if not target.exists():
            shutil.copyfile(blob, target)


def _controller_served(fleet: Fleet, device_id: str) -> bool:
    """Did the controller answer a ReadBlob call of this device?"""
    return any(
        '"ReadBlob"' in line and device_id in line for line in fleet.log("controller").splitlines()
    )


def test_a_model_comes_from_an_nginx_mirror_and_a_bad_mirror_is_caught(
    small_fleet: tuple[Fleet, str], nginx: tuple[str, Path, Path]
) -> None:
    """tiny@1 is fetched from nginx over HTTPS (the controller serves no blob bytes); then
    the mirror serves a tampered tiny@2: refused, audited, and the controller supplies it."""
    fleet, device_id = small_fleet
    url, ca_file, blobs = nginx
    fleet.stop("agent-gw")
    fleet.start_agent(
        "gw",
        sync_interval=1,
        env={"EDGEFLEET_AGENT_MIRRORS": url, "EDGEFLEET_AGENT_MIRROR_CA_FILE": str(ca_file)},
    )
    publish_tiny(fleet, "1", seed=1, rows=100_000)
    _mirror(fleet, blobs)
    fleet.ctl("rollout", "create", "tiny@1", "--selector", "site=lab")
    wait_for(
        "tiny@1 from the mirror",
        lambda: True if "tiny@1" in active_versions(fleet, "gw") else None,
        30,
    )
    assert not _controller_served(fleet, device_id)
    access = (ca_file.parent / "access.log").read_text()  # nginx's own log
    assert " 200 " in access or " 206 " in access

    tiny2 = publish_tiny(fleet, "2", seed=2, rows=100_000)
    _mirror(fleet, blobs)
    tampered = blobs / sha256_of_file(tiny2)
    data = bytearray(tampered.read_bytes())
    data[-100] ^= 0xFF
    tampered.write_bytes(bytes(data))
    fleet.ctl("rollout", "create", "tiny@2", "--selector", "site=lab")
    wait_for(
        "tiny@2 from the controller",
        lambda: True if "tiny@2" in active_versions(fleet, "gw") else None,
        30,
    )
    assert ("model.download", url, "verification_failed") in agent_actions(fleet, "gw")
    assert _controller_served(fleet, device_id)


def test_a_second_agent_fetches_from_its_lan_peer(small_fleet: tuple[Fleet, str]) -> None:
    """gw serves its blobs to peers; gw2 is configured with gw as a mirror and gets tiny@1
    from it, with no blob bytes from the controller."""
    fleet, _ = small_fleet
    fleet.stop("agent-gw")
    fleet.start_agent("gw", sync_interval=1, env={"EDGEFLEET_AGENT_PEER_LISTEN": "127.0.0.1:0"})
    publish_tiny(fleet, "1", seed=1, rows=100_000)
    fleet.ctl("rollout", "create", "tiny@1", "--selector", "site=lab")
    wait_for("tiny@1 on gw", lambda: True if "tiny@1" in active_versions(fleet, "gw") else None, 30)
    peer = (fleet.agent_dir("gw") / "peer.addr").read_text().strip()
    second = fleet.enroll("gw2", {"site": "lab"})
    fleet.start_agent(
        "gw2", sync_interval=1, env={"EDGEFLEET_AGENT_MIRRORS": f"http://{peer}/blobs/"}
    )
    wait_for(
        "tiny@1 on gw2", lambda: True if "tiny@1" in active_versions(fleet, "gw2") else None, 30
    )
    assert "peer.blob_requested" in fleet.log("agent-gw")
    assert not _controller_served(fleet, second)
