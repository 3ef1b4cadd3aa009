"""The walking skeleton and the local API as real processes, over real sockets."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import urllib.error
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from edgefleet.audit import verify_chain
from edgefleet.bundled import bundled_model_path
from edgefleet.files import sha256_of_file
from tests.harness import BIN, Fleet, http_json, wait_for
from tests.integration.fleets import ModelFleet

pytestmark = [pytest.mark.integration, pytest.mark.model]

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


def _agent_records(fleet: Fleet, name: str) -> list[dict[str, object]]:
    from edgefleet.agent.app.state import LocalState

    state = LocalState.open(fleet.agent_dir(name))
    try:
        return [json.loads(r) for r in state.audit.all_records()]
    finally:
        state.db.dispose()


def test_model_is_installed_only_after_verification(model_fleet: ModelFleet) -> None:
    """The installed blob is the published file, read-only, and installed after enrollment."""
    fleet = model_fleet.fleet
    expected = sha256_of_file(bundled_model_path())
    listed = http_json(f"http://{model_fleet.api}/v1/models", token=model_fleet.token)["data"]
    assert [(m["id"], m["version"], m["sha256"]) for m in listed] == [("smollm2", "1.0", expected)]
    blob = fleet.agent_dir("gw1") / "blobs" / "sha256" / expected
    assert sha256_of_file(blob) == expected
    assert stat.S_IMODE(blob.stat().st_mode) == 0o444
    assert not list((fleet.agent_dir("gw1") / "blobs" / "partial").iterdir())
    actions = [r["action"] for r in _agent_records(fleet, "gw1")]
    assert (
        actions.index("device.enroll")
        < actions.index("model.install")
        < actions.index("model.activate")
    )


def test_answer_comes_from_the_real_model(model_fleet: ModelFleet) -> None:
    """A chat completion returns the model's text with token usage; same seed, same answer."""
    body = {"model": "smollm2", "messages": QUESTION, "max_tokens": 24, "temperature": 0, "seed": 1}
    first = model_fleet.post("/v1/chat/completions", body)
    second = model_fleet.post("/v1/chat/completions", body)
    text = first["choices"][0]["message"]["content"]
    assert "Paris" in text
    assert text == second["choices"][0]["message"]["content"]
    assert first["usage"]["prompt_tokens"] > 10 and 0 < first["usage"]["completion_tokens"] <= 24
    assert first["model"] == "smollm2"


def test_openai_client_streaming_and_not(model_fleet: ModelFleet) -> None:
    """The official `openai` client works against the agent: chat and text, streamed and whole."""
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"http://{model_fleet.api}/v1", api_key=model_fleet.token)
    whole = client.chat.completions.create(
        model="smollm2", messages=QUESTION, max_tokens=16, temperature=0
    )
    assert "Paris" in (whole.choices[0].message.content or "")
    assert whole.usage is not None and whole.usage.completion_tokens > 0
    chunks = list(
        client.chat.completions.create(
            model="smollm2", messages=QUESTION, max_tokens=16, temperature=0, stream=True
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    text = client.completions.create(
        model="smollm2", prompt="The capital of France is", max_tokens=4, temperature=0
    )
    assert (
        "Paris" in text.choices[0].text and text.usage is not None and text.usage.prompt_tokens == 5
    )
    pieces = list(
        client.completions.create(
            model="smollm2",
            prompt="The capital of France is",
            max_tokens=4,
            temperature=0,
            stream=True,
        )
    )
    assert "".join(p.choices[0].text for p in pieces) == text.choices[0].text
    assert [m.id for m in client.models.list().data] == ["smollm2"]


def test_openai_client_without_a_valid_token_is_refused(model_fleet: ModelFleet) -> None:
    """A wrong API key is 401 for the `openai` client, not a silent answer."""
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(
        base_url=f"http://{model_fleet.api}/v1", api_key="efk_bad.bad", max_retries=0
    )
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=4)


def test_parallel_clients_all_complete(model_fleet: ModelFleet) -> None:
    """Six clients at once on the real model each get a full, correct answer (queued, no 429)."""
    body = {"model": "smollm2", "messages": QUESTION, "max_tokens": 12, "temperature": 0, "seed": 1}
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: model_fleet.post("/v1/chat/completions", body), range(6)))
    texts = {a["choices"][0]["message"]["content"] for a in answers}
    assert len(texts) == 1 and "Paris" in texts.pop()


def test_api_errors_use_openai_shape(model_fleet: ModelFleet) -> None:
    """Unknown models are 404, bad parameters 400, missing tokens 401, in OpenAI's error JSON."""
    cases: list[tuple[dict[str, Any], str, int]] = [
        ({"model": "nope", "messages": QUESTION}, model_fleet.token, 404),
        ({"model": "smollm2", "messages": []}, model_fleet.token, 400),
        ({"model": "smollm2", "messages": QUESTION, "max_tokens": -1}, model_fleet.token, 400),
        ({"model": "smollm2", "messages": QUESTION, "temperature": "hot"}, model_fleet.token, 400),
        ({"model": "smollm2", "messages": QUESTION}, "", 401),
    ]
    for body, token, status in cases:
        with pytest.raises(urllib.error.HTTPError) as error:
            model_fleet.post("/v1/chat/completions", body, token=token)
        assert error.value.code == status
        assert "message" in json.loads(error.value.read())["error"]


