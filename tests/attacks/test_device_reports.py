"""Review hole M7: two devices reporting long model names pushed the single, unpaged
`devices list` reply past gRPC's 4 MiB and broke it for every operator. Every string a
device reports is now bounded, and every list RPC pages (by count and by bytes)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import pytest

from edgefleet.tls import key_pem, make_csr, new_tls_key
from edgefleet.trust.keys import SigningKey
from edgefleet.v1 import device_pb2, device_pb2_grpc
from tests.harness import Fleet

pytestmark = pytest.mark.integration

DEVICES = 12
LIMIT = 2 << 20  # the controller's message limit here (4 MiB by default)
HUGE = "x" * 1000


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path_factory.mktemp("reports"))
    fleet.controller_env["EDGEFLEET_CONTROLLER_MAX_MESSAGE_BYTES"] = str(LIMIT)
    try:
        fleet.init_controller()
        fleet.start_controller()
        yield fleet
    finally:
        fleet.stop_all()


def _largest_report() -> device_pb2.StatusReport:
    """A report as large as a hostile device can make it: every list long, every string huge."""
    many = range(300)
    return device_pb2.StatusReport(
        agent_version=HUGE,
        last_error=HUGE * 2,
        models=[device_pb2.InstalledModel(name=HUGE, version=HUGE, sha256=HUGE) for _ in many],
        downloads=[
            device_pb2.DownloadProgress(name=HUGE, version=HUGE, state=HUGE, reason=HUGE)
            for _ in range(10)
        ],
        health=[device_pb2.ModelHealth(name=HUGE, version=HUGE, smoke_reason=HUGE) for _ in many],
    )


def _enroll_and_report(fleet: Fleet, report: device_pb2.StatusReport, hostname: str = "big") -> str:
    """Enroll a device with a token over the enrollment listener, then sync ``report``."""
    ca_pem = (fleet.controller_dir / "tls" / "ca.pem").read_bytes()
    token = fleet.ctl("token", "create", quiet=True).stdout.strip()
    key = new_tls_key()
    with grpc.secure_channel(
        fleet.enroll_address, grpc.ssl_channel_credentials(root_certificates=ca_pem)
    ) as channel:
        enrolled = device_pb2_grpc.DeviceServiceStub(channel).Enroll(
            device_pb2.EnrollRequest(
                token=token,
                csr_pem=make_csr(key),
                hostname=hostname,
                agent_version="test",
                audit_public_key=SigningKey.generate().public.hex,
            ),
            timeout=30,
        )
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca_pem,
        private_key=key_pem(key),
        certificate_chain=bytes(enrolled.certificate_pem),
    )
    with grpc.secure_channel(fleet.sync_address, credentials) as channel:
        device_pb2_grpc.DeviceServiceStub(channel).Sync(report, timeout=60)
    return str(enrolled.device_id)


def test_devices_list_pages_past_any_message_limit(fleet: Fleet) -> None:
    """Twelve devices sending the largest reports they can: `devices list` and `devices
    show` still answer, every stored string within its bound."""
    report = _largest_report()
    assert LIMIT // 2 < report.ByteSize() < LIMIT
    ids = sorted(_enroll_and_report(fleet, report) for _ in range(DEVICES))
    listed = fleet.devices()
    assert [d["device_id"] for d in listed] == ids
    assert len(json.dumps(listed)) > LIMIT  # no single reply could have carried them
    for device in listed:
        assert len(device["models"]) == 256 and len(device["health"]) == 256
        assert len(device["agent_version"]) == 64 and len(device["last_error"]) == 1024
        assert {len(m["name"]) for m in device["models"]} == {64}
        assert {len(d["reason"]) for d in device["downloads"]} == {512}
    shown = fleet.ctl("devices", "show", ids[-1], "--json").stdout
    assert ids[-1] in shown


def test_escape_sequences_from_devices_never_reach_the_terminal(fleet: Fleet) -> None:
    """Review hole L6: a hostname and reported names holding terminal escape sequences
    (clear screen, a bidi override) are shown escaped by `devices list` and `devices show`."""
    evil = "gw\x1b[2J\x1b]0;pwned\x07\u202e"
    report = device_pb2.StatusReport(
        agent_version="1\x1b[31m",
        last_error="boom\x1b[8m hidden",
        models=[device_pb2.InstalledModel(name="m\x1b[1A", version="1", sha256="ab" * 32)],
    )
    device_id = _enroll_and_report(fleet, report, hostname=evil)
    for args in (("devices", "list", "-o", "wide"), ("devices", "show", device_id)):
        out = fleet.ctl(*args).stdout
        assert "\x1b" not in out and "\u202e" not in out and "\x07" not in out
        assert "gw\\x1b[2J" in out
