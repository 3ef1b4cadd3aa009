"""The local API over a fake model: OpenAI shapes, auth, queueing, memory, cancellation, audit."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from edgefleet.agent.app.config import AgentConfig
from edgefleet.agent.app.database import AgentDatabase
from edgefleet.agent.audit.log import AuditLog
from edgefleet.agent.inference.api import build_app
from edgefleet.agent.inference.api_errors import ApiError
from edgefleet.agent.inference.context import ApiContext
from edgefleet.agent.inference.decoding import Piece
from edgefleet.agent.inference.model_io import ChatBackend, Generation, Prompt, SamplingParams
from edgefleet.agent.inference.pool import ModelPool, PoolSettings
from edgefleet.agent.inference.requests import parse_request
from edgefleet.agent.rbac.policy import DevicePolicy, LocalPolicy
from edgefleet.agent.registry.blobs import BlobStore
from edgefleet.agent.registry.registry import Registry
from edgefleet.errors import ConfigError, RequestTooLargeError, StorageError
from edgefleet.memory import MIB
from tests.edgefleet.trustkit import manifest


class FakeBackend:
    """Emits `tok0 tok1 …`, optionally slowly; records loads, output and cancellation."""

    failure = ""  # it never dies

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.cancelled = threading.Event()
        self.produced = 0
        self.loads = 0

    @property
    def dimensions(self) -> int:  # no embeddings from this fake
        return 0

    def embedding_tokens(self, text: str) -> list[int]:
        raise NotImplementedError

    def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def generate(
        self, prompt: Prompt, params: SamplingParams, cancel: threading.Event
    ) -> Iterator[tuple[Piece, Generation]]:
        totals = Generation(prompt_tokens=len(prompt.messages) * 3 or 5, finish_reason="length")
        for i in range(params.max_tokens):
            if cancel.is_set():
                self.cancelled.set()
                totals.finish_reason = "cancelled"
                return
            time.sleep(self.delay)
            self.produced += 1
            totals.completion_tokens += 1
            totals.text += f"tok{i} "
            yield Piece(f"tok{i} "), totals
        yield Piece(), totals


class AgentTestServer(TestServer):
    """aiohttp's TestServer, but with the agent's own runner setting: a handler is not
    cancelled when its client leaves (aiohttp's test server cancels it, which would hide
    every disconnect the API must notice itself)."""

    async def _make_runner(self, **kwargs: Any) -> Any:
        kwargs["handler_cancellation"] = False
        return await super()._make_runner(**kwargs)


class Harness:
    """An ApiContext over a fake backend with model `tiny@1` active and one app token."""

    def __init__(self, tmp_path: Path, backend: FakeBackend, **settings: Any) -> None:
        self.backend = backend
        db = AgentDatabase(tmp_path / "agent.db")
        self.audit = AuditLog(db, "dev-1")
        registry = Registry(db, BlobStore(tmp_path / "blobs"), self.audit)
        m = manifest("tiny", "1")
        registry.record_installed(m)
        registry.activate(m)
        policy = DevicePolicy(LocalPolicy(tmp_path), signed=None)
        self.token, _ = policy.local.create_token("app:test", "inference", ("tiny*",))
        self.reader, _ = policy.local.create_token("app:reader", "reader", ("*",))
        pool_settings = PoolSettings(
            budget_bytes=settings.pop("budget", 1024 * MIB),
            context=2048,
            slots=settings.pop("slots", 1),
            keep_alive_seconds=300,
            max_queued=settings.pop("max_queued", 16),
        )

        def factory(path: Path, slots: int) -> list[ChatBackend]:
            backend.loads += 1
            return [backend] * slots

        config = AgentConfig(data_dir=tmp_path, **settings)
        self.ctx = ApiContext(
            config, registry, ModelPool(factory, pool_settings), self.audit, policy
        )

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    def records(self) -> list[bytes]:
        """Every audit record, once the writer has stored what the requests queued."""
        self.audit.flush()
        return self.audit.all_records()

    def last_audit(self) -> dict[str, Any]:
        return dict(json.loads(self.records()[-1]))

    def run(self, scenario: Any) -> Any:
        async def main() -> Any:
            async with TestClient(AgentTestServer(build_app(self.ctx))) as client:
                return await scenario(client)

        return asyncio.run(main())


def chat(max_tokens: int = 3, stream: bool = False, model: str = "tiny") -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "secret prompt"}],
        "max_tokens": max_tokens,
        "stream": stream,
    }


def test_chat_completion_has_usage_and_is_audited_without_the_prompt(tmp_path: Path) -> None:
    """A completion returns text and usage; its audit has principal, model, digest, counts."""
    h = Harness(tmp_path, FakeBackend())

    async def scenario(client: TestClient[web.Request, web.Application]) -> None:
        response = await client.post("/v1/chat/completions", json=chat(), headers=h.auth())
        data = await response.json()
        assert response.status == 200
        assert data["choices"][0]["message"]["content"] == "tok0 tok1 tok2 "
        assert data["usage"] == {
            "prompt_tokens": 3,
            "completion_tokens": 3,
            "total_tokens": 6,
            "prompt_tokens_details": {"cached_tokens": 0},
        }

    h.run(scenario)
    record = h.last_audit()
    assert (record["actor"], record["action"], record["target"], record["outcome"]) == (
        "app:test", "inference.chat", "tiny@1", "success",
    )  # fmt: skip
    assert record["details"]["completion_tokens"] == 3 and record["details"]["sha256"] == "cd" * 32
    assert b"secret prompt" not in b"".join(h.records())
    assert "prompt_sha256" not in record["details"]


def test_content_hashes_are_opt_in(tmp_path: Path) -> None:
    """With audit_content_hashes on, the record holds hashes of prompt and completion, not text."""
    h = Harness(tmp_path, FakeBackend(), audit_content_hashes=True)

    async def scenario(client: TestClient[web.Request, web.Application]) -> None:
        await client.post("/v1/chat/completions", json=chat(), headers=h.auth())

    h.run(scenario)
    details = h.last_audit()["details"]
    assert len(details["prompt_sha256"]) == 64 and len(details["completion_sha256"]) == 64
    assert b"secret prompt" not in b"".join(h.records())


def test_streaming_uses_server_sent_events(tmp_path: Path) -> None:
    """Streaming sends a role chunk, one chunk per token, a finish chunk and [DONE]."""
    h = Harness(tmp_path, FakeBackend())

    async def scenario(client: TestClient[web.Request, web.Application]) -> None:
        response = await client.post(
            "/v1/chat/completions", json=chat(2, stream=True), headers=h.auth()
        )
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = [line for line in (await response.text()).split("\n\n") if line]
        assert events[-1] == "data: [DONE]"
        chunks = [json.loads(e[6:]) for e in events[:-1]]
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        pieces = [c["choices"][0]["delta"].get("content") for c in chunks[1:3]]
        assert pieces == ["tok0 ", "tok1 "]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert {c["object"] for c in chunks} == {"chat.completion.chunk"}

    h.run(scenario)


def test_text_completions_stream_and_not(tmp_path: Path) -> None:
    """/v1/completions answers in the text_completion shape, whole or streamed."""
    h = Harness(tmp_path, FakeBackend())

    async def scenario(client: TestClient[web.Request, web.Application]) -> None:
        body = {"model": "tiny", "prompt": "Once", "max_tokens": 2}
        whole = await (await client.post("/v1/completions", json=body, headers=h.auth())).json()
        assert whole["object"] == "text_completion" and whole["choices"][0]["text"] == "tok0 tok1 "
        assert whole["usage"]["completion_tokens"] == 2
        streamed = await client.post(
            "/v1/completions", json={**body, "stream": True}, headers=h.auth()
        )
        events = [e for e in (await streamed.text()).split("\n\n") if e]
        texts = [json.loads(e[6:])["choices"][0]["text"] for e in events[:-1]]
        assert texts == ["tok0 ", "tok1 ", ""] and events[-1] == "data: [DONE]"

    h.run(scenario)
    assert h.last_audit()["action"] == "inference.completions"


def test_client_disconnect_stops_generation_and_shows_in_metrics(tmp_path: Path) -> None:
    """When a streaming client leaves, the worker stops; metrics and audit say cancelled."""
    backend = FakeBackend(delay=0.02)
    h = Harness(tmp_path, backend)

    async def scenario(client: TestClient[web.Request, web.Application]) -> str:
        response = await client.post(
            "/v1/chat/completions", json=chat(500, stream=True), headers=h.auth()
        )
        await response.content.readline()
        response.close()
        for _ in range(100):
            if backend.cancelled.is_set() and h.last_audit()["action"] == "inference.chat":
                break
            await asyncio.sleep(0.05)
        return await (await client.get("/metrics")).text()

    metrics = h.run(scenario)
    assert backend.cancelled.is_set() and backend.produced < 500
    assert h.last_audit()["outcome"] == "cancelled"
    assert (
        'edgefleet_inference_requests_total{endpoint="chat",model="tiny",outcome="cancelled"} 1.0'
        in metrics
    )


def test_authentication_and_authorization_are_distinct(tmp_path: Path) -> None:
    """No token or a wrong one is 401; a valid token without the permission is 403; both audited."""
    h = Harness(tmp_path, FakeBackend())

    async def scenario(client: TestClient[web.Request, web.Application]) -> None:
        missing = await client.post("/v1/chat/completions", json=chat())
        assert missing.status == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await missing.json())["error"]["code"] == "invalid_api_key"
        wrong = await client.post(
            "/v1/chat/completions", json=chat(), headers=h.auth("efk_000000000000.nope")
        )
        assert wrong.status == 401
        reader = await client.post("/v1/chat/completions", json=chat(), headers=h.auth(h.reader))
        assert (
            reader.status == 403 and (await reader.json())["error"]["code"] == "permission_denied"
        )
        listed = await (await client.get("/v1/models", headers=h.auth(h.reader))).json()
        assert [m["id"] for m in listed["data"]] == ["tiny"]

    h.run(scenario)
    outcomes = [(r["action"], r["outcome"]) for r in map(json.loads, h.records())]
    assert outcomes.count(("api.authenticate", "denied")) == 1  # one source, one minute
    assert ("inference.chat", "denied") in outcomes
    assert h.backend.loads == 0  # nothing was loaded for refused callers


def test_an_unauthenticated_flood_costs_counters_not_records(tmp_path: Path) -> None:
    """Review hole M6: 200 requests without a valid token (821 audit records a second in
    the review) write one audit record; the metric counts all; past the per-minute limit
    the source gets 429; a valid token from the same address is still served."""
    h = Harness(tmp_path, FakeBackend())
    before = len(h.records())

    async def scenario(
        client: TestClient[web.Request, web.Application],
    ) -> tuple[list[int], int, str]:
        statuses = []
        for i in range(200):
            headers = h.auth("efk_000000000000.wrong") if i % 2 else {}
            response = await client.post("/v1/chat/completions", json=chat(), headers=headers)
            statuses.append(response.status)
        served = await client.post("/v1/chat/completions", json=chat(), headers=h.auth())
        return statuses, served.status, await (await client.get("/metrics")).text()

    statuses, served, metrics = h.run(scenario)
    assert statuses[:30] == [401] * 30 and set(statuses[30:]) == {429}
    assert served == 200
    denied = [json.loads(r) for r in h.records()[before:]]
    assert [r["action"] for r in denied].count("api.authenticate") == 1
    assert 'edgefleet_api_auth_failures_total{reason="missing"} 100.0' in metrics
    assert 'edgefleet_api_auth_failures_total{reason="invalid"} 100.0' in metrics


def test_a_forbidden_model_answers_as_an_absent_one(tmp_path: Path) -> None:
    """Review hole L9: a token bound to `big*` asking for `tiny` (present) gets the very
    answer a model that does not exist gets, so it learns nothing; the audit knows."""
    h = Harness(tmp_path, FakeBackend())
    other, _ = h.ctx.policy.local.create_token("app:other", "inference", ("big*",))

    async def scenario(client: TestClient[web.Request, web.Application]) -> list[tuple[int, Any]]:
        answers = []
        for model in ("tiny", "big-absent"):
            body = chat(model=model)
            response = await client.post("/v1/chat/completions", json=body, headers=h.auth(other))
            error = (await response.json())["error"]
            answers.append((response.status, error["message"].replace(model, "M")))
        return answers

    forbidden, absent = h.run(scenario)
    assert forbidden == absent and forbidden[0] == 404
    outcomes = [(r["target"], r["outcome"]) for r in map(json.loads, h.records())]
    assert ("tiny", "denied") in outcomes and ("big-absent", "not_found") in outcomes


def test_queue_limit_gives_429_and_no_slot_leaks(tmp_path: Path) -> None:
    """One slot and one waiting place: further concurrent requests get 429, the rest succeed."""
    h = Harness(tmp_path, FakeBackend(delay=0.01), slots=1, max_queued=1)

    async def scenario(client: TestClient[web.Request, web.Application]) -> list[int]:
        async def one() -> int:
            response = await client.post("/v1/chat/completions", json=chat(30), headers=h.auth())
            if response.status == 429:
                assert response.headers["Retry-After"] == "1"
            await response.read()
            return response.status

        first = asyncio.create_task(one())
        await asyncio.sleep(0.1)  # the first holds the slot
        statuses = await asyncio.gather(first, one(), one(), one())
        again = await one()  # everything was released
        return [*statuses, again]

    statuses = h.run(scenario)
    assert sorted(statuses[:4]) == [200, 200, 429, 429] and statuses[4] == 200
    assert h.ctx.pool.waiting == 0 and all(m.busy == 0 for m in h.ctx.pool.loaded())


def test_parallel_clients_share_slots(tmp_path: Path) -> None:
    """Eight clients with two slots all complete with their own full answers."""
    h = Harness(tmp_path, FakeBackend(delay=0.002), slots=2, max_queued=8)

    async def scenario(client: TestClient[web.Request, web.Application]) -> list[str]:
        async def one(n: int) -> str:
            response = await client.post("/v1/chat/completions", json=chat(5 + n), headers=h.auth())
            return str((await response.json())["choices"][0]["message"]["content"])

        return await asyncio.gather(*(one(n) for n in range(8)))

    answers = h.run(scenario)
    assert [len(a.split()) for a in answers] == [5 + n for n in range(8)]
    assert h.backend.loads == 1  # one load; its slots are sequences of one batched context


def test_model_over_the_memory_budget_is_refused_before_loading(tmp_path: Path) -> None:
    """A model whose estimate exceeds the budget gets 503 with the numbers, and is never loaded."""
    h = Harness(tmp_path, FakeBackend(), budget=32 * MIB)

    async def scenario(client: TestClient[web.Request, web.Application]) -> dict[str, Any]:
        response = await client.post("/v1/chat/completions", json=chat(), headers=h.auth())
        assert response.status == 503
        return dict(await response.json())

    body = h.run(scenario)
    assert body["error"]["code"] == "insufficient_memory"
    assert "MiB" in body["error"]["message"] and "budget of 32 MiB" in body["error"]["message"]
    assert h.backend.loads == 0 and h.last_audit()["outcome"] == "refused"


def test_metrics_and_health_are_public_other_routes_are_denied(tmp_path: Path) -> None:
    """/healthz and /metrics need no token; unknown routes and methods answer in OpenAI's shape."""
    h = Harness(tmp_path, FakeBackend())

    async def scenario(client: TestClient[web.Request, web.Application]) -> None:
        assert (await client.get("/healthz")).status == 200
        text = await (await client.get("/metrics")).text()
        assert "edgefleet_queue_depth" in text and "edgefleet_memory_budget_bytes" in text
        missing = await client.get("/v1/nothing")
        assert missing.status == 404 and "error" in await missing.json()
        put = await client.put("/v1/models")
        assert put.status == 405 and "error" in await put.json()

    h.run(scenario)


