"""What the skeleton already refuses, each shown against real processes."""

from __future__ import annotations

import base64
import json
import os
import time

import grpc
import pytest

from edgefleet.controller.trust.ca import CertificateAuthority
from edgefleet.tls import cert_pem, key_pem, new_tls_key
from edgefleet.trust.keys import SigningKey
from edgefleet.v1 import device_pb2, device_pb2_grpc, operator_pb2, operator_pb2_grpc
from tests.ggufkit import write_tiny_gguf
from tests.harness import Fleet, wait_for
from tests.integration.fleets import (
    active_versions,
    agent_actions,
    models,
    publish_tiny,
    roll_out_and_wait_active,
)

pytestmark = pytest.mark.integration


def test_blob_differing_from_its_manifest_is_never_installed(
    small_fleet: tuple[Fleet, str],
) -> None:
    """A blob changed after signing fails its SHA-256; the old version keeps serving."""
    fleet, _device = small_fleet
    publish_tiny(fleet, "1", seed=1)
    roll_out_and_wait_active(fleet, "1")
    publish_tiny(fleet, "2", seed=2)
    blob = max(
        (fleet.controller_dir / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_mtime
    )
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF  # same length, one bit pattern changed at the end of the weights
    blob.write_bytes(bytes(data))
    created = fleet.ctl("rollout", "create", "tiny@2", "--selector", "site=lab").stdout
    rollout_id = created.split()[1].rstrip(":")
    # The device refuses the blob; the controller learns why and the rollout halts on it.
    halted = wait_for(
        "the rollout to halt on the refusal",
        lambda: (
            out if "halted" in (out := fleet.ctl("rollout", "status", rollout_id).stdout) else None
        ),
        30,
    )
    assert "refused to download" in halted and "does not match manifest" in halted
    assert active_versions(fleet, "gw") == {"tiny@1"} and "tiny@2" not in models(fleet, "gw")
    assert not (fleet.agent_dir("gw") / "blobs" / "sha256" / blob.name).exists()
    assert not list((fleet.agent_dir("gw") / "blobs" / "partial").iterdir())
    assert ("model.install", "tiny@2", "verification_failed") in agent_actions(fleet, "gw")


def test_a_controller_without_the_keys_its_root_names_refuses_to_start(
    small_fleet: tuple[Fleet, str],
) -> None:
    """A targets key the root does not name is never used: the controller will not start
    with it (and a device refuses what it signs: tests/attacks)."""
    fleet, _device = small_fleet
    fleet.stop("controller")
    key_file = fleet.controller_dir / "keys" / "targets.key"
    key_file.unlink()
    SigningKey.generate().save(key_file)
    with pytest.raises(RuntimeError, match="holds 0 of the 1 targets key"):
        fleet.start_controller()


def test_clients_without_a_valid_certificate_are_refused(small_fleet: tuple[Fleet, str]) -> None:
    """No certificate, a foreign CA's, or a device's on operator calls: all refused."""
    fleet, _device = small_fleet
    ca_pem = (fleet.controller_dir / "tls" / "ca.pem").read_bytes()
    report = device_pb2.StatusReport(agent_version="x")

    def sync_with(address: str, **credentials: bytes) -> grpc.StatusCode:
        channel = grpc.secure_channel(
            address, grpc.ssl_channel_credentials(root_certificates=ca_pem, **credentials)
        )
        try:
            device_pb2_grpc.DeviceServiceStub(channel).Sync(report, timeout=5)
        except grpc.RpcError as e:
            return e.code()
        finally:
            channel.close()
        return grpc.StatusCode.OK

    assert sync_with(fleet.sync_address) == grpc.StatusCode.UNAVAILABLE  # handshake refused
    foreign = CertificateAuthority.create("elsewhere")
    key = new_tls_key()
    forged = cert_pem(foreign.issue_client(key.public_key(), "device:dev-0000000000000000"))
    assert (
        sync_with(fleet.sync_address, private_key=key_pem(key), certificate_chain=forged)
        == grpc.StatusCode.UNAVAILABLE
    )
    assert sync_with(fleet.enroll_address) == grpc.StatusCode.UNAUTHENTICATED

    identity = fleet.agent_dir("gw") / "identity"
    channel = grpc.secure_channel(
        fleet.sync_address,
        grpc.ssl_channel_credentials(
            root_certificates=ca_pem,
            private_key=(identity / "device.key").read_bytes(),
            certificate_chain=(identity / "device.pem").read_bytes(),
        ),
    )
    with pytest.raises(grpc.RpcError) as denied:
        operator_pb2_grpc.OperatorServiceStub(channel).ListDevices(
            operator_pb2.ListDevicesRequest(), timeout=5
        )
    channel.close()
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_reused_and_expired_tokens_are_refused(small_fleet: tuple[Fleet, str]) -> None:
    """A spent token and an expired one fail enrollment with a one-line reason and exit 1."""
    fleet, _device = small_fleet
    token = fleet.ctl("token", "create", "--label", "site=lab").stdout.strip()
    enroll = [
        "enroll",
        "--controller",
        fleet.enroll_address,
        "--root-fingerprint",
        fleet.fingerprint,
        "--token",
    ]
    assert fleet.agent("a", *enroll, token).returncode == 0
    reused = fleet.agent("b", *enroll, token, check=False)
    assert reused.returncode == 1
    assert reused.stderr.strip() == "edgefleet-agent: error: enrollment token was already used"
    assert not (fleet.agent_dir("b") / "identity" / "enrollment.json").exists()
    short = fleet.ctl("token", "create", "--ttl", "1").stdout.strip()
    time.sleep(1.5)
    expired = fleet.agent("c", *enroll, short, check=False)
    assert expired.returncode == 1 and "expired" in expired.stderr


def test_wrong_root_fingerprint_keeps_the_token_secret(small_fleet: tuple[Fleet, str]) -> None:
    """With a wrong pinned fingerprint the agent never sends the token, which stays usable."""
    fleet, _device = small_fleet
    token = fleet.ctl("token", "create").stdout.strip()
    wrong = fleet.agent(
        "x",
        "enroll",
        "--controller",
        fleet.enroll_address,
        "--token",
        token,
        "--root-fingerprint",
        "0" * 64,
        check=False,
    )
    assert wrong.returncode == 1 and "pinned root fingerprint" in wrong.stderr
    right = fleet.agent(
        "x",
        "enroll",
        "--controller",
        fleet.enroll_address,
        "--token",
        token,
        "--root-fingerprint",
        fleet.fingerprint,
    )
    assert right.returncode == 0


def test_files_that_are_not_gguf_are_refused_at_publish(small_fleet: tuple[Fleet, str]) -> None:
    """A text file and a truncated GGUF are refused; nothing is published or left behind."""
    fleet, _device = small_fleet
    text = fleet.root / "readme.gguf"
    text.write_text("this is not a model\n" * 100)
    refused = fleet.ctl(
        "models", "publish", str(text), "--name", "bad", "--version", "1", check=False
    )
    assert refused.returncode == 1
    assert refused.stderr.strip() == "edgefleetctl: error: not a GGUF file (bad magic)"
    tiny = write_tiny_gguf(fleet.root / "t.gguf")
    truncated = fleet.root / "truncated.gguf"
    truncated.write_bytes(tiny.read_bytes()[:100])
    cut = fleet.ctl(
        "models", "publish", str(truncated), "--name", "bad", "--version", "2", check=False
    )
    assert cut.returncode == 1 and "truncated" in cut.stderr
    assert not list((fleet.controller_dir / "blobs" / "incoming").iterdir())
    ok = fleet.ctl("models", "publish", str(tiny), "--name", "good", "--version", "1").stdout
    assert "targets_version=2" in ok  # the refused uploads signed nothing


def test_bad_cli_input_gets_one_line_errors(small_fleet: tuple[Fleet, str]) -> None:
    """Malformed references, labels, names and duplicate publishes fail with one line and exit 1."""
    fleet, _device = small_fleet
    tiny = write_tiny_gguf(fleet.root / "t.gguf")
    fleet.ctl("models", "publish", str(tiny), "--name", "tiny", "--version", "1")
    cases = [
        (["rollout", "create", "tiny"], "is not NAME@VERSION"),
        (["rollout", "create", "tiny@9"], "tiny@9 is not published"),
        (["models", "publish", str(tiny), "--name", "tiny", "--version", "1"], "already published"),
        (["models", "publish", str(tiny), "--name", "../etc", "--version", "1"], "model name"),
        (
            [
                "models",
                "publish",
                str(fleet.root / "missing.gguf"),
                "--name",
                "x",
                "--version",
                "1",
            ],
            "cannot read",
        ),
        (["token", "create", "--label", "Bad Key=x"], "label"),
    ]
    for args, reason in cases:
        result = fleet.ctl(*args, check=False)
        assert result.returncode == 1, args
        assert reason in result.stderr and len(result.stderr.strip().splitlines()) == 1, (
            result.stderr
        )


def test_model_over_the_memory_budget_is_never_downloaded(small_fleet: tuple[Fleet, str]) -> None:
    """Pre-flight on the device: a model whose estimate exceeds the budget is refused before
    download; the rollout halts on the refusal; then the controller knows the budget and
    `rollout plan` leaves the device out, saying why."""
    fleet, device_id = small_fleet
    fleet.stop("agent-gw")
    publish_tiny(fleet, "1", seed=1)
    created = fleet.ctl("rollout", "create", "tiny@1", "--selector", "site=lab").stdout
    assert "assigned to 1 device(s)" in created  # the controller still thinks it fits
    fleet.start_agent(
        "gw", sync_interval=1, env={"EDGEFLEET_AGENT_MEMORY_BUDGET_BYTES": str(16 * 1024 * 1024)}
    )
    rollout_id = created.split()[1].rstrip(":")
    halted = wait_for(
        "the rollout to halt on the refusal",
        lambda: (
            out if "halted" in (out := fleet.ctl("rollout", "status", rollout_id).stdout) else None
        ),
        60,
    )
    assert "refused to download" in halted and "over the memory budget of 16 MiB" in halted
    assert "tiny" not in models(fleet, "gw")
    assert not list((fleet.agent_dir("gw") / "blobs" / "partial").iterdir())
    refusals = [a for a in agent_actions(fleet, "gw") if a[2] == "refused"]
    assert refusals == [("model.install", "tiny@1", "refused")]  # audited once, not every pass
    plan = fleet.ctl("rollout", "plan", "tiny@1", "--selector", "site=lab").stdout
    assert f"{device_id}: tiny@1 needs" in plan and "over the memory budget of 16 MiB" in plan


def test_signed_export_verifies_offline_and_tampering_is_named(
    small_fleet: tuple[Fleet, str],
) -> None:
    """An export from the controller verifies with only the root fingerprint; an edit is named."""
    fleet, device_id = small_fleet
    wait_for(
        "the enrollment record",
        lambda: True if fleet.devices()[0]["audit_stored_seq"] >= 1 else None,
        30,
    )
    for fmt in ("jsonl", "csv"):
        out = fleet.root / f"export.{fmt}"
        fleet.ctl(
            "audit", "export", "--format", fmt, "--since", "2020-01-01T00:00:00Z", "--out", str(out)
        )
        verified = fleet.run(
            "edgefleetctl", "audit", "verify", str(out), "--root-fingerprint", fleet.fingerprint
        )
        assert verified.returncode == 0 and verified.stdout.strip().endswith(": verified"), (
            verified.stdout
        )
    out = fleet.root / "export.jsonl"

    def device_checkpoints() -> list[object] | None:
        fleet.ctl("audit", "export", "--out", str(out))
        header = json.loads(out.read_bytes().split(b"\n")[0])
        manifest = json.loads(base64.b64decode(header["manifest"]["payload"]))
        return manifest["checkpoints"].get(device_id) or None

    assert wait_for("a device-signed checkpoint in the export", device_checkpoints, 30)
    lines = out.read_bytes().split(b"\n")
    index = next(
        i for i, line in enumerate(lines) if device_id.encode() in line and b'"seq":1' in line
    )
    lines[index] = lines[index].replace(b'"success"', b'"denied"')
    out.write_bytes(b"\n".join(lines))
    tampered = fleet.run(
        "edgefleetctl",
        "audit",
        "verify",
        str(out),
        "--root-fingerprint",
        fleet.fingerprint,
        check=False,
    )
    assert tampered.returncode == 1
    assert f"FAIL record {device_id} #1: altered" in tampered.stdout


def test_audit_query_filters_by_device_actor_action_and_time(
    small_fleet: tuple[Fleet, str],
) -> None:
    """`audit query` finds records by device, actor, action and time range."""
    fleet, device_id = small_fleet
    fleet.ctl("token", "create")
    wait_for(
        "the enrollment record",
        lambda: True if fleet.devices()[0]["audit_stored_seq"] >= 1 else None,
        30,
    )
    by_action = fleet.ctl(
        "audit", "query", "--action", "token.create", "--json"
    ).stdout.splitlines()
    assert len(by_action) == 2 and all(json.loads(r)["action"] == "token.create" for r in by_action)
    mine = fleet.ctl("audit", "query", "--device", device_id, "--actor", "agent").stdout
    assert "device.enroll" in mine and "token.create" not in mine
    assert fleet.ctl("audit", "query", "--until", "2000-01-01T00:00:00Z").stdout == ""
    limited = fleet.ctl("audit", "query", "--limit", "1", "--json")
    assert len(limited.stdout.splitlines()) == 1 and "more than 1 records matched" in limited.stderr
    # The latest records first (an incident is looked into from now backwards); --limit
    # keeps the latest; --oldest-first reads forwards.
    latest = [json.loads(r) for r in fleet.ctl("audit", "query", "--json").stdout.splitlines()]
    times = [r["time"] for r in latest]
    assert times == sorted(times, reverse=True) and len(latest) >= 3
    newest = json.loads(fleet.ctl("audit", "query", "--json", "--limit", "1").stdout)
    assert newest["time"] == times[0]
    earliest = fleet.ctl("audit", "query", "--json", "--oldest-first").stdout.splitlines()
    assert [json.loads(r)["time"] for r in earliest] == sorted(times)
    # --since/--until take dates and times relative to now, as journalctl does.
    assert fleet.ctl("audit", "query", "--since", "-1h", "--json").stdout.splitlines() == (
        fleet.ctl("audit", "query", "--since", "yesterday", "--json").stdout.splitlines()
    )
    assert fleet.ctl("audit", "query", "--until", "2000-01-01").stdout == ""
    bad = fleet.ctl("audit", "query", "--since", "next tuesday", check=False)
    assert bad.returncode == 2 and "'next tuesday' is not a time as journalctl" in bad.stderr


def test_device_exports_its_own_log_for_air_gapped_sites(small_fleet: tuple[Fleet, str]) -> None:
    """The agent exports its own log; the file verifies offline from the root fingerprint."""
    fleet, device_id = small_fleet
    out = fleet.root / "device-export.jsonl"
    printed = fleet.agent("gw", "audit", "export", "--out", str(out)).stdout
    assert f"of {device_id}" in printed
    verified = fleet.run(
        "edgefleetctl", "audit", "verify", str(out), "--root-fingerprint", fleet.fingerprint
    )
    assert verified.returncode == 0 and f"{device_id}: " in verified.stdout, verified.stdout
