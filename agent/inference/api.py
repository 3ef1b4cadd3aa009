"""The OpenAI-compatible local HTTP API (aiohttp).

Routes: /healthz, /metrics, /v1/models, /v1/chat/completions, /v1/completions. Every
route has an entry in ROUTE_PERMISSIONS (a missing entry is denied); with api_auth on,
bearer tokens from the device policy identify the caller, and the permission is checked
against the requested model (401 without a valid token, 403 without the permission).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from agent.audit.log import AuditLog
from agent.config import AgentConfig
from agent.inference.engine import Generation, ModelWorker
from agent.inference.metrics import ApiMetrics
from agent.inference.pool import ModelPool, QueueFullError
from agent.inference.requests import ApiError, GenerationRequest, bad_request, parse_request
from agent.policy import DevicePolicy
from agent.registry.registry import ActiveModel, Registry
from edgefleet.audit import AuditEvent
from edgefleet.canonical import canonical_bytes
from edgefleet.errors import InferenceError, ResourceError
from edgefleet.rbac import Policy

ANONYMOUS = "local:anonymous"
RETRY_AFTER_SECONDS = 1

# (method, route) -> permission needed; None means public. Anything else is denied.
ROUTE_PERMISSIONS: dict[tuple[str, str], str | None] = {
    ("GET", "/healthz"): None,
    ("GET", "/metrics"): None,
    ("GET", "/v1/models"): "models.read",
    ("POST", "/v1/chat/completions"): "inference.invoke",
    ("POST", "/v1/completions"): "inference.invoke",
}


@dataclass
class ApiContext:
    """What the handlers need."""

    config: AgentConfig
    registry: Registry
    pool: ModelPool
    audit: AuditLog
    policy: DevicePolicy
    labels: dict[str, str] = field(default_factory=dict)
    metrics: ApiMetrics = field(default_factory=ApiMetrics)

    def allows(self, subject: str, permission: str, model: str = "") -> bool:
        """RBAC check (everything is allowed with api_auth off, on loopback only)."""
        if not self.config.api_auth:
            return True
        return self.policy_now().authorize(subject, permission, model, self.labels)

    def policy_now(self) -> Policy:
        """The device policy in force."""
        return self.policy.current()

    async def audit_event(self, event: AuditEvent) -> None:
        """Append off the event loop."""
        await asyncio.to_thread(self.audit.append, event)


CONTEXT = web.AppKey("ctx", ApiContext)
SUBJECT = web.RequestKey("subject", str)


def _error_response(error: ApiError) -> web.Response:
    headers = {}
    if error.status == 429:
        headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    if error.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="edgefleet-agent"'
    return web.json_response(error.body(), status=error.status, headers=headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Default deny, authentication, and OpenAI-shaped errors for every route."""
    ctx = request.app[CONTEXT]
    try:
        if request.match_info.http_exception is not None:
            exc = request.match_info.http_exception
            raise ApiError(
                exc.status,
                f"{request.method} {request.path}: {exc.reason}",
                "invalid_request_error",
            )
        resource = request.match_info.route.resource
        key = (request.method, resource.canonical if resource else "")
        if key not in ROUTE_PERMISSIONS:
            raise ApiError(
                403, f"{request.method} {request.path} is not allowed", "invalid_request_error"
            )
        request[SUBJECT] = ANONYMOUS
        if ROUTE_PERMISSIONS[key] is not None and ctx.config.api_auth:
            request[SUBJECT] = await _authenticate(ctx, request)
        return await handler(request)
    except ApiError as e:
        return _error_response(e)