def test_oversized_and_invalid_bodies(tmp_path: Path) -> None:
    """A body over the size limit is 413; invalid JSON is 400; both in OpenAI's shape."""
    h = Harness(tmp_path, FakeBackend())

    async def scenario(client: TestClient[web.Request, web.Application]) -> None:
        headers = {**h.auth(), "Content-Type": "application/json"}
        big = await client.post(
            "/v1/chat/completions", data=b"{" + b" " * (2 * MIB) + b"}", headers=headers
        )
        assert big.status == 413 and "error" in await big.json()
        bad = await client.post("/v1/chat/completions", data=b"{nope", headers=headers)
        assert bad.status == 400 and (await bad.json())["error"]["type"] == "invalid_request_error"

    h.run(scenario)


def test_auth_off_is_refused_off_loopback(tmp_path: Path) -> None:
    """api_auth=false is allowed on 127.0.0.1 and refused on any other address."""
    AgentConfig(data_dir=tmp_path, api_auth=False, api_listen="127.0.0.1:8080")
    with pytest.raises(ConfigError, match="turn api_auth on"):
        AgentConfig(data_dir=tmp_path, api_auth=False, api_listen="0.0.0.0:8080")


@pytest.mark.parametrize(
    "body, param",
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "messages"),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**6},
            "max_tokens",
        ),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "top_p": 2}, "top_p"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": ["a"] * 5}, "stop"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "seed": "s"}, "seed"),
    ],
)
def test_invalid_parameters_name_the_field(body: dict[str, Any], param: str) -> None:
    """Each invalid parameter is refused naming that parameter."""
    with pytest.raises(ApiError) as error:
        parse_request(body, chat=True, max_tokens_limit=1024)
    assert error.value.param == param and error.value.status == 400


