"""The walking skeleton as real processes: publish, enroll, roll out, verify, serve, audit."""

from __future__ import annotations

import json
import stat
from collections import defaultdict

import pytest

from demo import Fleet, http_json, wait_for
from edgefleet.audit import verify_chain
from edgefleet.bundled import bundled_model_path
from edgefleet.files import sha256_of_file

pytestmark = [pytest.mark.integration, pytest.mark.model]


def _agent_records(fleet: Fleet, name: str) -> list[dict[str, object]]:
    from agent.service import LocalState

    state = LocalState.open(fleet.agent_dir(name))
    try:
        return [json.loads(r) for r in state.audit.all_records()]
    finally:
        state.db.dispose()


def test_model_is_installed_only_after_verification(model_fleet: tuple[Fleet, str, str]) -> None:
    """The installed blob is the published file, read-only, and installed after enrollment."""
    fleet, _device, api = model_fleet
    expected = sha256_of_file(bundled_model_path())
    listed = http_json(f"http://{api}/v1/models")["data"]
    assert [(m["id"], m["version"], m["sha256"]) for m in listed] == [("smollm2", "1.0", expected)]
    blob = fleet.agent_dir("gw1") / "blobs" / "sha256" / expected
    assert sha256_of_file(blob) == expected
    assert stat.S_IMODE(blob.stat().st_mode) == 0o444
    assert not list((fleet.agent_dir("gw1") / "blobs" / "partial").iterdir())
    actions = [r["action"] for r in _agent_records(fleet, "gw1")]
    assert actions[:3] == ["device.enroll", "model.install", "model.activate"]


def test_answer_comes_from_the_real_model(model_fleet: tuple[Fleet, str, str]) -> None:
    """A chat completion returns the model's text with token usage; same seed, same answer."""
    _fleet, _device, api = model_fleet
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Which city is the capital of France?"}],
        "max_tokens": 24,
        "temperature": 0,
        "seed": 1,
    }
    first = http_json(f"http://{api}/v1/chat/completions", body)
    second = http_json(f"http://{api}/v1/chat/completions", body)
    text = first["choices"][0]["message"]["content"]
    assert "Paris" in text
    assert text == second["choices"][0]["message"]["content"]
    assert first["usage"]["prompt_tokens"] > 10 and 0 < first["usage"]["completion_tokens"] <= 24
    assert first["model"] == "smollm2"


def test_openai_client_streams_from_the_agent(model_fleet: tuple[Fleet, str, str]) -> None:
    """The official `openai` client streams a chat completion from the local API."""
    openai = pytest.importorskip("openai")
    _fleet, _device, api = model_fleet
    client = openai.OpenAI(base_url=f"http://{api}/v1", api_key="unused")
    stream = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=12,
        temperature=0,
        stream=True,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert [m.id for m in client.models.list().data] == ["smollm2"]


def test_api_errors_use_openai_shape(model_fleet: tuple[Fleet, str, str]) -> None:
    """Unknown models are 404 and bad parameters 400, in OpenAI's error JSON."""
    import urllib.error

    _fleet, _device, api = model_fleet
    cases = [
        ({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, 404),
        ({"model": "smollm2", "messages": []}, 400),
        (
            {"model": "smollm2", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1},
            400,
        ),
        (
            {
                "model": "smollm2",
                "messages": [{"role": "user", "content": "x"}],
                "temperature": "hot",
            },
            400,
        ),
    ]
    for body, status in cases:
        with pytest.raises(urllib.error.HTTPError) as error:
            http_json(f"http://{api}/v1/chat/completions", body)
        assert error.value.code == status
        assert json.loads(error.value.read())["error"]["type"] == "invalid_request_error"


def test_controller_holds_intact_audit_chains(model_fleet: tuple[Fleet, str, str]) -> None:
    """The export holds enrollment, install and inference records in intact chains."""
    fleet, device_id, api = model_fleet
    http_json(
        f"http://{api}/v1/chat/completions",
        {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
    )
    head = len(_agent_records(fleet, "gw1"))
    wait_for(
        "audit shipping",
        lambda: True if fleet.devices()[0]["audit_stored_seq"] >= head else None,
        60,
    )
    out = fleet.root / "export.jsonl"
    fleet.ctl("audit", "export", "--out", str(out))
    chains: dict[str, list[bytes]] = defaultdict(list)
    for line in out.read_bytes().splitlines():
        chains[json.loads(line)["device"]].append(line)
    assert verify_chain(device_id, chains[device_id]) >= head
    assert verify_chain("controller", chains["controller"]) >= 4
    device_actions = {json.loads(r)["action"] for r in chains[device_id]}
    assert {"device.enroll", "model.install", "model.activate", "inference.chat"} <= device_actions
    inference = [json.loads(r) for r in chains[device_id] if b"inference.chat" in r][-1]
    assert inference["details"]["sha256"] == sha256_of_file(bundled_model_path())
    assert "prompt" not in json.dumps(inference["details"]).replace("prompt_tokens", "")
    controller_actions = [json.loads(r)["action"] for r in chains["controller"]]
    assert {"model.publish", "token.create", "device.enroll", "rollout.create"} <= set(
        controller_actions
    )


def test_devices_list_shows_the_active_model(model_fleet: tuple[Fleet, str, str]) -> None:
    """`edgefleetctl devices list` shows the device, when it was seen and its active model."""
    fleet, device_id, _api = model_fleet
    out = fleet.ctl("devices", "list").stdout
    assert device_id in out and "smollm2@1.0*" in out


def test_agent_keeps_serving_while_the_controller_is_down(
    model_fleet: tuple[Fleet, str, str],
) -> None:
    """Offline-first: with no controller the agent answers and audits; records ship later."""
    fleet, device_id, api = model_fleet
    fleet.stop("controller")
    try:
        body = {
            "model": "smollm2",
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 4,
        }
        assert http_json(f"http://{api}/v1/chat/completions", body)["choices"][0]["message"][
            "content"
        ]
        wait_for(
            "the agent to notice the outage",
            lambda: True if "unavailable" in fleet.agent("gw1", "status").stdout else None,
            30,
        )
    finally:
        fleet.start_controller()
    head = len(_agent_records(fleet, "gw1"))
    wait_for(
        "the offline records to ship",
        lambda: True if fleet.devices()[0]["audit_stored_seq"] >= head else None,
        60,
    )
