"""The OpenAI-compatible local HTTP API (aiohttp): /v1/models, /v1/chat/completions, /healthz."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from agent.audit.log import AuditLog
from agent.config import AgentConfig
from agent.inference.engine import Generation, ModelPool, SamplingParams
from agent.registry.registry import ActiveModel, Registry
from edgefleet.audit import AuditEvent
from edgefleet.errors import InferenceError

ROLES = frozenset({"system", "user", "assistant"})
MAX_MESSAGES = 256
MAX_STOP = 4


class ApiError(Exception):
    """An error answered in OpenAI's JSON error shape."""

    def __init__(self, status: int, message: str, kind: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param

    def response(self) -> web.Response:
        body = {
            "error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}
        }
        return web.json_response(body, status=self.status)


def _bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", param)


def _number(body: Mapping[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
        raise _bad(f"{key} must be a number between {low} and {high}", key)
    return float(value)


def parse_chat_request(
    body: Any, max_tokens_limit: int
) -> tuple[str, list[dict[str, str]], SamplingParams, bool]:
    """Validate a chat completion request; raise ApiError(400) naming the bad field."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model is required", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not 0 < len(messages) <= MAX_MESSAGES:
        raise _bad(f"messages must be a list of 1 to {MAX_MESSAGES} messages", "messages")
    parsed = []
    for message in messages:
        if (
            not isinstance(message, dict)
            or message.get("role") not in ROLES
            or not isinstance(message.get("content"), str)
        ):
            raise _bad(
                "each message needs a role (system, user, assistant) and string content", "messages"
            )
        parsed.append({"role": message["role"], "content": message["content"]})
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens", 256))
    if max_tokens is None:
        max_tokens = 256
    if (
        not isinstance(max_tokens, int)
        or isinstance(max_tokens, bool)
        or not 1 <= max_tokens <= max_tokens_limit
    ):
        raise _bad(f"max_tokens must be an integer from 1 to {max_tokens_limit}", "max_tokens")
    stop = body.get("stop") or ()
    if isinstance(stop, str):
        stop = (stop,)
    if (
        not isinstance(stop, list | tuple)
        or len(stop) > MAX_STOP
        or not all(isinstance(s, str) for s in stop)
    ):
        raise _bad(f"stop must be a string or a list of up to {MAX_STOP} strings", "stop")
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise _bad("seed must be an integer", "seed")
    n = body.get("n", 1)
    if n != 1:
        raise _bad("only n=1 is supported", "n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("stream must be a boolean", "stream")
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 0.8, 0.0, 2.0),
        top_p=_number(body, "top_p", 0.95, 0.0, 1.0),
        stop=tuple(stop),
        seed=seed,
    )
    return model, parsed, params, stream


@dataclass
class ApiContext:
    """What the handlers need."""

    config: AgentConfig
    registry: Registry
    pool: ModelPool
    audit: AuditLog


def _completion_body(
    request_id: str, created: int, model: str, result: Generation
) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "finish_reason": result.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        },
    }


def _chunk(
    request_id: str, created: int, model: str, delta: dict[str, str], finish: str | None
) -> bytes:
    body = {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body).encode("utf-8") + b"\n\n"


CONTEXT = web.AppKey("ctx", ApiContext)


def _chunk_prefix(request_id: str, created: int, model: str) -> bytes:
    fields = {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
    }
    return json.dumps(fields)[:-1].encode("utf-8")


def _content_chunk(prefix: bytes, piece: str) -> bytes:
    """One SSE event for a piece of content, without re-encoding the constant fields."""
    return (
        b"data: "
        + prefix
        + b', "choices": [{"index": 0, "delta": {"content": '
        + json.dumps(piece).encode("utf-8")
        + b'}, "finish_reason": null}]}\n\n'
    )


class ChatHandler:
    """POST /v1/chat/completions, streaming or not, audited either way."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def _find(self, name: str) -> ActiveModel | None:
        for active in self.ctx.registry.active_models():
            if active.manifest.name == name:
                return active
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _bad("the request body is not valid JSON").response()
        except web.HTTPRequestEntityTooLarge:
            limit = self.ctx.config.max_request_bytes
            return ApiError(
                413, f"the request body exceeds {limit} bytes", "invalid_request_error"
            ).response()
        try:
            model, messages, params, stream = parse_chat_request(
                body, self.ctx.config.max_tokens_limit
            )
        except ApiError as e:
            return e.response()
        active = await asyncio.to_thread(self._find, model)
        result, outcome = Generation(finish_reason="error"), "error"
        try:
            if active is None:
                outcome = "not_found"
                return ApiError(
                    404,
                    f"model {model!r} is not installed and active on this device",
                    "invalid_request_error",
                    "model",
                ).response()
            worker = await self.ctx.pool.worker(model, active.manifest.sha256, Path(active.path))
            if stream:
                async with contextlib.aclosing(worker.stream(messages, params)) as pieces:
                    response, result = await self._stream(request, model, pieces)
            else:
                result = await worker.complete(messages, params)
                response = web.json_response(
                    _completion_body(
                        f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), model, result
                    )
                )
            outcome = "success" if result.finish_reason != "cancelled" else "cancelled"
            return response
        except InferenceError as e:
            return ApiError(500, str(e), "server_error").response()
        except (asyncio.CancelledError, ConnectionError):
            outcome = "cancelled"  # the client went away; the worker was told to stop
            raise
        finally:
            target = active.manifest.ref if active else model[:64]
            digest = active.manifest.sha256 if active else ""
            await asyncio.to_thread(self._audit, target, digest, result, outcome, stream, started)

    async def _stream(
        self, request: web.Request, model: str, pieces: Any
    ) -> tuple[web.StreamResponse, Generation]:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        request_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        result = Generation()
        await response.write(_chunk(request_id, created, model, {"role": "assistant"}, None))
        prefix = _chunk_prefix(request_id, created, model)
        try:
            async for batch in pieces:
                result = batch[-1][1]
                data = b"".join(_content_chunk(prefix, piece) for piece, _totals in batch if piece)
                if data:
                    await response.write(data)
        except (ConnectionResetError, ConnectionError):
            result.finish_reason = (
                "cancelled"  # the client left: the generator's finally stops the worker
            )
            return response, result
        await response.write(_chunk(request_id, created, model, {}, result.finish_reason))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response, result

    def _audit(
        self,
        target: str,
        sha256: str,
        result: Generation,
        outcome: str,
        stream: bool,
        started: float,
    ) -> None:
        self.ctx.audit.append(
            AuditEvent(
                actor="local:anonymous",
                action="inference.chat",
                target=target,
                outcome=outcome,
                details={
                    "sha256": sha256,
                    "prompt_tokens": result.prompt_tokens,
                    "completion_tokens": result.completion_tokens,
                    "stream": stream,
                    "latency_ms": round((time.monotonic() - started) * 1000),
                },
            )
        )


async def list_models(request: web.Request) -> web.Response:
    """GET /v1/models: the active models, in OpenAI's list shape."""
    ctx: ApiContext = request.app[CONTEXT]
    active_models = await asyncio.to_thread(ctx.registry.active_models)
    data = [
        {
            "id": m.manifest.name,
            "object": "model",
            "created": 0,
            "owned_by": "edgefleet",
            "version": m.manifest.version,
            "sha256": m.manifest.sha256,
        }
        for m in active_models
    ]
    return web.json_response({"object": "list", "data": data})


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz."""
    return web.json_response({"status": "ok"})


def build_app(ctx: ApiContext) -> web.Application:
    """The aiohttp application with every route."""
    app = web.Application(client_max_size=ctx.config.max_request_bytes)
    app[CONTEXT] = ctx
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/v1/chat/completions", ChatHandler(ctx).handle)
    return app