def test_every_http_route_has_an_authorization_entry(tmp_path: Path) -> None:
    """Walking the router finds no route (besides HEAD twins) without a ROUTE_PERMISSIONS entry."""
    from edgefleet.agent.inference.api import ROUTE_PERMISSIONS

    app = build_app(Harness(tmp_path, FakeBackend()).ctx)
    routes = {
        (r.method, r.resource.canonical)
        for r in app.router.routes()
        if r.resource and r.method != "HEAD"
    }
    assert routes == set(ROUTE_PERMISSIONS)


def test_browser_pages_cannot_use_an_unauthenticated_api(tmp_path: Path) -> None:
    """Review hole L7: with api_auth off, a foreign page's "simple request" (text/plain), a
    foreign Origin and a rebound Host are refused; an allowed origin and plain clients work."""
    h = Harness(
        tmp_path, FakeBackend(), api_auth=False, api_allowed_origins="http://localhost:3000"
    )

    async def scenario(client: TestClient[web.Request, web.Application]) -> dict[str, int]:
        body = json.dumps(chat()).encode()
        cases = {
            "simple-request": {"Content-Type": "text/plain"},
            "foreign-origin": {"Content-Type": "application/json", "Origin": "http://evil.test"},
            "rebound-host": {"Content-Type": "application/json", "Host": "evil.test:8080"},
            "allowed-origin": {
                "Content-Type": "application/json",
                "Origin": "http://localhost:3000",
            },
            "plain-client": {"Content-Type": "application/json"},
        }
        statuses = {}
        for name, headers in cases.items():
            response = await client.post("/v1/chat/completions", data=body, headers=headers)
            statuses[name] = response.status
        return statuses

    assert h.run(scenario) == {
        "simple-request": 415,
        "foreign-origin": 403,
        "rebound-host": 403,
        "allowed-origin": 200,
        "plain-client": 200,
    }


