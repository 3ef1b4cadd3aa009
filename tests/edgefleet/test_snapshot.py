"""Thresholds, timestamps and snapshots: what a sync may and may not make the agent trust."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from edgefleet.canonical import canonical_bytes
from edgefleet.errors import (
    ExpiredMetadataError,
    MalformedInputError,
    RollbackError,
    SignatureError,
    SnapshotMismatchError,
)
from edgefleet.rbac import Policy
from edgefleet.trust.envelope import Envelope, Signature, sign_envelope
from edgefleet.trust.keys import SigningKey
from edgefleet.trust.metadata import POLICY_TYPE, RoleKeys, Root
from edgefleet.trust.verifier import TrustedState, root_fingerprint
from tests.edgefleet.trustkit import NOW, Fleet, manifest


def _state(fleet: Fleet) -> TrustedState:
    v1 = fleet.sign_root(fleet.root(), *fleet.role_keys("root"))
    return TrustedState.bootstrap(root_fingerprint(v1), [v1], NOW)


def _policy(fleet: Fleet, version: int) -> Envelope:
    policy = Policy(version, {"r": frozenset({"inference.invoke"})}, expires=NOW + timedelta(30))
    return sign_envelope(POLICY_TYPE, policy.to_payload(), [fleet.keys["policy"]])


def _threshold_fleet() -> Fleet:
    fleet = Fleet()
    fleet.extra["targets"] = [SigningKey.generate(), SigningKey.generate()]
    fleet.thresholds["targets"] = 2
    return fleet


def test_a_threshold_of_distinct_keys_is_needed() -> None:
    """2-of-3 targets: two distinct keys pass; one key, even signing twice, does not."""
    fleet = _threshold_fleet()
    state = _state(fleet)
    a, b, _ = fleet.role_keys("targets")
    assert state.update_targets(fleet.targets(2, manifest(), signers=[a, b]), NOW).targets
    single = fleet.targets(2, manifest(), signers=[a])
    with pytest.raises(SignatureError, match="1 valid signature.*threshold is 2"):
        state.update_targets(single, NOW)
    doubled = Envelope(single.payload_type, single.payload, single.signatures * 2)
    with pytest.raises(SignatureError, match="threshold is 2"):
        state.update_targets(doubled, NOW)


def test_a_forged_signature_from_a_named_key_does_not_count() -> None:
    """A signature entry naming a trusted key id but not made by it is ignored."""
    fleet = _threshold_fleet()
    a, b, _ = fleet.role_keys("targets")
    good = fleet.targets(2, manifest(), signers=[a])
    forged = Envelope(
        good.payload_type, good.payload, (*good.signatures, Signature(b.keyid, b"\0" * 64))
    )
    with pytest.raises(SignatureError, match="threshold is 2"):
        _state(fleet).update_targets(forged, NOW)


def test_a_root_key_may_not_sign_for_an_online_role() -> None:
    """Role separation: a root that lets the offline root key sign targets is malformed,
    whether it is built (before signing) or read (bytes from elsewhere)."""
    fleet = Fleet()
    root = fleet.root()
    roles = dict(root.roles)
    roles["targets"] = RoleKeys((fleet.keys["root"].keyid,), 1)
    with pytest.raises(MalformedInputError, match="also signs for an online role"):
        Root(root.version, root.expires, root.keys, roles, root.ca_sha256)
    doc = json.loads(root.to_payload())
    doc["roles"]["targets"]["keyids"] = [fleet.keys["root"].keyid]
    with pytest.raises(MalformedInputError, match="also signs for an online role"):
        Root.from_payload(canonical_bytes(doc))


def test_a_snapshot_is_accepted_whole() -> None:
    """Timestamp, targets and policy it names are accepted together."""
    fleet = Fleet()
    targets, policy = fleet.targets(1, manifest()), _policy(fleet, 1)
    state = _state(fleet).update_snapshot(fleet.timestamp(1, targets, policy), targets, policy, NOW)
    assert state.timestamp and state.timestamp.version == 1
    assert state.targets and state.policy and state.policy.version == 1


def test_targets_from_an_older_snapshot_are_refused() -> None:
    """Mix-and-match: a new timestamp with targets it does not name is refused as a whole."""
    fleet = Fleet()
    old, new = fleet.targets(1, manifest()), fleet.targets(2, manifest(), manifest("n"))
    state = _state(fleet)
    with pytest.raises(SnapshotMismatchError, match="targets version 1 is not the targets"):
        state.update_snapshot(fleet.timestamp(2, new), old, None, NOW)
    # Nothing of the refused snapshot was kept: the state is unchanged.
    assert state.timestamp is None and state.targets is None


def test_a_policy_the_timestamp_does_not_name_is_refused() -> None:
    """A policy must be the one the timestamp names, and must be sent when named."""
    fleet = Fleet()
    targets = fleet.targets(1, manifest())
    state = _state(fleet)
    with pytest.raises(SnapshotMismatchError, match="does not name"):
        state.update_snapshot(fleet.timestamp(1, targets), targets, _policy(fleet, 1), NOW)
    named = fleet.timestamp(1, targets, _policy(fleet, 2))
    with pytest.raises(SnapshotMismatchError, match="policy version 1 is not"):
        state.update_snapshot(named, targets, _policy(fleet, 1), NOW)
    with pytest.raises(SnapshotMismatchError, match="none was sent"):
        state.update_snapshot(named, targets, None, NOW)


def test_timestamp_rollback_and_freeze_are_refused() -> None:
    """An older timestamp is a rollback; an expired one, even unchanged, is a freeze."""
    fleet = Fleet()
    targets = fleet.targets(1, manifest())
    state = _state(fleet).update_snapshot(fleet.timestamp(5, targets), targets, None, NOW)
    with pytest.raises(RollbackError, match="timestamp version 4 is lower"):
        state.update_snapshot(fleet.timestamp(4, targets), targets, None, NOW)
    stale = fleet.timestamp(6, targets, expires=NOW - timedelta(minutes=1))
    with pytest.raises(ExpiredMetadataError, match="timestamp version 6 expired"):
        state.update_snapshot(stale, targets, None, NOW)
    assert state.timestamp_envelope is not None
    with pytest.raises(ExpiredMetadataError):
        state.update_snapshot(state.timestamp_envelope, targets, None, NOW + timedelta(days=2))


def test_a_timestamp_from_the_wrong_role_is_refused() -> None:
    """The targets key cannot vouch for freshness."""
    fleet = Fleet()
    targets = fleet.targets(1, manifest())
    forged = fleet.timestamp(1, targets, signers=[fleet.keys["targets"]])
    with pytest.raises(SignatureError, match="timestamp"):
        _state(fleet).update_snapshot(forged, targets, None, NOW)


def test_root_rotation_to_a_threshold_needs_enough_old_and_new_keys() -> None:
    """Root v2 raising the root role to 2-of-2 needs v1's key and both of v2's keys."""
    fleet = Fleet()
    state = _state(fleet)
    old_root_key = fleet.keys["root"]
    fleet.extra["root"] = [SigningKey.generate()]
    fleet.thresholds["root"] = 2
    v2 = fleet.root(version=2)
    with pytest.raises(SignatureError, match="root: 1 valid signature"):
        state.update_root_chain([fleet.sign_root(v2, old_root_key)], NOW)
    signed = fleet.sign_root(v2, old_root_key, fleet.extra["root"][0])
    assert state.update_root_chain([signed], NOW).root.version == 2
