"""Each kind of local caller against each API action, allowed and denied as the policy says."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from edgefleet.agent.rbac.policy import merge
from edgefleet.rbac import Binding, Policy, new_token
from tests.agent.test_inference_api import FakeBackend, Harness

ROLES = {
    "inference": frozenset({"inference.invoke", "models.read"}),
    "reader": frozenset({"models.read"}),
}
CALLERS = {
    "anonymous": None,
    "bad-token": "efk_000000000000.wrong",
    "app-inference": ("app:infer", "inference", ("tiny*",), {}),
    "app-reader": ("app:read", "reader", ("*",), {}),
    "app-other-model": ("app:other", "inference", ("big*",), {}),
    "app-other-site": ("app:away", "inference", ("*",), {"site": "elsewhere"}),
    "app-this-site": ("app:here", "inference", ("*",), {"site": "lab"}),
}
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
ACTIONS = {
    "healthz": ("GET", "/healthz", None),
    "metrics": ("GET", "/metrics", None),
    "models": ("GET", "/v1/models", None),
    "chat": ("POST", "/v1/chat/completions", CHAT),
    "completions": ("POST", "/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 1}),
}
ALLOWED = {"healthz", "metrics"}
EXPECTED: dict[str, dict[str, int]] = {
    "anonymous": {"models": 401, "chat": 401, "completions": 401},
    "bad-token": {"models": 401, "chat": 401, "completions": 401},
    "app-inference": {"models": 200, "chat": 200, "completions": 200},
    "app-reader": {"models": 200, "chat": 403, "completions": 403},
    # A model outside the token's patterns answers as an absent one (review hole L9).
    "app-other-model": {"models": 200, "chat": 404, "completions": 404},
    "app-other-site": {"models": 200, "chat": 403, "completions": 403},
    "app-this-site": {"models": 200, "chat": 200, "completions": 200},
}


def _signed_policy() -> tuple[Policy, dict[str, str]]:
    """A signed-style policy with one token per caller kind; returns it and the tokens."""
    tokens, entries, bindings = {}, [], []
    for caller, spec in CALLERS.items():
        if isinstance(spec, tuple):
            subject, role, models, devices = spec
            token, entry = new_token(subject)
            tokens[caller] = token
            entries.append(entry)
            bindings.append(Binding(subject, role, models, devices))
        elif isinstance(spec, str):
            tokens[caller] = spec
    return Policy(7, ROLES, tuple(bindings), tuple(entries)), tokens


@pytest.mark.parametrize("caller", sorted(CALLERS))
def test_local_rbac_matrix(tmp_path: Path, caller: str) -> None:
    """Every caller kind gets exactly the statuses the matrix lists, on every route."""
    harness = Harness(tmp_path, FakeBackend())
    policy, tokens = _signed_policy()
    harness.ctx.policy.set_signed(policy)
    harness.ctx.labels = {"site": "lab"}
    headers = {"Authorization": f"Bearer {tokens[caller]}"} if caller in tokens else {}

    async def scenario(client: TestClient[web.Request, web.Application]) -> dict[str, int]:
        statuses = {}
        for action, (method, path, body) in ACTIONS.items():
            response = await client.request(method, path, json=body, headers=headers)
            statuses[action] = response.status
            if action == "models" and response.status == 200:
                listed = [m["id"] for m in (await response.json())["data"]]
                visible = caller in ("app-inference", "app-reader", "app-this-site")
                assert listed == (["tiny"] if visible else [])
        return statuses

    statuses = harness.run(scenario)
    expected = {action: 200 for action in ALLOWED} | EXPECTED[caller]
    assert statuses == expected


def test_signed_roles_win_and_local_tokens_survive() -> None:
    """Merging keeps the device's own tokens beside the fleet's, with the fleet's roles."""
    local_token, local_entry = new_token("app:local")
    local = Policy(
        1,
        {"inference": frozenset({"models.read"})},
        (Binding("app:local", "inference"),),
        (local_entry,),
    )
    signed, _ = _signed_policy()
    merged = merge(signed, local)
    assert merged.roles["inference"] == ROLES["inference"]
    assert merged.subject_of_token(local_token) == "app:local"
    assert merged.authorize("app:local", "inference.invoke", "tiny")


def test_policy_redacts_audit_fields(tmp_path: Path) -> None:
    """Fields the policy names are replaced in inference audit records; the rest stay."""
    from dataclasses import replace

    harness = Harness(tmp_path, FakeBackend())
    policy, tokens = _signed_policy()
    harness.ctx.policy.set_signed(replace(policy, audit_redact=("actor", "details.sha256")))
    headers = {"Authorization": f"Bearer {tokens['app-inference']}"}

    async def scenario(client: TestClient[web.Request, web.Application]) -> None:
        assert (await client.post("/v1/chat/completions", json=CHAT, headers=headers)).status == 200

    harness.run(scenario)
    record = harness.last_audit()
    assert record["actor"] == "[redacted]" and record["details"]["sha256"] == "[redacted]"
    assert record["target"] == "tiny@1" and record["details"]["completion_tokens"] == 1


def test_redaction_fields_are_validated() -> None:
    """A policy may redact only actor, target or details.<key>."""
    from edgefleet.errors import MalformedInputError

    assert Policy.from_payload(b'{"version": 1, "audit_redact": ["details.x"]}').audit_redact == (
        "details.x",
    )
    with pytest.raises(MalformedInputError, match="audit_redact"):
        Policy.from_payload(b'{"version": 1, "audit_redact": ["seq"]}')