@pytest.mark.parametrize("depth", [2_000, 100_000])
def test_deeply_nested_json_is_a_400(tmp_path: Path, depth: int) -> None:
    """Review hole L8: nesting that exhausted the JSON parser's stack (a 500) is a 400."""
    h = Harness(tmp_path, FakeBackend())

    async def scenario(
        client: TestClient[web.Request, web.Application],
    ) -> tuple[int, dict[str, Any]]:
        headers = {**h.auth(), "Content-Type": "application/json"}
        data = b'{"model": "tiny", "messages": ' + b"[" * depth + b"]" * depth + b"}"
        response = await client.post("/v1/chat/completions", data=data, headers=headers)
        return response.status, await response.json()

    status, body = h.run(scenario)
    assert status == 400 and "not valid JSON" in body["error"]["message"]


class OverlongBackend(FakeBackend):
    """Refuses every prompt the way llama.cpp refuses one longer than its context."""

    def generate(
        self, prompt: Prompt, params: SamplingParams, cancel: threading.Event
    ) -> Iterator[tuple[Piece, Generation]]:
        raise RequestTooLargeError(
            "the prompt is 9000 tokens, more than the model's context of 2048 tokens"
        )


def test_a_prompt_over_the_context_is_the_callers_error(tmp_path: Path) -> None:
    """Review hole M1: six over-long prompts halted a healthy rollout. Each is a 400
    (context_length_exceeded) and none counts against the version's health."""
    h = Harness(tmp_path, OverlongBackend())

    async def scenario(client: TestClient[web.Request, web.Application]) -> list[tuple[int, str]]:
        answers = []
        for _ in range(6):
            response = await client.post("/v1/chat/completions", json=chat(), headers=h.auth())
            answers.append((response.status, (await response.json())["error"]["code"]))
        return answers

    assert h.run(scenario) == [(400, "context_length_exceeded")] * 6
    assert h.ctx.serving.counts("tiny", "1") == (0, 0)
    assert h.last_audit()["outcome"] == "invalid"


