"""Review hole H2: 10-16 concurrent Enroll calls with one token enrolled 4-6 devices. Raced
again here by 16 real gRPC clients against a real controller, on SQLite (the default) and
on PostgreSQL: one device is enrolled, every other caller hears "already used"."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from threading import Barrier

import grpc
import pytest

from edgefleet.tls import make_csr, new_tls_key
from edgefleet.trust.keys import SigningKey
from edgefleet.v1 import device_pb2, device_pb2_grpc
from tests.harness import Fleet

pytestmark = pytest.mark.integration

RACERS = 16


@pytest.fixture(params=["sqlite", "postgresql"])
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    """A running controller on each backend."""
    fleet = Fleet(tmp_path)
    if request.param == "postgresql":
        fleet.controller_env["EDGEFLEET_CONTROLLER_DATABASE_URL"] = request.getfixturevalue(
            "postgres"
        )
    try:
        fleet.init_controller()
        fleet.start_controller()
        yield fleet
    finally:
        fleet.stop_all()


def _race_enroll(fleet: Fleet, token: str) -> list[grpc.StatusCode | str]:
    """16 clients, each on its own connection and key, call Enroll at the same moment."""
    ca_pem = (fleet.controller_dir / "tls" / "ca.pem").read_bytes()
    barrier = Barrier(RACERS)

    def enroll(number: int) -> grpc.StatusCode | str:
        channel = grpc.secure_channel(
            fleet.enroll_address, grpc.ssl_channel_credentials(root_certificates=ca_pem)
        )
        request = device_pb2.EnrollRequest(
            token=token,
            csr_pem=make_csr(new_tls_key()),
            hostname=f"racer-{number}",
            agent_version="test",
            audit_public_key=SigningKey.generate().public.hex,
        )
        grpc.channel_ready_future(channel).result(timeout=10)
        barrier.wait()
        try:
            return str(
                device_pb2_grpc.DeviceServiceStub(channel).Enroll(request, timeout=30).device_id
            )
        except grpc.RpcError as e:
            return e.code() if e.code() != grpc.StatusCode.PERMISSION_DENIED else e.details()
        finally:
            channel.close()

    with ThreadPoolExecutor(RACERS) as pool:
        return list(pool.map(enroll, range(RACERS)))


def test_one_token_raced_by_16_clients_enrolls_one_device(fleet: Fleet) -> None:
    """Exactly one device id comes back; 15 callers are told the token was already used;
    the fleet lists one device."""
    token = fleet.ctl("token", "create", "--label", "site=race").stdout.strip()
    outcomes = _race_enroll(fleet, token)
    enrolled = [o for o in outcomes if isinstance(o, str) and o.startswith("dev-")]
    assert len(enrolled) == 1, outcomes
    assert sorted(o for o in outcomes if o not in enrolled) == [
        "enrollment token was already used"
    ] * (RACERS - 1)
    assert [d["device_id"] for d in fleet.devices()] == enrolled