async def _authenticate(ctx: ApiContext, request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    subject = (
        ctx.policy_now().subject_of_token(token.strip()) if scheme.lower() == "bearer" else None
    )
    if subject is None:
        reason = "missing bearer token" if not header else "invalid bearer token"
        await ctx.audit_event(
            AuditEvent("anonymous", "api.authenticate", request.path, "denied", {"reason": reason})
        )
        raise ApiError(
            401,
            f"{reason}: send Authorization: Bearer <token>",
            "invalid_request_error",
            code="invalid_api_key",
        )
    return str(subject)


async def _read_json(request: web.Request, limit: int) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise bad_request("the request body is not valid JSON") from e
    except web.HTTPRequestEntityTooLarge as e:
        raise ApiError(
            413, f"the request body exceeds {limit} bytes", "invalid_request_error"
        ) from e


@dataclass
class Outcome:
    """What happened to one generation request (for metrics and audit)."""

    label: str = "error"
    result: Generation = field(default_factory=lambda: Generation(finish_reason="error"))
    first_token: float | None = None
    last_token: float | None = None

    def saw_piece(self) -> None:
        now = time.monotonic()
        if self.first_token is None:
            self.first_token = now
        self.last_token = now


class GenerationEndpoint:
    """POST /v1/chat/completions (chat=True) or /v1/completions (chat=False)."""

    def __init__(self, ctx: ApiContext, chat: bool) -> None:
        self.ctx = ctx
        self.chat = chat
        self.endpoint = "chat" if chat else "completions"
        self.object = "chat.completion" if chat else "text_completion"

    def _find(self, name: str) -> ActiveModel | None:
        return next((m for m in self.ctx.registry.active_models() if m.manifest.name == name), None)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        body = await _read_json(request, self.ctx.config.max_request_bytes)
        req = parse_request(body, self.chat, self.ctx.config.max_tokens_limit)
        subject: str = request[SUBJECT]
        outcome = Outcome()
        active = await asyncio.to_thread(self._find, req.model)
        try:
            if active is None:
                outcome.label = "not_found"
                raise ApiError(
                    404,
                    f"model {req.model!r} is not installed and active on this device",
                    "invalid_request_error",
                    "model",
                    "model_not_found",
                )
            if not self.ctx.allows(subject, "inference.invoke", req.model):
                outcome.label = "denied"
                raise ApiError(
                    403,
                    f"{subject} may not invoke {req.model}",
                    "invalid_request_error",
                    "model",
                    "permission_denied",
                )
            async with self.ctx.pool.slot(active.manifest, Path(active.path)) as worker:
                response = await self._generate(request, req, worker, outcome)
            outcome.label = (
                "cancelled" if outcome.result.finish_reason == "cancelled" else "success"
            )
            return response
        except QueueFullError as e:
            outcome.label = "rejected"
            raise ApiError(429, str(e), "rate_limit_error", code="queue_full") from e
        except ResourceError as e:
            outcome.label = "refused"
            raise ApiError(503, str(e), "server_error", code="insufficient_memory") from e
        except InferenceError as e:
            raise ApiError(500, str(e), "server_error") from e
        except (asyncio.CancelledError, ConnectionError):
            outcome.label = "cancelled"  # the client went away; the worker was told to stop
            raise
        finally:
            self._observe(req, outcome, started)
            await self.ctx.audit_event(self._audit_event(subject, req, active, outcome, started))

    async def _generate(
        self, request: web.Request, req: GenerationRequest, worker: ModelWorker, outcome: Outcome
    ) -> web.StreamResponse:
        request_id, created = (
            f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}",
            int(time.time()),
        )
        async with contextlib.aclosing(worker.stream(req.prompt, req.params)) as batches:
            if req.stream:
                return await self._stream(request, req.model, request_id, created, batches, outcome)
            async for batch in batches:
                outcome.result = batch[-1][1]
                if any(piece for piece, _ in batch):
                    outcome.saw_piece()
        return web.json_response(self._whole(request_id, created, req.model, outcome.result))

    def _whole(
        self, request_id: str, created: int, model: str, result: Generation
    ) -> dict[str, Any]:
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "finish_reason": result.finish_reason,
            }
        else:
            choice = {
                "index": 0,
                "text": result.text,
                "logprobs": None,
                "finish_reason": result.finish_reason,
            }
        return {
            "id": request_id,
            "object": self.object,
            "created": created,
            "model": model,
            "choices": [choice],
            "usage": {
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
                "total_tokens": result.prompt_tokens + result.completion_tokens,
            },
        }

    def _event(self, prefix: bytes, piece: str | None, finish: str | None) -> bytes:
        """One server-sent event; the constant fields are encoded once per request."""
        if self.chat:
            delta = {} if piece is None else {"content": piece}
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": piece or "", "logprobs": None, "finish_reason": finish}
        return (
            b"data: " + prefix + b', "choices": [' + json.dumps(choice).encode("utf-8") + b"]}\n\n"
        )

    async def _stream(
        self,
        request: web.Request,
        model: str,
        request_id: str,
        created: int,
        batches: AsyncGenerator[list[tuple[str, Generation]], None],
        outcome: Outcome,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        fields = {
            "id": request_id,
            "object": f"{self.object}.chunk" if self.chat else self.object,
            "created": created,
            "model": model,
        }
        prefix = json.dumps(fields)[:-1].encode("utf-8")
        if self.chat:
            role = {"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}
            await response.write(
                b"data: " + prefix + b', "choices": [' + json.dumps(role).encode() + b"]}\n\n"
            )
        async for batch in batches:
            outcome.result = batch[-1][1]
            data = b"".join(self._event(prefix, piece, None) for piece, _ in batch if piece)
            if data:
                outcome.saw_piece()
                await response.write(data)
        await response.write(
            self._event(prefix, None, outcome.result.finish_reason) + b"data: [DONE]\n\n"
        )
        await response.write_eof()
        return response

    def _observe(self, req: GenerationRequest, outcome: Outcome, started: float) -> None:
        m, model = self.ctx.metrics, req.model[:64]
        known = outcome.label not in ("not_found",)
        label = model if known else "unknown"
        m.requests.labels(self.endpoint, label, outcome.label).inc()
        if outcome.result.completion_tokens:
            m.prompt_tokens.labels(label).inc(outcome.result.prompt_tokens)
            m.completion_tokens.labels(label).inc(outcome.result.completion_tokens)
        if outcome.first_token is not None and outcome.last_token is not None:
            m.time_to_first_token.labels(label).observe(outcome.first_token - started)
            span = outcome.last_token - outcome.first_token
            if span > 0 and outcome.result.completion_tokens > 1:
                m.tokens_per_second.labels(label).observe(
                    (outcome.result.completion_tokens - 1) / span
                )

    def _audit_event(
        self,
        subject: str,
        req: GenerationRequest,
        active: ActiveModel | None,
        outcome: Outcome,
        started: float,
    ) -> AuditEvent:
        result = outcome.result
        details: dict[str, Any] = {
            "endpoint": self.endpoint,
            "sha256": active.manifest.sha256 if active else "",
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "stream": req.stream,
            "latency_ms": round((time.monotonic() - started) * 1000),
        }
        if outcome.first_token is not None:
            details["ttft_ms"] = round((outcome.first_token - started) * 1000)
        if self.ctx.config.audit_content_hashes:
            prompt = canonical_bytes(list(req.prompt.messages) if self.chat else req.prompt.text)
            details["prompt_sha256"] = hashlib.sha256(prompt).hexdigest()
            details["completion_sha256"] = hashlib.sha256(result.text.encode("utf-8")).hexdigest()
        target = active.manifest.ref if active else req.model[:64]
        return AuditEvent(subject, f"inference.{self.endpoint}", target, outcome.label, details)


async def list_models(request: web.Request) -> web.Response:
    """GET /v1/models: the active models the caller may read, in OpenAI's list shape."""
    ctx = request.app[CONTEXT]
    subject = request[SUBJECT]
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
        if ctx.allows(subject, "models.read", m.manifest.name)
    ]
    return web.json_response({"object": "list", "data": data})


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz."""
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics in the Prometheus text format."""
    ctx = request.app[CONTEXT]
    m = ctx.metrics
    m.queue_depth.set(ctx.pool.waiting)
    loaded = ctx.pool.loaded()
    m.loaded_models.set(len(loaded))
    m.model_memory.clear()
    for model in loaded:
        m.model_memory.labels(model.manifest.name).set(model.estimate.total)
    m.memory_budget.set(ctx.pool.settings.budget_bytes)
    return web.Response(body=m.exposition(), content_type="text/plain", charset="utf-8")


def build_app(ctx: ApiContext) -> web.Application:
    """The aiohttp application with every route and the guard."""
    app = web.Application(client_max_size=ctx.config.max_request_bytes, middlewares=[guard])
    app[CONTEXT] = ctx
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/v1/chat/completions", GenerationEndpoint(ctx, chat=True).handle)
    app.router.add_post("/v1/completions", GenerationEndpoint(ctx, chat=False).handle)
    return app