def test_a_non_streaming_request_stops_when_its_client_leaves(tmp_path: Path) -> None:
    """Review hole L1: a non-streaming generation went on for 11.5 s after the client
    left; now the slot is freed within a few tokens."""
    backend = FakeBackend(delay=0.02)
    h = Harness(tmp_path, backend)

    async def scenario(client: TestClient[web.Request, web.Application]) -> None:
        request = asyncio.ensure_future(
            client.post("/v1/chat/completions", json=chat(500), headers=h.auth())
        )
        await asyncio.sleep(0.3)
        request.cancel()  # the client closes its connection
        for _ in range(100):
            if backend.cancelled.is_set():
                break
            await asyncio.sleep(0.02)

    h.run(scenario)
    assert backend.cancelled.is_set() and backend.produced < 100
    h.audit.flush()
    assert h.last_audit()["outcome"] == "cancelled"


def test_an_audit_backlog_over_its_threshold_raises_a_visible_alarm(tmp_path: Path) -> None:
    """Review hole M6: the audit log's growth is visible: /metrics counts the records
    waiting for the controller and raises an alarm at audit_warn_unacknowledged."""
    h = Harness(tmp_path, FakeBackend(), audit_warn_unacknowledged=4)

    async def scenario(client: TestClient[web.Request, web.Application]) -> list[str]:
        pages = []
        for _ in range(2):
            await client.post("/v1/chat/completions", json=chat(), headers=h.auth())
            h.audit.flush()
            pages.append(await (await client.get("/metrics")).text())
        return pages

    below, over = h.run(scenario)
    assert "edgefleet_audit_unacknowledged_records 3.0" in below  # install, activate, one chat
    assert "edgefleet_audit_backlog_alarm 0.0" in below
    assert "edgefleet_audit_unacknowledged_records 4.0" in over
    assert "edgefleet_audit_backlog_alarm 1.0" in over


