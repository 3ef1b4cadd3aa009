"""Identity and RBAC over real mTLS: operator roles, isolation, revocation, renewal, policy."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from edgefleet.audit import AuditEvent, encode_record
from edgefleet.controller.trust.ca import CertificateAuthority
from edgefleet.tls import cert_pem, key_pem, new_tls_key
from edgefleet.v1 import device_pb2, device_pb2_grpc
from tests.ggufkit import write_tiny_gguf
from tests.harness import BIN, Fleet, http_json, wait_for

pytestmark = pytest.mark.integration

POLICY = {
    "roles": {"inference": ["inference.invoke", "models.read"]},
    "operator_roles": {"publisher": ["models.publish", "models.read"]},
    "bindings": [],
}


def _device_channel(fleet: Fleet, name: str) -> grpc.Channel:
    identity = fleet.agent_dir(name) / "identity"
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(identity / "ca.pem").read_bytes(),
        private_key=(identity / "device.key").read_bytes(),
        certificate_chain=(identity / "device.pem").read_bytes(),
    )
    return grpc.secure_channel(fleet.sync_address, credentials)


def test_operator_roles_are_enforced_over_mtls(small_fleet: tuple[Fleet, str]) -> None:
    """A viewer lists devices but cannot publish; a custom policy role can; denials are audited."""
    fleet, device_id = small_fleet
    viewer = fleet.root / "viewer"
    fleet.ctl("operator", "add", "vera", "--role", "viewer", "--out", str(viewer))
    config = viewer / "edgefleetctl.toml"
    assert device_id in fleet.ctl_as(config, "devices", "list").stdout
    tiny = write_tiny_gguf(fleet.root / "t.gguf")
    denied = fleet.ctl_as(config, "models", "publish", str(tiny), "--name", "t", "--version", "1")
    assert denied.returncode == 1
    assert (
        denied.stderr.strip()
        == "edgefleetctl: error: operator:vera lacks models.publish for PublishModel"
    )
    policy_file = fleet.root / "policy.json"
    policy_file.write_text(json.dumps(POLICY))
    fleet.ctl("policy", "apply", str(policy_file))
    fleet.ctl("operator", "add", "pat", "--role", "publisher", "--out", str(fleet.root / "pat"))
    allowed = fleet.ctl_as(
        fleet.root / "pat" / "edgefleetctl.toml",
        "models",
        "publish",
        str(tiny),
        "--name",
        "t",
        "--version",
        "1",
    )
    assert allowed.returncode == 0, allowed.stderr
    fleet.ctl("audit", "export", "--out", str(fleet.root / "a.jsonl"))
    denials = [
        json.loads(line)
        for line in (fleet.root / "a.jsonl").read_text().splitlines()
        if '"access.denied"' in line
    ]
    assert [(d["actor"], d["target"]) for d in denials] == [("operator:vera", "PublishModel")]


def test_a_device_cannot_act_for_another(small_fleet: tuple[Fleet, str]) -> None:
    """Device A's certificate cannot push records that name device B."""
    fleet, device_a = small_fleet
    device_b = fleet.enroll("b", {"site": "lab"})
    forged = encode_record(
        device_b, 1, "2026-01-01T00:00:00Z", AuditEvent("x", "y", "z", "ok"), "0" * 64
    )
    channel = _device_channel(fleet, "gw")
    stub = device_pb2_grpc.DeviceServiceStub(channel)
    stub.PushAudit(
        device_pb2.PushAuditRequest(records=[device_pb2.AuditRecord(seq=1, canonical=forged)]),
        timeout=10,
    )
    channel.close()
    devices = {d["device_id"]: d for d in fleet.devices()}
    assert devices[device_b]["audit_stored_seq"] == 0  # nothing was stored for B
    assert devices[device_a]["audit_alert"]  # A pushed a record that is not its own: flagged
    assert "AUDIT TAMPER ALERT" in fleet.ctl("devices", "list").stdout
    fleet.ctl("audit", "export", "--device", device_b, "--out", str(fleet.root / "b.jsonl"))
    assert len((fleet.root / "b.jsonl").read_text().splitlines()) == 1  # the header only
    # The runbook's recovery, as an operator types it: a reason is required, then it clears.
    no_reason = fleet.ctl("audit", "clear-alert", device_a, "--reason", " ", check=False)
    assert no_reason.returncode == 1 and "say why the alert is cleared" in no_reason.stderr
    fleet.ctl("audit", "clear-alert", device_a, "--reason", "forged push investigated")
    assert "AUDIT TAMPER ALERT" not in fleet.ctl("devices", "list").stdout
    again = fleet.ctl("audit", "clear-alert", device_a, "--reason", "twice", check=False)
    assert again.returncode == 1 and "no open tamper alert" in again.stderr


