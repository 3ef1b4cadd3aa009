"""The local API over a fake model: OpenAI shapes, streaming, cancellation and auditing."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from agent.audit.log import AuditLog
from agent.config import AgentConfig
from agent.database import AgentDatabase
from agent.inference.api import ApiContext, build_app, parse_chat_request
from agent.inference.engine import ChatBackend, Generation, ModelPool, SamplingParams
from agent.registry.blobs import BlobStore
from agent.registry.registry import Registry
from tests.edgefleet.trustkit import manifest


class FakeBackend:
    """Emits `tok0 tok1 …` slowly; records whether it was cancelled."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.cancelled = threading.Event()
        self.produced = 0

    def chat(
        self, messages: Sequence[Mapping[str, str]], params: SamplingParams, cancel: threading.Event
    ) -> Iterator[tuple[str, Generation]]:
        totals = Generation(prompt_tokens=len(messages) * 3, finish_reason="length")
        for i in range(params.max_tokens):
            if cancel.is_set():
                self.cancelled.set()
                totals.finish_reason = "cancelled"
                return
            time.sleep(self.delay)
            self.produced += 1
            totals.completion_tokens += 1
            totals.text += f"tok{i} "
            yield f"tok{i} ", totals
        yield "", totals


def _context(tmp_path: Path, backend: FakeBackend) -> ApiContext:
    db = AgentDatabase(tmp_path / "agent.db")
    audit = AuditLog(db, "dev-1")
    blobs = BlobStore(tmp_path / "blobs")
    registry = Registry(db, blobs, audit)
    m = manifest("tiny", "1")
    registry.record_installed(m)
    registry.activate(m)

    def factory(path: Path) -> ChatBackend:
        return backend

    return ApiContext(AgentConfig(data_dir=tmp_path), registry, ModelPool(factory), audit)


def _run(tmp_path: Path, backend: FakeBackend, scenario: Any) -> Any:
    async def main() -> Any:
        ctx = _context(tmp_path, backend)
        async with TestClient(TestServer(build_app(ctx))) as client:
            return await scenario(client, ctx)

    return asyncio.run(main())


def _last_audit(ctx: ApiContext) -> dict[str, Any]:
    return dict(json.loads(ctx.audit.all_records()[-1]))


def test_non_streaming_completion_has_usage_and_is_audited(tmp_path: Path) -> None:
    """A plain completion returns text and usage; its audit record has counts, not the prompt."""

    async def scenario(client: TestClient, ctx: ApiContext) -> None:
        body = {
            "model": "tiny",
            "messages": [{"role": "user", "content": "secret prompt"}],
            "max_tokens": 3,
        }
        response = await client.post("/v1/chat/completions", json=body)
        data = await response.json()
        assert response.status == 200
        assert data["choices"][0]["message"]["content"] == "tok0 tok1 tok2 "
        assert data["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
        record = _last_audit(ctx)
        assert (record["action"], record["target"], record["outcome"]) == (
            "inference.chat",
            "tiny@1",
            "success",
        )
        assert record["details"]["completion_tokens"] == 3
        assert b"secret prompt" not in b"".join(ctx.audit.all_records())

    _run(tmp_path, FakeBackend(), scenario)


def test_streaming_uses_server_sent_events(tmp_path: Path) -> None:
    """Streaming sends a role chunk, one chunk per piece, a finish chunk and [DONE]."""

    async def scenario(client: TestClient, ctx: ApiContext) -> None:
        body = {
            "model": "tiny",
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 2,
            "stream": True,
        }
        response = await client.post("/v1/chat/completions", json=body)
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = [line for line in (await response.text()).split("\n\n") if line]
        assert events[-1] == "data: [DONE]"
        chunks = [json.loads(e[6:]) for e in events[:-1]]
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
        assert [c["choices"][0]["delta"].get("content") for c in chunks[1:3]] == ["tok0 ", "tok1 "]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"

    _run(tmp_path, FakeBackend(), scenario)


def test_client_disconnect_stops_generation(tmp_path: Path) -> None:
    """When a streaming client goes away, the worker stops instead of generating to max_tokens."""
    backend = FakeBackend(delay=0.02)

    async def scenario(client: TestClient, ctx: ApiContext) -> None:
        body = {
            "model": "tiny",
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 500,
            "stream": True,
        }
        response = await client.post("/v1/chat/completions", json=body)
        await response.content.readline()
        response.close()
        for _ in range(100):
            if backend.cancelled.is_set():
                break
            await asyncio.sleep(0.05)
        assert backend.cancelled.is_set()
        assert backend.produced < 500
        for _ in range(40):
            if _last_audit(ctx)["action"] == "inference.chat":
                break
            await asyncio.sleep(0.05)
        assert _last_audit(ctx)["outcome"] == "cancelled"

    _run(tmp_path, backend, scenario)


def test_unknown_model_is_404_and_audited(tmp_path: Path) -> None:
    """A request for a model that is not active is a 404 in OpenAI's shape, and audited."""

    async def scenario(client: TestClient, ctx: ApiContext) -> None:
        response = await client.post(
            "/v1/chat/completions",
            json={"model": "gone", "messages": [{"role": "user", "content": "x"}]},
        )
        assert response.status == 404
        assert (await response.json())["error"]["param"] == "model"
        assert _last_audit(ctx)["outcome"] == "not_found"

    _run(tmp_path, FakeBackend(), scenario)


def test_oversized_and_invalid_bodies(tmp_path: Path) -> None:
    """A body over the size limit is 413; invalid JSON is 400; both in OpenAI's shape."""

    async def scenario(client: TestClient, ctx: ApiContext) -> None:
        big = await client.post("/v1/chat/completions", data=b"{" + b" " * (2 * 1024 * 1024) + b"}",
                                headers={"Content-Type": "application/json"})  # fmt: skip
        assert big.status == 413 and "error" in await big.json()
        bad = await client.post(
            "/v1/chat/completions", data=b"{nope", headers={"Content-Type": "application/json"}
        )
        assert bad.status == 400 and (await bad.json())["error"]["type"] == "invalid_request_error"

    _run(tmp_path, FakeBackend(), scenario)


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
    from agent.inference.api import ApiError

    with pytest.raises(ApiError) as error:
        parse_chat_request(body, 1024)
    assert error.value.param == param and error.value.status == 400