def test_no_inference_while_the_audit_log_cannot_be_written(tmp_path: Path) -> None:
    """Fail closed: with the audit log failing (a full disk), requests get 503
    audit_unavailable instead of being served unaudited; they are served again after."""
    h = Harness(tmp_path, FakeBackend())

    async def scenario(client: TestClient[web.Request, web.Application]) -> list[tuple[int, str]]:
        answers = []
        for failure in ("local database error: database or disk is full", ""):
            h.audit.failure = failure
            response = await client.post("/v1/chat/completions", json=chat(), headers=h.auth())
            body = await response.json()
            answers.append((response.status, body.get("error", {}).get("code", "")))
        return answers

    assert h.run(scenario) == [(503, "audit_unavailable"), (200, "")]
    assert h.ctx.serving.counts("tiny", "1") == (1, 0)  # not the version's failure


class BrokenGrammarBackend(FakeBackend):
    """Finishes "stop" with text that is not what the grammar allowed: a grammar failing
    mid-generation must be an error, never a 200."""

    def generate(
        self, prompt: Prompt, params: SamplingParams, cancel: threading.Event
    ) -> Iterator[tuple[Piece, Generation]]:
        assert params.grammar is not None  # the request was constrained
        totals = Generation(prompt_tokens=4, finish_reason="stop")
        for piece in ('{"age": ', '"forty"}'):
            totals.completion_tokens += 1
            totals.text += piece
            yield Piece(piece), totals
        yield Piece(), totals


