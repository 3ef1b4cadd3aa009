"""Validate before you sign: every signed document is built by the validating constructor
its parser uses, and signing refuses what a device would refuse to read (review hole H1)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import pytest

from edgefleet.canonical import canonical_bytes
from edgefleet.errors import MalformedInputError
from edgefleet.rbac import Policy
from edgefleet.trust.envelope import sign_document
from edgefleet.trust.keys import SigningKey
from edgefleet.trust.metadata import (
    TARGETS_TYPE,
    MetaRef,
    ModelManifest,
    Targets,
    Timestamp,
)
from tests.edgefleet.trustkit import NOW, manifest

GOOD = manifest()


@pytest.mark.parametrize(
    "field, value, reason",
    [
        ("kv_bytes_per_token", -5, "kv_bytes_per_token -5 is outside"),
        ("context_length", -5, "context_length -5 is outside"),
        ("parameter_count", -1, "parameter_count -1 is outside"),
        ("length", 0, "length 0 is outside"),
        ("length", 2**60, "length .* is outside"),
        ("kv_bytes_per_token", True, "not int"),
        ("architecture", "llama\x1b[2J", "architecture"),
        ("quantization", "Q4_0; rm -rf", "quantization"),
        ("sha256", "AB" * 32, "sha256 is not a hex SHA-256"),
        ("chunk_size", 1000, "chunk size 1000"),
        ("name", "../etc", "model name"),
    ],
)
def test_a_manifest_that_a_device_would_refuse_cannot_be_built(
    field: str, value: object, reason: str
) -> None:
    """The constructor refuses it, so the controller never gets as far as signing it."""
    with pytest.raises(MalformedInputError, match=reason):
        replace(GOOD, **{field: value})  # type: ignore[arg-type]  # deliberately wrong


def test_parsing_uses_the_same_checks_as_building() -> None:
    """A manifest read from JSON is refused for exactly what building it refuses."""
    doc = {**GOOD.to_dict(), "kv_bytes_per_token": -5}
    with pytest.raises(MalformedInputError, match="kv_bytes_per_token -5 is outside"):
        ModelManifest.from_dict(doc)
    assert ModelManifest.from_dict(GOOD.to_dict()) == GOOD


@pytest.mark.parametrize(
    "build",
    [
        lambda: Targets(0, NOW, {}),
        lambda: Targets(1, NOW, {"other@1": GOOD}),
        lambda: MetaRef(1, "not-a-digest"),
        lambda: Timestamp(-1, NOW, MetaRef(1, "ab" * 32), None),
    ],
)
def test_targets_and_timestamps_validate_when_built(build: object) -> None:
    """Versions below 1, a ref naming another model and bad digests are refused at once."""
    with pytest.raises(MalformedInputError):
        build()


def test_signing_parses_the_bytes_back_first() -> None:
    """A document whose bytes would not parse back to itself is never signed."""
    key = SigningKey.generate()
    targets = Targets(1, NOW + timedelta(days=1), {GOOD.ref: GOOD})
    envelope = sign_document(targets, [key])
    assert envelope.payload_type == TARGETS_TYPE
    assert Targets.from_payload(envelope.payload) == targets

    class Drifting(Targets):
        def to_payload(self) -> bytes:  # encodes something other than itself
            doc = json.loads(super().to_payload())
            doc["models"][GOOD.ref]["kv_bytes_per_token"] = -5
            return canonical_bytes(doc)

    with pytest.raises(MalformedInputError, match="kv_bytes_per_token"):
        drifting = Drifting(1, NOW + timedelta(days=1), {GOOD.ref: GOOD})
        sign_document(drifting, [key])  # type: ignore[arg-type]  # its parser returns Targets


def test_a_policy_round_trips_through_signing() -> None:
    """Policies (with operator roles) are signed through the same parse-back check."""
    policy = Policy(
        3,
        {"inference": frozenset({"inference.invoke"})},
        operator_roles={"issuer": frozenset({"tokens.manage", "policy.read"})},
        expires=NOW,
    )
    envelope = sign_document(policy, [SigningKey.generate()])
    assert Policy.from_payload(envelope.payload) == policy