def test_metrics_report_requests_tokens_and_memory(model_fleet: ModelFleet) -> None:
    """/metrics shows requests by outcome, token counters, time to first token and model memory."""
    model_fleet.post(
        "/v1/chat/completions", {"model": "smollm2", "messages": QUESTION, "max_tokens": 4}
    )
    import urllib.request

    with urllib.request.urlopen(f"http://{model_fleet.api}/metrics", timeout=10) as response:  # noqa: S310
        text = response.read().decode()
    assert (
        'edgefleet_inference_requests_total{endpoint="chat",model="smollm2",outcome="success"}'
        in text
    )
    assert 'edgefleet_completion_tokens_total{model="smollm2"}' in text
    assert 'edgefleet_time_to_first_token_seconds_count{model="smollm2"}' in text
    assert 'edgefleet_model_memory_bytes{model="smollm2"}' in text
    assert "edgefleet_loaded_models 1.0" in text


def test_controller_holds_intact_audit_chains(model_fleet: ModelFleet) -> None:
    """The export holds enrollment, install and inference records in intact chains."""
    fleet, device_id = model_fleet.fleet, model_fleet.device_id
    model_fleet.post(
        "/v1/chat/completions", {"model": "smollm2", "messages": QUESTION, "max_tokens": 4}
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
    verified = fleet.run(
        "edgefleetctl", "audit", "verify", str(out), "--root-fingerprint", fleet.fingerprint
    )
    assert verified.stdout.strip().endswith(": verified")
    for line in out.read_bytes().splitlines()[1:]:  # after the signed header
        chains[json.loads(line)["device"]].append(line)
    assert verify_chain(device_id, chains[device_id]) >= head
    assert verify_chain("controller", chains["controller"]) >= 4
    device_actions = {json.loads(r)["action"] for r in chains[device_id]}
    assert {
        "device.enroll",
        "token.create",
        "model.install",
        "model.activate",
        "inference.chat",
    } <= device_actions
    inference = [json.loads(r) for r in chains[device_id] if b"inference.chat" in r][-1]
    assert inference["actor"] == "app:tests"
    assert inference["details"]["sha256"] == sha256_of_file(bundled_model_path())
    assert "Paris" not in json.dumps(inference) and "capital" not in json.dumps(inference)
    controller_actions = [json.loads(r)["action"] for r in chains["controller"]]
    assert {"model.publish", "token.create", "device.enroll", "rollout.create"} <= set(
        controller_actions
    )


def test_devices_list_shows_the_active_model(model_fleet: ModelFleet) -> None:
    """`edgefleetctl devices list` shows the device, when it was seen and its active model."""
    fleet = model_fleet.fleet

    def listed() -> str | None:  # the device reports what it installed at its next sync
        out = fleet.ctl("devices", "list").stdout
        return out if "smollm2@1.0*" in out else None

    shown = wait_for("the installed model in the device view", listed, 30)
    assert model_fleet.device_id in shown
    shown = fleet.ctl("devices", "show", model_fleet.device_id).stdout
    assert "model memory budget" in shown and "disk free" in shown  # what the device can hold
    status = fleet.agent("gw1", "status").stdout
    assert "acknowledged with the fleet's signed receipt" in status


def test_agent_keeps_serving_while_the_controller_is_down(model_fleet: ModelFleet) -> None:
    """Offline-first: with no controller the agent answers and audits; records ship later."""
    fleet = model_fleet.fleet
    fleet.stop("controller")
    try:
        body = {
            "model": "smollm2",
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 4,
        }
        assert model_fleet.post("/v1/chat/completions", body)["choices"][0]["message"]["content"]
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


def test_bench_results_reach_the_controller(model_fleet: ModelFleet) -> None:
    """`edgefleet-agent bench` measures pp and tg speed; the controller's devices view has it."""
    fleet = model_fleet.fleet
    out = fleet.agent(
        "gw1",
        "bench",
        "smollm2",
        "--prompt-tokens",
        "64",
        "--gen-tokens",
        "16",
        "--repetitions",
        "1",
    )
    assert "pp64" in out.stdout and "tg16" in out.stdout

    def reported() -> dict[str, object] | None:
        bench = fleet.devices()[0]["bench"]
        return bench[0] if bench else None

    result = wait_for("the bench result at the controller", reported, 30)
    assert result["model"] == "smollm2" and result["sha256"] == sha256_of_file(bundled_model_path())
    assert float(result["generation_tokens_per_second"]) > 1  # type: ignore[arg-type]
    assert "tok/s" in fleet.ctl("devices", "list", "-o", "wide").stdout


def test_chat_command_one_shot_and_interactive(model_fleet: ModelFleet) -> None:
    """`edgefleet-agent chat` streams an answer, for one question or an interactive session."""
    fleet = model_fleet.fleet
    one = fleet.agent(
        "gw1",
        "chat",
        "smollm2",
        "What is the capital of France? Answer in one word.",
        "--temperature",
        "0",
        "--token",
        model_fleet.token,
    )
    assert "Paris" in one.stdout
    session = subprocess.run(
        [
            str(BIN / "edgefleet-agent"),
            "--data-dir",
            str(fleet.agent_dir("gw1")),
            "chat",
            "smollm2",
            "--temperature",
            "0",
        ],
        input="What is the capital of France? Answer in one word.\nAnd of Italy?\n\n",
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "EDGEFLEET_TOKEN": model_fleet.token},
    )
    assert session.returncode == 0 and "Paris" in session.stdout and session.stdout.count("> ") >= 2
    refused = fleet.agent("gw1", "chat", "smollm2", "hi", check=False)
    assert refused.returncode == 1 and refused.stderr.strip() == (
        "edgefleet-agent: error: the agent's API needs a token: create one with "
        "`edgefleet-agent tokens create app:NAME` and pass it with --token or EDGEFLEET_TOKEN"
    )
