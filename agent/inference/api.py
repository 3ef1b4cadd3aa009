"""The OpenAI-compatible local HTTP API (aiohttp).

Routes: /healthz, /metrics, /v1/models, /v1/models/{model}, /v1/chat/completions,
/v1/completions, /v1/embeddings, /v1/responses. Every route has an entry in
ROUTE_PERMISSIONS (a missing entry is denied); with api_auth on, bearer tokens from the
device policy identify the caller, and the permission is checked against the requested
model (401 without a valid token, 403 without the permission). docs/api.md describes
every route and parameter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime

import structlog
from aiohttp import web

from edgefleet.agent.inference.api_errors import ApiError, http_error
from edgefleet.agent.inference.context import ANONYMOUS, CONTEXT, SUBJECT, ApiContext
from edgefleet.agent.inference.embeddings import EmbeddingsEndpoint
from edgefleet.agent.inference.generation import GenerationEndpoint
from edgefleet.agent.inference.responses import ResponsesEndpoint
from edgefleet.agent.registry.registry import ActiveModel
from edgefleet.agent.sync.state import LAST_SYNC_KEY
from edgefleet.audit import AuditEvent
from edgefleet.config_files import is_loopback
from edgefleet.errors import EdgefleetError, MalformedInputError
from edgefleet.trust.metadata import parse_time

log = structlog.get_logger("agent.api")

RETRY_AFTER_SECONDS = 1

# (method, route) -> permission needed; None means public. Anything else is denied.
ROUTE_PERMISSIONS: dict[tuple[str, str], str | None] = {
    ("GET", "/healthz"): None,
    ("GET", "/metrics"): None,
    ("GET", "/v1/models"): "models.read",
    ("GET", "/v1/models/{model}"): "models.read",
    ("POST", "/v1/chat/completions"): "inference.invoke",
    ("POST", "/v1/completions"): "inference.invoke",
    ("POST", "/v1/embeddings"): "inference.embed",
    ("POST", "/v1/responses"): "inference.invoke",
}


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
    """Default deny, authentication, and OpenAI-shaped errors for every route: whatever a
    route raises is answered in that shape (api_errors.HTTP_ERRORS), never aiohttp's
    plain-text 500."""
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
        _check_browser_rules(ctx, request)
        request[SUBJECT] = ANONYMOUS
        if ROUTE_PERMISSIONS[key] is not None and ctx.config.api_auth:
            request[SUBJECT] = await _authenticate(ctx, request)
        return await handler(request)
    except ApiError as e:
        return _error_response(e)
    except EdgefleetError as e:  # escaped a route (a route's own errors are ApiErrors)
        log.warning("api.failed", path=request.path[:128], error=type(e).__name__, reason=str(e))
        return _error_response(http_error(e)[0])
    except (web.HTTPException, ConnectionError):
        raise  # aiohttp's own answers; a client that left needs none
    except Exception:
        log.exception("api.crashed", path=request.path[:128])
        return _error_response(ApiError(500, "internal error", "server_error"))


def _check_browser_rules(ctx: ApiContext, request: web.Request) -> None:
    """Keep web pages out: a body must be JSON (a page's "simple request" cannot send
    that without a CORS preflight, which is never answered); and with api_auth off, only
    allowed origins, and only a loopback Host (no DNS rebinding to 127.0.0.1)."""
    if request.method == "POST" and request.content_type != "application/json":
        raise ApiError(
            415,
            "the request body must be sent as Content-Type: application/json",
            "invalid_request_error",
        )
    if ctx.config.api_auth:
        return
    origin = request.headers.get("Origin")
    if origin is not None and origin not in ctx.allowed_origins:
        raise ApiError(
            403,
            f"requests from origin {origin[:100]!r} are refused",
            "invalid_request_error",
            code="origin_not_allowed",
        )
    host = (request.host or "").rsplit(":", 1)[0].strip("[]")
    if not is_loopback(host):
        raise ApiError(
            403,
            f"Host {request.host[:100]!r} is not this agent's loopback address",
            "invalid_request_error",
            code="host_not_allowed",
        )


async def _authenticate(ctx: ApiContext, request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    subject = (
        ctx.policy_now().subject_of_token(token.strip()) if scheme.lower() == "bearer" else None
    )
    if subject is not None:
        return str(subject)
    reason = "missing bearer token" if not header else "invalid bearer token"
    source = request.remote or "unknown"
    ctx.metrics.auth_failures.labels(reason.split()[0]).inc()
    denial = ctx.auth_failures.deny(source)
    if denial.limited:
        raise ApiError(
            429,
            f"too many failed authentications from {source}; retry in a minute",
            "rate_limit_error",
            code="auth_rate_limited",
        )
    if denial.record:  # the first of the minute; the metric counts every one
        details: dict[str, object] = {"reason": reason, "source": source[:64]}
        if denial.earlier:
            details["unrecorded_before"] = denial.earlier
        await ctx.audit_event(
            AuditEvent("anonymous", "api.authenticate", request.path[:128], "denied", details)
        )
    raise ApiError(
        401,
        f"{reason}: send Authorization: Bearer <token>",
        "invalid_request_error",
        code="invalid_api_key",
    )


def _model_entry(model: ActiveModel) -> dict[str, object]:
    return {
        "id": model.manifest.name,
        "object": "model",
        "created": 0,
        "owned_by": "edgefleet",
        "version": model.manifest.version,
        "sha256": model.manifest.sha256,
    }


async def list_models(request: web.Request) -> web.Response:
    """GET /v1/models: the active models the caller may read, in OpenAI's list shape."""
    ctx = request.app[CONTEXT]
    subject = request[SUBJECT]
    active_models = await asyncio.to_thread(ctx.registry.active_models)
    data = [
        _model_entry(m)
        for m in active_models
        if ctx.allows(subject, "models.read", m.manifest.name)
    ]
    return web.json_response({"object": "list", "data": data})


