"""What load balancers and operators' tools see of a running controller: gRPC health on the
plaintext port and on the TLS ports, server reflection, /metrics, and a graceful stop that
reports NOT_SERVING before it drains."""

from __future__ import annotations

import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from edgefleet.controller.ctl.client import OperatorCredential
from tests.harness import BIN, Fleet, free_port, wait_for

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _check(channel: grpc.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)


def _operator_channel(fleet: Fleet) -> grpc.Channel:
    credential = OperatorCredential.load(fleet.operator_config, fleet.sync_address)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=credential.ca_pem,
        private_key=credential.key_pem,
        certificate_chain=credential.certificate_pem,
    )
    return grpc.secure_channel(fleet.sync_address, credentials)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path)
    fleet.init_controller()
    fleet.start_controller()
    yield fleet
    fleet.stop_all()


def test_health_reflection_and_metrics(fleet: Fleet) -> None:
    with grpc.insecure_channel(fleet.health_address) as plain:
        assert wait_for("SERVING", lambda: _check(plain) == SERVING or None, 15)
        assert _check(plain, "edgefleet.v1.DeviceService") == SERVING
        with pytest.raises(grpc.RpcError) as unknown:
            _check(plain, "no.such.Service")
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

    with _operator_channel(fleet) as channel:
        assert _check(channel) == SERVING  # on the mTLS port too
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (response,) = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
        names = {s.name for s in response.list_services_response.service}
        assert {"edgefleet.v1.DeviceService", "edgefleet.v1.OperatorService"} <= names
        assert "grpc.health.v1.Health" in names

    health = fleet.run("edgefleetctl", "health", "--address", fleet.health_address)
    assert health.stdout.strip() == f"{fleet.health_address}: SERVING"
    fleet.ctl("devices", "list")  # one operator call, counted below
    with urllib.request.urlopen(f"http://{fleet.metrics_address}/metrics", timeout=10) as reply:
        assert reply.status == 200
        body = reply.read().decode()
    assert 'edgefleet_grpc_calls_total{code="OK",method="ListDevices"} 1.0' in body
    assert "edgefleet_grpc_call_seconds_bucket" in body
    assert "edgefleet_database_up 1.0" in body
    assert "edgefleet_devices_stale 0.0" in body


def _serve(fleet: Fleet, listen: str, enroll_listen: str) -> subprocess.CompletedProcess[str]:
    command = [str(BIN / "edgefleetctl"), "serve", "--data-dir", str(fleet.controller_dir)]
    command += ["--listen", listen, "--enroll-listen", enroll_listen]
    command += ["--health-listen", "", "--metrics-listen", ""]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_a_listener_address_in_use_is_refused_not_shared(fleet: Fleet) -> None:
    """gRPC would share a port with another listener (SO_REUSEPORT) and the kernel would
    split connections between them; the controller refuses to start instead."""
    in_use = _serve(fleet, fleet.sync_address, "127.0.0.1:0")  # the running controller's
    assert in_use.returncode != 0
    assert in_use.stderr == (
        f"edgefleetctl: error: cannot listen on {fleet.sync_address}: Address already in use\n"
    )
    port = free_port()
    one_port = _serve(fleet, f"127.0.0.1:{port}", f"0.0.0.0:{port}")
    assert one_port.returncode != 0
    assert (
        one_port.stderr == f"edgefleetctl: error: listen and enroll_listen both use port {port}\n"
    )
    health = fleet.run("edgefleetctl", "health", "--address", fleet.health_address)
    assert health.stdout.strip() == f"{fleet.health_address}: SERVING"
    assert fleet.devices() == []  # and every connection still reaches the running one


def test_a_stopping_replica_reports_not_serving_before_it_drains(fleet: Fleet) -> None:
    """SIGTERM: health turns NOT_SERVING (Watch subscribers see it) and the process ends
    within the grace."""
    with grpc.insecure_channel(fleet.health_address) as plain:
        wait_for("SERVING", lambda: _check(plain) == SERVING or None, 15)
        stub = health_pb2_grpc.HealthStub(plain)
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert next(watch).status == SERVING
        process = fleet.processes["controller"]
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert next(watch).status == NOT_SERVING
        assert process.wait(timeout=20) == 0
        assert time.monotonic() - started < 15
    fleet.processes.pop("controller")
    assert not (fleet.controller_dir / "serve.addr").exists()
