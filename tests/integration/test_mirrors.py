"""Other blob sources: a real nginx serving the controller's blob folder over HTTPS, and a
second agent fetching from the first as its LAN peer. Neither is trusted: a mirror that
serves wrong bytes is caught and the controller takes over."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.ca import CertificateAuthority
from demo import Fleet, free_port, wait_for
from edgefleet.files import sha256_of_file
from edgefleet.tls import cert_pem, key_pem, new_tls_key
from tests.integration.fleets import agent_actions, models, publish_tiny

pytestmark = pytest.mark.integration

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
NGINX_CONF = """
{user}
worker_processes 1;
error_log {root}/error.log;
pid {root}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/tmp;
    proxy_temp_path {root}/tmp;
    fastcgi_temp_path {root}/tmp;
    uwsgi_temp_path {root}/tmp;
    scgi_temp_path {root}/tmp;
    sendfile on;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {root}/cert.pem;
        ssl_certificate_key {root}/key.pem;
        location /blobs/ {{
            alias {blobs}/;
        }}
    }}
}}
"""


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """nginx on loopback with a certificate from a throwaway CA; (base URL, CA file, blob dir)."""
    if NGINX is None:
        pytest.skip("nginx is not installed (the Makefile installs Debian's nginx when it can)")
    root = tmp_path / "nginx"
    (root / "tmp").mkdir(parents=True)
    blobs = tmp_path / "mirror-blobs"
    blobs.mkdir()
    ca = CertificateAuthority.create("mirror-test")
    key = new_tls_key()
    (root / "cert.pem").write_bytes(cert_pem(ca.issue_server(key, ["127.0.0.1"])))
    (root / "key.pem").write_bytes(key_pem(key))
    (root / "ca.pem").write_bytes(cert_pem(ca.cert))
    port = free_port()
    conf = root / "nginx.conf"
    # As root, nginx's workers would drop to an account that cannot read pytest's folders.
    user = "user root;" if os.geteuid() == 0 else ""
    conf.write_text(NGINX_CONF.format(user=user, root=root, port=port, blobs=blobs))
    process = subprocess.Popen(
        [NGINX, "-c", str(conf), "-p", str(root), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for("nginx", lambda: True if _listening(port) else None, 15)
        yield f"https://127.0.0.1:{port}/blobs/", root / "ca.pem", blobs
    finally:
        process.terminate()
        process.wait(10)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


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
        "tiny@1 from the mirror", lambda: True if "* tiny@1" in models(fleet, "gw") else None, 30
    )
    assert not _controller_served(fleet, device_id)
    access = (ca_file.parent / "access.log").read_text()
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
        lambda: True if "* tiny@2" in models(fleet, "gw") else None,
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
    wait_for("tiny@1 on gw", lambda: True if "* tiny@1" in models(fleet, "gw") else None, 30)
    peer = (fleet.agent_dir("gw") / "peer.addr").read_text().strip()
    second = fleet.enroll("gw2", {"site": "lab"})
    fleet.start_agent(
        "gw2", sync_interval=1, env={"EDGEFLEET_AGENT_MIRRORS": f"http://{peer}/blobs/"}
    )
    wait_for("tiny@1 on gw2", lambda: True if "* tiny@1" in models(fleet, "gw2") else None, 30)
    assert "peer.blob_requested" in fleet.log("agent-gw")
    assert not _controller_served(fleet, second)
