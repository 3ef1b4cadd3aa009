"""POST /v1/chat/completions and /v1/completions: validate, authorize, queue, generate, audit."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from agent.inference.api_errors import ApiError, bad_request
from agent.inference.context import SUBJECT, ApiContext
from agent.inference.decoding import Piece
from agent.inference.engine import Generation, ModelWorker
from agent.inference.pool import QueueFullError
from agent.inference.requests import GenerationRequest, parse_request
from agent.inference.shapes import ChunkWriter, answer_of, whole
from agent.registry.registry import ActiveModel
from edgefleet.audit import AuditEvent
from edgefleet.canonical import canonical_bytes
from edgefleet.errors import (
    AuditUnavailableError,
    InferenceError,
    InvalidPromptError,
    RequestTooLargeError,
    ResourceError,
    StaleTrustError,
    UntrustedInputError,
)


async def _read_json(request: web.Request, limit: int) -> Any:
    """The body as JSON, parsed by orjson (it refuses nesting deeper than 1024 levels,
    where the standard library's parser would exhaust the stack)."""
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError as e:
        raise bad_request(f"the request body is not valid JSON: {str(e)[:120]}") from e
    except web.HTTPRequestEntityTooLarge as e:
        raise ApiError(
            413, f"the request body exceeds {limit} bytes", "invalid_request_error"
        ) from e


def _client_left(request: web.Request) -> bool:
    """True once the client has closed its connection."""
    transport = request.transport
    return transport is None or transport.is_closing()


@dataclass
class Outcome:
    """What happened to one generation request (for metrics and audit)."""

    label: str = "error"
    result: Generation = field(default_factory=lambda: Generation(finish_reason="error"))
    first_token: float | None = None
    last_token: float | None = None
    tool_calls: int = 0

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
        if self.ctx.offline is not None:
            self.ctx.offline.check()
        if self.ctx.audit.failure:  # no inference that could not be audited
            raise AuditUnavailableError(
                f"the audit log cannot be written ({self.ctx.audit.failure}); "
                "inference resumes once it can"
            )
        return next((m for m in self.ctx.registry.active_models() if m.manifest.name == name), None)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        body = await _read_json(request, self.ctx.config.max_request_bytes)
        req = parse_request(body, self.chat, self.ctx.config.max_tokens_limit)
        subject: str = request[SUBJECT]
        outcome = Outcome()
        active = None
        try:
            if not self.ctx.allows(subject, "inference.invoke"):  # on no model at all
                outcome.label = "denied"
                raise ApiError(
                    403,
                    f"{subject} may not invoke models on this device",
                    "invalid_request_error",
                    "model",
                    "permission_denied",
                )
            allowed = self.ctx.allows(subject, "inference.invoke", req.model)
            active = await asyncio.to_thread(self._find, req.model) if allowed else None
            if active is None:
                # One answer whether the model is absent or forbidden, so that a caller
                # learns nothing about models it may not use; the audit record tells which.
                outcome.label = "not_found" if allowed else "denied"
                raise ApiError(
                    404,
                    f"model {req.model[:64]!r} does not exist on this device "
                    "or you do not have access to it",
                    "invalid_request_error",
                    "model",
                    "model_not_found",
                )
            async with self.ctx.pool.slot(active.manifest, Path(active.path)) as worker:
                if _client_left(request):  # it gave up while waiting for the slot
                    raise ConnectionResetError("the client closed the connection")
                response = await self._generate(request, req, worker, outcome)
            if outcome.label != "invalid_output":  # else: sent as the stream's last event
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
        except RequestTooLargeError as e:  # the caller's mistake: never the model's failure
            outcome.label = "invalid"
            raise ApiError(
                400,
                str(e),
                "invalid_request_error",
                "messages" if self.chat else "prompt",
                "context_length_exceeded",
            ) from e
        except InvalidPromptError as e:
            outcome.label = "invalid"
            raise ApiError(400, str(e), "invalid_request_error", "messages") from e
        except InferenceError as e:
            raise ApiError(500, str(e), "server_error") from e
        except StaleTrustError as e:
            outcome.label = "refused"
            raise ApiError(503, str(e), "server_error", code="trust_stale") from e
        except AuditUnavailableError as e:
            outcome.label = "unavailable"
            raise ApiError(503, str(e), "server_error", code="audit_unavailable") from e
        except UntrustedInputError as e:  # the model file failed its check before loading
            outcome.label = "refused"
            raise ApiError(503, str(e), "server_error", code="model_integrity") from e
        except (asyncio.CancelledError, ConnectionError):
            outcome.label = "cancelled"  # the client went away; the worker was told to stop
            raise
        finally:
            self._observe(req, outcome, started)
            if active is not None:
                self.ctx.serving.record(
                    active.manifest.name, active.manifest.version, outcome.label
                )
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
                writer = ChunkWriter(req, self.chat, request_id, created)
                return await self._stream(request, req, writer, batches, outcome)
            async for batch in batches:
                outcome.result = batch[-1][1]
                if any(piece.text for piece, _ in batch):
                    outcome.saw_piece()
                if _client_left(request):  # nobody will read the answer: free the slot now
                    raise ConnectionResetError("the client closed the connection")
        try:
            body = whole(req, self.chat, request_id, created, outcome.result)
        except ApiError:
            outcome.label = "invalid_output"
            raise
        outcome.tool_calls = len(body["choices"][0].get("message", {}).get("tool_calls") or ())
        return web.json_response(body)

    async def _stream(
        self,
        request: web.Request,
        req: GenerationRequest,
        writer: ChunkWriter,
        batches: AsyncGenerator[list[tuple[Piece, Generation]], None],
        outcome: Outcome,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        if self.chat:
            await response.write(writer.role())
        async for batch in batches:
            outcome.result = batch[-1][1]
            if any(piece.text for piece, _ in batch):
                outcome.saw_piece()
            if req.tools is not None:
                continue  # a tool answer is taken apart once whole (see docs/api.md)
            # one event per piece, as OpenAI streams; one write per batch
            data = b"".join(
                writer.content(p.text, p.logprobs) for p, _ in batch if p.text or p.logprobs
            )
            if data:
                await response.write(data)
        try:
            answer = answer_of(req, outcome.result)
        except ApiError as e:  # the stream has begun: the error is its last event
            outcome.label = "invalid_output"
            await response.write(writer.error(e) + writer.done())
            await response.write_eof()
            return response
        if req.tools is not None:
            if answer.tool_calls is not None:
                outcome.tool_calls = len(answer.tool_calls)
                await response.write(writer.tool_calls(answer.tool_calls))
            elif answer.content:
                await response.write(writer.content(answer.content, []))
        data = writer.finish(answer.finish_reason)
        if req.include_usage:
            data += writer.usage(outcome.result)
        await response.write(data + writer.done())
        await response.write_eof()
        return response

    def _observe(self, req: GenerationRequest, outcome: Outcome, started: float) -> None:
        m, model = self.ctx.metrics, req.model[:64]
        known = outcome.label not in ("not_found", "denied")  # names a caller made up
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
            "cached_tokens": result.cached_tokens,
            "completion_tokens": result.completion_tokens,
            "stream": req.stream,
            "latency_ms": round((time.monotonic() - started) * 1000),
        }
        if req.constrained:
            details["output"] = "tools" if req.tools is not None else req.output.kind
        if outcome.tool_calls:
            details["tool_calls"] = outcome.tool_calls
        if outcome.first_token is not None:
            details["ttft_ms"] = round((outcome.first_token - started) * 1000)
        if self.ctx.config.audit_content_hashes:
            prompt = canonical_bytes(list(req.prompt.messages) if self.chat else req.prompt.text)
            details["prompt_sha256"] = hashlib.sha256(prompt).hexdigest()
            details["completion_sha256"] = hashlib.sha256(result.text.encode("utf-8")).hexdigest()
        target = active.manifest.ref if active else req.model[:64]
        event = AuditEvent(subject, f"inference.{self.endpoint}", target, outcome.label, details)
        return self.ctx.policy_now().redact(event)
