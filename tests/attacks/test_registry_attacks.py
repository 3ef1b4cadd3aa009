"""The attack suite: one test per attack on the registry. In each, the device refuses with a
specific error, audits the refusal, and the version it was serving keeps serving, intact."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from edgefleet.agent.registry.bundles import import_bundle
from edgefleet.bundle import BundleHeader, write_bundle
from edgefleet.errors import MalformedInputError, SignatureError
from edgefleet.trust.chunks import ChunkIndex
from edgefleet.trust.envelope import sign_envelope
from edgefleet.trust.keys import SigningKey
from edgefleet.trust.metadata import TARGETS_TYPE, format_time
from tests.attacks.kit import (
    CHUNK,
    Device,
    make_device,
    make_model,
    newer,
    now,
    with_v1_serving,
)
from tests.edgefleet.trustkit import Fleet


@pytest.fixture
def device(tmp_path: Path) -> Iterator[Device]:
    made = make_device(tmp_path)
    yield made
    made.close()


def _serve_v2_signed_by(device: Device, signers: list[SigningKey]) -> None:
    """Targets naming m@2 signed by ``signers``, with an honest timestamp naming them."""
    controller = device.controller
    v2 = newer(device)
    controller.models[v2.manifest.ref] = v2
    controller.blobs[v2.manifest.sha256] = v2.data
    controller.targets = controller.sign_targets([v2], signers=signers)
    controller.timestamp = controller.sign_timestamp(controller.targets, None)
    controller.assign("m@2")


def _refused(device: Device, action: str, error: str) -> bool:
    return any(r[0] == action and r[3] == error for r in device.refusals())


def test_arbitrary_blob_is_refused(device: Device) -> None:
    """The controller serves other bytes of the right length for m@2: hash mismatch."""
    with_v1_serving(device)
    v2 = newer(device)
    device.controller.publish(v2)
    device.controller.assign("m@2")
    device.controller.blobs[v2.manifest.sha256] = bytes(len(v2.data))
    assert "chunk 0 does not match its signed hash" in device.sync()
    assert _refused(device, "model.install", "HashMismatchError")
    assert device.serving_intact("m@1")
    assert not device.blobs.path_of(v2.manifest.sha256).exists()


def test_targets_from_a_wrong_signer_are_refused(device: Device) -> None:
    """Targets signed by a key the root does not name (a stolen controller's own key)."""
    with_v1_serving(device)
    _serve_v2_signed_by(device, [SigningKey.generate()])
    assert "targets: 0 valid signature" in device.sync()
    assert _refused(device, "trust.verify", "SignatureError")
    assert device.serving_intact("m@1")


def test_targets_below_threshold_are_refused(tmp_path: Path) -> None:
    """The root requires 2 of 2 targets keys; one stolen key is not enough."""
    fleet = Fleet()
    fleet.extra["targets"] = [SigningKey.generate()]
    fleet.thresholds["targets"] = 2
    device = make_device(tmp_path, fleet)
    try:
        with_v1_serving(device)
        _serve_v2_signed_by(device, [fleet.keys["targets"]])
        assert "1 valid signature(s) from its keys, threshold is 2" in device.sync()
        assert _refused(device, "trust.verify", "SignatureError")
        assert device.serving_intact("m@1")
    finally:
        device.close()


def test_targets_rollback_is_refused(device: Device) -> None:
    """After targets v2, an older targets version (freshly timestamped) is refused."""
    v1 = with_v1_serving(device)
    controller = device.controller
    old_targets = controller.targets
    controller.publish(newer(device))
    assert device.sync() == ""
    assert old_targets is not None
    controller.targets = old_targets
    controller.timestamp = controller.sign_timestamp(old_targets, None)
    assert "targets version 1 is lower than trusted version 2" in device.sync()
    assert _refused(device, "trust.verify", "RollbackError")
    assert device.serving_intact(v1.manifest.ref)


def test_policy_rollback_is_refused(device: Device) -> None:
    """A revoked-token policy cannot be undone by replaying the previous policy version."""
    with_v1_serving(device)
    controller = device.controller
    controller.publish(with_policy=True)
    first_policy = controller.policy
    controller.publish(with_policy=True)
    assert device.sync() == ""
    controller.policy = first_policy
    controller.timestamp = controller.sign_timestamp(controller.targets, first_policy)  # type: ignore[arg-type]
    assert "policy version 1 is lower than trusted version 2" in device.sync()
    assert _refused(device, "trust.verify", "RollbackError")
    assert device.serving_intact("m@1")


def test_timestamp_rollback_is_refused(device: Device) -> None:
    """An older timestamp, even validly signed and unexpired, is refused."""
    with_v1_serving(device)
    controller = device.controller
    old = controller.timestamp
    controller.publish()
    assert device.sync() == ""
    controller.timestamp = old
    assert "timestamp version 1 is lower than trusted version 2" in device.sync()
    assert _refused(device, "trust.verify", "RollbackError")
    assert device.serving_intact("m@1")


def test_root_rollback_is_refused(device: Device) -> None:
    """After rotating to root v2, a different root v2 (signed with the old, leaked root key)
    is refused: the trusted root never goes back or sideways."""
    with_v1_serving(device)
    controller, fleet = device.controller, device.controller.fleet
    old_root_key = fleet.keys["root"]
    fleet.keys["root"] = SigningKey.generate()
    v2 = fleet.root(version=2, expires=now() + timedelta(days=365))
    controller.root_chain.append(fleet.sign_root(v2, old_root_key, fleet.keys["root"]))
    assert device.sync() == ""
    assert device.syncer.trust.root.version == 2
    forked_fleet = Fleet(keys={**fleet.keys, "root": old_root_key})
    fork = forked_fleet.sign_root(forked_fleet.root(version=2, expires=now() + timedelta(days=9)))
    controller.root_chain[1] = fork
    assert "root version 2 differs from the trusted one" in device.sync()
    assert _refused(device, "trust.verify", "RollbackError")
    assert device.serving_intact("m@1")


def test_freeze_with_expired_metadata_is_refused(device: Device) -> None:
    """A replayed timestamp past its expiry is refused; serving goes on from the last state."""
    with_v1_serving(device)
    controller = device.controller
    controller.publish(newer(device))
    controller.timestamp = controller.sign_timestamp(
        controller.targets,  # type: ignore[arg-type]
        None,
        expires=now() - timedelta(minutes=1),
    )
    controller.assign("m@2")
    assert "expired" in device.sync()
    assert _refused(device, "trust.verify", "ExpiredMetadataError")
    assert device.serving_intact("m@1")


def test_mix_and_match_is_refused(device: Device) -> None:
    """A new timestamp served with targets from an older snapshot is refused as a whole."""
    with_v1_serving(device)
    controller = device.controller
    controller.publish(newer(device, "2", seed=2))
    older_snapshot_targets = controller.targets
    controller.publish(newer(device, "3", seed=3))
    controller.targets = older_snapshot_targets  # the timestamp names targets v3
    controller.assign("m@2")
    assert "targets version 2 is not the targets version 3" in device.sync()
    assert _refused(device, "trust.verify", "SnapshotMismatchError")
    assert device.serving_intact("m@1")


def test_endless_data_is_cut_at_the_manifest_length(device: Device) -> None:
    """A source that never stops sending is cut off within one chunk past the length."""
    with_v1_serving(device)
    controller = device.controller
    v2 = newer(device)
    controller.publish(v2)
    controller.assign("m@2")
    controller.endless = v2.manifest.sha256
    served_before = controller.bytes_served
    assert "longer than its manifest" in device.sync()
    served = controller.bytes_served - served_before - len(v2.index)
    assert v2.manifest.length < served <= v2.manifest.length + CHUNK
    assert _refused(device, "model.install", "HashMismatchError")
    assert device.serving_intact("m@1")


def test_stalled_download_is_abandoned_then_resumed(device: Device) -> None:
    """A source that stops sending is dropped after download_stall_seconds; the next sync
    resumes from the verified chunks instead of starting over."""
    with_v1_serving(device)
    controller = device.controller
    v2 = newer(device)
    controller.publish(v2)
    controller.assign("m@2")
    controller.stall_after = controller.bytes_served + len(v2.index) + 3 * CHUNK
    assert "stalled: nothing received for 2 s" in device.sync()
    assert _refused(device, "model.download", "TransportError")
    assert device.serving_intact("m@1")
    controller.stall_after = None
    assert device.sync() == ""
    resumed_at = controller.reads[-1][1]
    assert controller.reads[-1][0] == v2.manifest.sha256 and resumed_at == 3 * CHUNK
    assert device.active("m") == "2"


def test_root_rotation_is_followed_and_skips_or_bad_signatures_refused(device: Device) -> None:
    """Root v2 signed by old and new keys is followed; a chain skipping v3, or a v3 signed
    without a threshold of the old root keys, is refused."""
    with_v1_serving(device)
    controller, fleet = device.controller, device.controller.fleet
    old = fleet.keys["root"]
    fleet.keys["root"] = SigningKey.generate()
    controller.root_chain.append(
        fleet.sign_root(fleet.root(2, now() + timedelta(days=365)), old, fleet.keys["root"])
    )
    assert device.sync() == ""
    assert device.syncer.trust.root.version == 2
    v4 = fleet.sign_root(fleet.root(4, now() + timedelta(days=365)))
    controller.root_chain.append(v4)
    assert "root chain skips from version 2 to 4" in device.sync()
    assert _refused(device, "trust.verify", "MalformedInputError")
    new_key = SigningKey.generate()
    fleet.keys["root"] = new_key
    controller.root_chain[-1] = fleet.sign_root(fleet.root(3, now() + timedelta(days=365)), new_key)
    assert "root: 0 valid signature" in device.sync()
    assert _refused(device, "trust.verify", "SignatureError")
    assert device.syncer.trust.root.version == 2
    assert device.serving_intact("m@1")


def test_malicious_gguf_header_is_refused_before_llama_cpp(device: Device) -> None:
    """A correctly signed file whose header claims 2^40 tensors never gets installed."""
    with_v1_serving(device)
    controller = device.controller
    v2 = newer(device)
    hostile = bytearray(v2.data)
    hostile[8:16] = (2**40).to_bytes(8, "little")  # tensor count
    bad = make_model(device.folder, "m", "2", seed=2)
    index = ChunkIndex.of_chunks(
        [bytes(hostile[i : i + CHUNK]) for i in range(0, len(hostile), CHUNK)], CHUNK
    )
    bad.manifest = replace(
        bad.manifest, sha256=hashlib.sha256(hostile).hexdigest(), chunks_sha256=index.sha256
    )
    bad.data, bad.index = bytes(hostile), index.to_bytes()
    controller.publish(bad)
    controller.assign("m@2")
    assert "too many" in device.sync()
    assert _refused(device, "model.install", "MalformedInputError")
    assert device.serving_intact("m@1")
    assert not device.blobs.partial_of(bad.manifest.sha256).exists()


def test_path_traversal_in_signed_metadata_is_refused(device: Device, tmp_path: Path) -> None:
    """A model name or blob name that would leave the data directory is refused at parse,
    even when correctly signed; nothing is written outside the data directory."""
    with_v1_serving(device)
    controller = device.controller
    v1 = controller.models["m@1"]
    for field, value in (("name", "../../../../tmp/evil"), ("sha256", "../" * 10 + "x")):
        doc = v1.manifest.to_dict() | {field: value}
        ref = f"{doc['name']}@1"
        payload = json.dumps(
            {
                "_type": "targets",
                "spec_version": "1",
                "version": controller.targets_version + 1,
                "expires": format_time(now() + timedelta(days=3)),
                "models": {ref: doc},
            }
        ).encode()
        controller.targets = sign_envelope(
            TARGETS_TYPE, payload, [controller.fleet.keys["targets"]]
        )
        controller.timestamp = controller.sign_timestamp(controller.targets, None)
        error = device.sync()
        assert "must be 1-64 chars" in error or "not a hex SHA-256" in error
        assert _refused(device, "trust.verify", "MalformedInputError")
    assert not list(tmp_path.parent.glob("evil*")) and not Path("/tmp/evil").exists()
    assert device.serving_intact("m@1")


def test_a_bundle_from_another_fleet_is_refused(device: Device, tmp_path: Path) -> None:
    """A bundle signed by another fleet's keys (self-consistent) is refused and audited."""
    with_v1_serving(device)
    stranger = make_device(tmp_path / "stranger")
    try:
        model = make_model(tmp_path, "m", "9", seed=9)
        stranger.controller.publish(model)
        controller = stranger.controller
        header = BundleHeader(
            model.manifest.ref,
            tuple(controller.root_chain),
            controller.timestamp,  # type: ignore[arg-type]
            controller.targets,  # type: ignore[arg-type]
            None,
        )
        path = tmp_path / "foreign.bundle"
        with path.open("wb") as out:
            write_bundle(
                out,
                header,
                model.index,
                model.manifest.chunks_sha256,
                model.manifest.sha256,
                model.manifest.length,
                iter([model.data]),
            )
        with pytest.raises(SignatureError, match="belongs to another fleet"):
            import_bundle(device.registry, device.config, device.fingerprint, path, True)
        assert _refused(device, "model.import", "SignatureError")
        assert device.serving_intact("m@1")
    finally:
        stranger.close()


def test_a_truncated_or_non_bundle_file_is_refused(device: Device, tmp_path: Path) -> None:
    """Junk is refused with a one-line reason; nothing changes."""
    with_v1_serving(device)
    junk = tmp_path / "junk.bundle"
    junk.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(MalformedInputError, match="not a model bundle"):
        import_bundle(device.registry, device.config, device.fingerprint, junk, True)
    assert _refused(device, "model.import", "MalformedInputError")
    assert device.serving_intact("m@1")


def test_scrub_finds_a_flipped_byte_and_repair_refetches_only_that_chunk(device: Device) -> None:
    """Scrub quarantines a blob with one flipped byte; the repair fetches one chunk only."""
    v1 = with_v1_serving(device)
    path = device.blobs.path_of(v1.manifest.sha256)
    path.chmod(0o644)
    with path.open("r+b") as f:
        f.seek(2 * CHUNK + 123)
        byte = f.read(1)
        f.seek(2 * CHUNK + 123)
        f.write(bytes([byte[0] ^ 0xFF]))
    path.chmod(0o444)
    served = device.controller.bytes_served
    asyncio.run(device.syncer.scrub())
    records = device.audit_records()
    corrupt = [r for r in records if r["action"] == "model.verify"]
    assert corrupt and corrupt[-1]["outcome"] == "corrupt"
    assert corrupt[-1]["details"]["bad_chunks"] == [2]
    repaired = [r for r in records if r["action"] == "model.repair"]
    assert repaired and repaired[-1]["details"] == {"chunks": [2], "bytes_fetched": CHUNK}
    assert device.controller.bytes_served - served == CHUNK
    assert device.controller.reads[-1] == (v1.manifest.sha256, 2 * CHUNK, CHUNK)
    assert device.serving_intact("m@1")
    assert not device.blobs.quarantined_of(v1.manifest.sha256).exists()