async def retrieve_model(request: web.Request) -> web.Response:
    """GET /v1/models/{model}: one active model; 404 alike for absent and forbidden."""
    ctx = request.app[CONTEXT]
    name = request.match_info["model"]
    allowed = ctx.allows(request[SUBJECT], "models.read", name)
    active_models = await asyncio.to_thread(ctx.registry.active_models) if allowed else []
    found = next((m for m in active_models if m.manifest.name == name), None)
    if found is None:
        raise ApiError(
            404,
            f"model {name[:64]!r} does not exist on this device or you do not have access to it",
            "invalid_request_error",
            "model",
            "model_not_found",
        )
    return web.json_response(_model_entry(found))


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
    m.queue_capacity.set(ctx.pool.settings.max_queued)
    waiting = await asyncio.to_thread(ctx.audit.unacknowledged)
    m.audit_unacknowledged.set(waiting)
    m.audit_backlog_alarm.set(int(waiting >= ctx.config.audit_warn_unacknowledged))
    m.trust_max_offline.set(ctx.config.max_offline_days * 86400)
    fresh, synced = await asyncio.to_thread(_sync_moments, ctx)
    if fresh is not None:
        m.trust_fresh.set(fresh.timestamp())
    if synced is not None:
        m.last_sync.set(synced.timestamp())
    return web.Response(body=m.exposition(), content_type="text/plain", charset="utf-8")


def _sync_moments(ctx: ApiContext) -> tuple[datetime | None, datetime | None]:
    """When trust metadata was last fresh and when the last sync completed."""
    fresh = ctx.offline.fresh_at() if ctx.offline is not None else None
    synced = ctx.registry.db.get_state(LAST_SYNC_KEY)
    try:
        return fresh, parse_time(synced, LAST_SYNC_KEY) if synced else None
    except MalformedInputError:
        return fresh, None


def build_app(ctx: ApiContext) -> web.Application:
    """The aiohttp application with every route and the guard."""
    app = web.Application(client_max_size=ctx.config.max_request_bytes, middlewares=[guard])
    app[CONTEXT] = ctx
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model}", retrieve_model)
    app.router.add_post("/v1/chat/completions", GenerationEndpoint(ctx, chat=True).handle)
    app.router.add_post("/v1/completions", GenerationEndpoint(ctx, chat=False).handle)
    app.router.add_post("/v1/embeddings", EmbeddingsEndpoint(ctx).handle)
    app.router.add_post("/v1/responses", ResponsesEndpoint(ctx).handle)
    return app
