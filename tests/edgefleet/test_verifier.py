"""The trust state machine refuses wrong keys, rollback, freeze and broken root chains."""

from __future__ import annotations

from datetime import timedelta

import pytest

from edgefleet.errors import (
    ExpiredMetadataError,
    MalformedInputError,
    NotFoundError,
    RollbackError,
    SignatureError,
)
from edgefleet.rbac import Policy
from edgefleet.trust.envelope import Envelope, sign_envelope
from edgefleet.trust.keys import SigningKey
from edgefleet.trust.metadata import POLICY_TYPE
from edgefleet.trust.verifier import TrustedState, root_fingerprint
from tests.edgefleet.trustkit import NOW, Fleet, manifest


def _state(fleet: Fleet) -> TrustedState:
    v1 = fleet.sign_root(fleet.root())
    return TrustedState.bootstrap(root_fingerprint(v1), [v1], NOW)


def test_bootstrap_accepts_the_pinned_root() -> None:
    """Root v1 whose payload hash equals the pinned fingerprint becomes trusted."""
    fleet = Fleet()
    assert _state(fleet).root.version == 1


def test_bootstrap_refuses_a_root_with_another_fingerprint() -> None:
    """A different (self-consistent) root is refused: its fingerprint is not the pinned one."""
    pinned = Fleet().sign_root(Fleet().root())
    impostor_fleet = Fleet()
    impostor = impostor_fleet.sign_root(impostor_fleet.root())
    with pytest.raises(SignatureError, match="pinned root fingerprint"):
        TrustedState.bootstrap(root_fingerprint(pinned), [impostor], NOW)


def test_targets_signed_by_a_key_the_root_does_not_name_are_refused() -> None:
    """Targets metadata signed by a rogue key is refused, even if otherwise valid."""
    fleet = Fleet()
    rogue = fleet.targets(2, manifest(), signer=SigningKey.generate())
    with pytest.raises(SignatureError, match="targets"):
        _state(fleet).update_targets(rogue, NOW)


def test_targets_signed_by_another_role_are_refused() -> None:
    """The root key itself may not sign targets: roles are separate."""
    fleet = Fleet()
    wrong_role = fleet.targets(2, manifest(), signer=fleet.keys["root"])
    with pytest.raises(SignatureError):
        _state(fleet).update_targets(wrong_role, NOW)


def test_targets_rollback_is_refused() -> None:
    """After version 3, version 2 is refused."""
    fleet = Fleet()
    state = _state(fleet).update_targets(fleet.targets(3, manifest()), NOW)
    with pytest.raises(RollbackError):
        state.update_targets(fleet.targets(2, manifest()), NOW)


def test_reused_targets_version_with_other_content_is_refused() -> None:
    """The same version number with different content is refused; identical content is a no-op."""
    fleet = Fleet()
    first = fleet.targets(3, manifest("a"))
    state = _state(fleet).update_targets(first, NOW)
    assert state.update_targets(first, NOW) is state
    with pytest.raises(RollbackError, match="reused"):
        state.update_targets(fleet.targets(3, manifest("b")), NOW)


def test_expired_targets_are_refused_when_new() -> None:
    """Freshly received targets past their expiry are refused (freeze attack)."""
    fleet = Fleet()
    stale = fleet.targets(2, manifest(), expires=NOW - timedelta(seconds=1))
    with pytest.raises(ExpiredMetadataError):
        _state(fleet).update_targets(stale, NOW)


def test_stored_targets_reverify_without_expiry() -> None:
    """Offline-first: already trusted targets re-verify after they expire (now=None)."""
    fleet = Fleet()
    envelope = fleet.targets(2, manifest(), expires=NOW + timedelta(seconds=1))
    state = _state(fleet).update_targets(envelope, NOW)
    assert state.update_targets(envelope, None).targets is not None


def test_root_rotation_needs_old_and_new_keys() -> None:
    """Root v2 must be signed by v1's root key and by its own; either alone is refused."""
    fleet = Fleet()
    v1 = fleet.sign_root(fleet.root())
    old_root_key = fleet.keys["root"]
    fleet.keys["root"] = SigningKey.generate()
    v2 = fleet.root(version=2)
    state = TrustedState.bootstrap(root_fingerprint(v1), [v1], NOW)
    with pytest.raises(SignatureError):
        state.update_root_chain([v1, fleet.sign_root(v2, fleet.keys["root"])], NOW)
    with pytest.raises(SignatureError):
        state.update_root_chain([v1, fleet.sign_root(v2, old_root_key)], NOW)
    rotated = state.update_root_chain(
        [v1, fleet.sign_root(v2, old_root_key, fleet.keys["root"])], NOW
    )
    assert rotated.root.version == 2


def test_root_chain_may_not_skip_versions() -> None:
    """Going from v1 straight to v3 is refused."""
    fleet = Fleet()
    v1 = fleet.sign_root(fleet.root())
    v3 = fleet.sign_root(fleet.root(version=3))
    with pytest.raises(MalformedInputError, match="skips"):
        TrustedState.bootstrap(root_fingerprint(v1), [v1, v3], NOW)


def test_manifest_lookup() -> None:
    """A trusted manifest is found by name and version; others are NotFound."""
    fleet = Fleet()
    state = _state(fleet).update_targets(fleet.targets(2, manifest("m", "1")), NOW)
    assert state.manifest("m", "1").sha256 == "cd" * 32
    with pytest.raises(NotFoundError):
        state.manifest("m", "2")


def _policy_envelope(
    fleet: Fleet, version: int, signer: SigningKey | None = None, days: int = 30
) -> Envelope:
    policy = Policy(
        version, {"r": frozenset({"inference.invoke"})}, expires=NOW + timedelta(days=days)
    )
    return sign_envelope(POLICY_TYPE, policy.to_payload(), [signer or fleet.keys["policy"]])


def test_policy_rollback_is_refused() -> None:
    """A signed policy older than the installed one is refused (revocations stick)."""
    fleet = Fleet()
    state = _state(fleet).update_policy(_policy_envelope(fleet, 5), NOW)
    assert state.policy is not None and state.policy.version == 5
    with pytest.raises(RollbackError, match="policy version 4 is lower"):
        state.update_policy(_policy_envelope(fleet, 4), NOW)


def test_policy_needs_the_policy_role_and_freshness() -> None:
    """A policy signed by the targets key, or already expired, is refused."""
    fleet = Fleet()
    with pytest.raises(SignatureError, match="policy"):
        _state(fleet).update_policy(_policy_envelope(fleet, 1, signer=fleet.keys["targets"]), NOW)
    with pytest.raises(ExpiredMetadataError):
        _state(fleet).update_policy(_policy_envelope(fleet, 1, days=-1), NOW)
