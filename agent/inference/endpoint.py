"""What every model endpoint of the local API does around its own work: read the JSON
body, authorize the caller for the model (404 alike for absent and forbidden), take a
slot of the model in the pool, map failures to OpenAI-shaped errors in one place, and
always count and audit the request, whatever happened."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson
from aiohttp import web

from edgefleet.agent.inference.api_errors import ApiError, bad_request, http_error
from edgefleet.agent.inference.context import SUBJECT, ApiContext
from edgefleet.agent.inference.decoding import Piece
from edgefleet.agent.inference.engine import ModelWorker
from edgefleet.agent.inference.model_io import Generation
from edgefleet.agent.registry.registry import ActiveModel
from edgefleet.audit import AuditEvent
from edgefleet.errors import AuditUnavailableError, EdgefleetError


async def read_json(request: web.Request, limit: int) -> Any:
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


def client_left(request: web.Request) -> bool:
    """True once the client has closed its connection."""
    transport = request.transport
    return transport is None or transport.is_closing()


@dataclass
class Outcome:
    """What happened to one request (for metrics and audit)."""

    label: str = "error"
    result: Generation = field(default_factory=lambda: Generation(finish_reason="error"))
    first_token: float | None = None
    last_token: float | None = None
    tool_calls: int = 0
    inputs: int = 0  # embeddings: how many inputs

    def took(self, batch: list[tuple[Piece, Generation]]) -> None:
        """Note one batch of a generation: its running totals, and when text came."""
        self.result = batch[-1][1]
        if any(piece.text for piece, _ in batch):
            now = time.monotonic()
            if self.first_token is None:
                self.first_token = now
            self.last_token = now


async def drain(
    request: web.Request,
    batches: AsyncIterator[list[tuple[Piece, Generation]]],
    outcome: Outcome,
) -> None:
    """Run a generation that is answered whole; stop it as soon as the client leaves."""
    async for batch in batches:
        outcome.took(batch)
        if client_left(request):  # nobody will read the answer: free the slot now
            raise ConnectionResetError("the client closed the connection")


class ModelRequest(Protocol):
    """A validated request naming a model."""

    @property
    def model(self) -> str: ...


class ModelEndpoint:
    """The frame of a POST endpoint that runs a model; subclasses parse, serve and audit."""

    endpoint = ""  # the audit action's suffix and the metrics label
    permission = "inference.invoke"
    prompt_param = "messages"  # the parameter a too-long input is blamed on

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def parse(self, body: Any) -> Any:
        raise NotImplementedError

    async def serve(
        self, request: web.Request, req: Any, worker: ModelWorker, outcome: Outcome
    ) -> web.StreamResponse:
        raise NotImplementedError

    def details(self, req: Any, outcome: Outcome, started: float) -> dict[str, Any]:
        """The audit record's details (never the prompt or the output)."""
        raise NotImplementedError

    def observe(self, req: Any, outcome: Outcome, started: float, label: str) -> None:
        """Per-endpoint metrics beyond the request counter."""

    def prefix(self, req: Any) -> str:
        """The request's prompt as text, to route it to the slot that has its start cached."""
        return ""

    def _find(self, name: str) -> ActiveModel | None:
        if self.ctx.offline is not None:
            self.ctx.offline.check()
        if self.ctx.audit.failure:  # no inference that could not be audited
            raise AuditUnavailableError(
                f"the audit log cannot be written ({self.ctx.audit.failure}); "
                "inference resumes once it can"
            )
        return next((m for m in self.ctx.registry.active_models() if m.manifest.name == name), None)

    async def _authorized(self, subject: str, model: str, outcome: Outcome) -> ActiveModel:
        if not self.ctx.allows(subject, self.permission):  # on no model at all
            outcome.label = "denied"
            raise ApiError(
                403,
                f"{subject} may not use {self.permission} on this device",
                "invalid_request_error",
                "model",
                "permission_denied",
            )
        allowed = self.ctx.allows(subject, self.permission, model)
        active = await asyncio.to_thread(self._find, model) if allowed else None
        if active is None:
            # One answer whether the model is absent or forbidden, so that a caller
            # learns nothing about models it may not use; the audit record tells which.
            outcome.label = "not_found" if allowed else "denied"
            raise ApiError(
                404,
                f"model {model[:64]!r} does not exist on this device "
                "or you do not have access to it",
                "invalid_request_error",
                "model",
                "model_not_found",
            )
        return active

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        body = await read_json(request, self.ctx.config.max_request_bytes)
        req = self.parse(body)
        subject: str = request[SUBJECT]
        outcome = Outcome()
        active = None
        try:
            active = await self._authorized(subject, req.model, outcome)
            pool, prefix = self.ctx.pool, self.prefix(req)
            async with pool.slot(active.manifest, Path(active.path), prefix) as worker:
                if client_left(request):  # it gave up while waiting for the slot
                    raise ConnectionResetError("the client closed the connection")
                response = await self.serve(request, req, worker, outcome)
            if outcome.label == "error":  # else serve() said what happened
                outcome.label = (
                    "cancelled" if outcome.result.finish_reason == "cancelled" else "success"
                )
            return response
        except EdgefleetError as e:
            error, outcome.label = http_error(e, self.prompt_param)
            raise error from e
        except (asyncio.CancelledError, ConnectionError):
            outcome.label = "cancelled"  # the client went away; the worker was told to stop
            raise
        finally:
            self._count(req, outcome, started)
            if active is not None:
                self.ctx.serving.record(
                    active.manifest.name, active.manifest.version, outcome.label
                )
            await self.ctx.audit_event(self._audit_event(subject, req, active, outcome, started))

    def _count(self, req: Any, outcome: Outcome, started: float) -> None:
        known = outcome.label not in ("not_found", "denied")  # names a caller made up
        label = req.model[:64] if known else "unknown"
        self.ctx.metrics.requests.labels(self.endpoint, label, outcome.label).inc()
        self.observe(req, outcome, started, label)

    def _audit_event(
        self,
        subject: str,
        req: Any,
        active: ActiveModel | None,
        outcome: Outcome,
        started: float,
    ) -> AuditEvent:
        details = {
            "endpoint": self.endpoint,
            "sha256": active.manifest.sha256 if active else "",
            **self.details(req, outcome, started),
            "latency_ms": round((time.monotonic() - started) * 1000),
        }
        target = active.manifest.ref if active else req.model[:64]
        event = AuditEvent(subject, f"inference.{self.endpoint}", target, outcome.label, details)
        return self.ctx.policy_now().redact(event)