def test_expired_and_revoked_certificates_are_refused(small_fleet: tuple[Fleet, str]) -> None:
    """An expired certificate fails the handshake; a revoked device is refused and says so."""
    fleet, device_id = small_fleet
    data = fleet.controller_dir
    ca = CertificateAuthority.load(data / "tls" / "ca.pem", data / "tls" / "ca.key")
    key = new_tls_key()
    from datetime import timedelta

    expired = ca.issue_client(key.public_key(), f"device:{device_id}", timedelta(minutes=-1))
    credentials = grpc.ssl_channel_credentials(
        root_certificates=cert_pem(ca.cert),
        private_key=key_pem(key),
        certificate_chain=cert_pem(expired),
    )
    channel = grpc.secure_channel(fleet.sync_address, credentials)
    with pytest.raises(grpc.RpcError) as refused:
        device_pb2_grpc.DeviceServiceStub(channel).Sync(device_pb2.StatusReport(), timeout=5)
    channel.close()
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    fleet.ctl("devices", "revoke", device_id)
    wait_for(
        "the agent to be refused",
        lambda: (
            True if f"device {device_id} is revoked" in fleet.agent("gw", "status").stdout else None
        ),
        30,
    )


def test_short_lived_certificate_is_renewed_and_service_continues(tmp_path: Path) -> None:
    """With 9-second certificates the agent renews before expiry and keeps syncing."""
    fleet = Fleet(tmp_path)
    fleet.agent_env["EDGEFLEET_AGENT_SMOKE_TEST"] = "false"  # tiny models cannot generate
    try:
        fleet.init_controller()
        (fleet.controller_dir / "controller.toml").write_text("device_certificate_seconds = 9\n")
        fleet.start_controller()
        fleet.enroll("gw", {"site": "lab"})
        first = (fleet.agent_dir("gw") / "identity" / "device.pem").read_bytes()
        fleet.start_agent("gw", sync_interval=1, env={"EDGEFLEET_AGENT_SYNC_JITTER_SECONDS": "0"})
        time.sleep(14)  # beyond the first certificate's lifetime
        assert (fleet.agent_dir("gw") / "identity" / "device.pem").read_bytes() != first
        status = fleet.agent("gw", "status").stdout
        assert "last error:    -" in status, status
        seen = fleet.devices()[0]["last_seen"]
        wait_for(
            "another sync after renewals",
            lambda: True if fleet.devices()[0]["last_seen"] != seen else None,
            15,
        )
    finally:
        fleet.stop_all()


def test_enrollment_by_approval_and_by_preauthorized_key(small_fleet: tuple[Fleet, str]) -> None:
    """Without a token a device waits for an operator; a preauthorized key enrolls at once."""
    fleet, _device = small_fleet
    base = ["enroll", "--controller", fleet.enroll_address, "--root-fingerprint", fleet.fingerprint]
    pending = fleet.agent("p", *base, check=False)
    assert pending.returncode == 3 and "waits for approval" in pending.stderr
    device_id = pending.stderr.split("device ")[1].split()[0]
    waiting = subprocess.Popen(
        [
            str(BIN / "edgefleet-agent"),
            "--data-dir",
            str(fleet.agent_dir("p")),
            *base,
            "--wait",
            "60",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1)
    fleet.ctl("devices", "accept", device_id)
    out, _ = waiting.communicate(timeout=60)
    assert waiting.returncode == 0 and f"enrolled as {device_id}" in out
    fingerprint = fleet.agent("q", "fingerprint").stdout.strip()
    fleet.ctl("devices", "preauthorize", fingerprint, "--label", "site=lab")
    assert "enrolled as" in fleet.agent("q", *base).stdout
    rejected = fleet.agent("r", *base, check=False)
    fleet.ctl("devices", "reject", rejected.stderr.split("device ")[1].split()[0])
    again = fleet.agent("r", *base, check=False)
    assert again.returncode == 1 and "rejected" in again.stderr


def test_revoked_app_token_is_denied_after_one_sync_and_after_offline_restart(
    small_fleet: tuple[Fleet, str],
) -> None:
    """A revoked token fails from the next sync, and still after a restart with no controller."""
    fleet, _device = small_fleet
    policy_file = fleet.root / "policy.json"
    policy_file.write_text(json.dumps(POLICY))
    fleet.ctl("policy", "apply", str(policy_file))
    token = fleet.ctl("tokens", "create", "app:sensor", "--role", "inference").stdout.strip()
    fleet.stop("agent-gw")
    api = fleet.start_agent("gw", sync_interval=1)

    def models_status() -> int:
        try:
            http_json(f"http://{api}/v1/models", token=token, timeout=5)
            return 200
        except Exception as e:  # noqa: BLE001
            return int(getattr(e, "code", 0))

    wait_for("the token to work", lambda: True if models_status() == 200 else None, 30)
    token_id = token[4:].split(".")[0]
    fleet.ctl("tokens", "revoke", token_id)
    wait_for("the token to be refused", lambda: True if models_status() == 401 else None, 30)
    fleet.stop("controller")
    fleet.stop("agent-gw")
    api = fleet.start_agent("gw", sync_interval=1)
    assert models_status() == 401
    diff = fleet.run(
        "edgefleetctl",
        "--controller",
        fleet.sync_address,
        "policy",
        "diff",
        str(policy_file),
        check=False,
    )
    assert diff.returncode == 1  # the controller is down: a one-line transport error
    fleet.start_controller()
    shown = json.loads(fleet.ctl("policy", "show").stdout)
    assert shown["version"] == 3 and shown["tokens"] == []