def test_constrained_output_that_fails_its_schema_is_an_error(tmp_path: Path) -> None:
    h = Harness(tmp_path, BrokenGrammarBackend())
    schema = {
        "type": "object",
        "properties": {"age": {"type": "integer"}},
        "required": ["age"],
    }
    body = {
        **chat(8),
        "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    }

    async def scenario(
        client: TestClient[web.Request, web.Application],
    ) -> tuple[int, Any, list[Any]]:
        whole = await client.post("/v1/chat/completions", json=body, headers=h.auth())
        streamed = await client.post(
            "/v1/chat/completions", json={**body, "stream": True}, headers=h.auth()
        )
        events = [e[6:] for e in (await streamed.text()).split("\n\n") if e]
        return whole.status, await whole.json(), events

    status, whole, events = h.run(scenario)
    assert status == 500 and whole["error"]["code"] == "output_invalid"
    assert "age" in whole["error"]["message"]
    last = json.loads(events[-2])  # then [DONE]
    assert last["error"]["code"] == "output_invalid"
    assert not any('"finish_reason": "stop"' in e for e in events)
    assert h.last_audit()["outcome"] == "invalid_output"


def test_a_failure_in_any_route_is_answered_in_openai_shape(tmp_path: Path) -> None:
    """What escapes a route is mapped by the API's middleware: a storage failure is a 503,
    anything unforeseen a 500 that says nothing of the internals; never a plain-text 500."""
    h = Harness(tmp_path, FakeBackend())

    def storage_fails() -> list[Any]:
        raise StorageError("local database error: database or disk is full")

    def crashes() -> list[Any]:
        raise RuntimeError("secret internals /var/lib/edgefleet")

    async def scenario(
        client: TestClient[web.Request, web.Application],
    ) -> list[tuple[int, dict[str, Any]]]:
        answers = []
        for failure in (storage_fails, crashes):
            h.ctx.registry.active_models = failure  # type: ignore[method-assign]
            reply = await client.get("/v1/models", headers=h.auth())
            answers.append((reply.status, await reply.json()))
        return answers

    (storage, crash) = h.run(scenario)
    assert storage[0] == 503 and storage[1]["error"]["code"] == "storage_unavailable"
    assert "disk is full" in storage[1]["error"]["message"]
    assert crash == (
        500,
        {
            "error": {
                "message": "internal error",
                "type": "server_error",
                "param": None,
                "code": None,
            }
        },
    )
