"""A server interceptor that authenticates, authorizes, logs and maps errors for every call."""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import Any

import grpc
import structlog

from edgefleet.controller.app.metrics import ControllerMetrics
from edgefleet.controller.rbac.access import AccessControl
from edgefleet.controller.rbac.authorization import (
    METHOD_RULES,
    Principal,
    principal_from_common_name,
)
from edgefleet.errors import EdgefleetError
from edgefleet.rpc_status import status_for
from edgefleet.tls import load_certificate

log = structlog.get_logger("edgefleet.controller.rpc")

# Health checking and reflection need no principal (the listener's TLS still applies).
PUBLIC_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

current_principal: ContextVar[Principal] = ContextVar("current_principal")

# Request ids in logs: unique per process start, cheaper than a UUID at every call.
_REQUEST_PREFIX = uuid.uuid4().hex[:6] + "-"
_request_numbers = itertools.count(1)


def caller() -> Principal:
    """The authenticated principal of the call being served."""
    return current_principal.get()


@functools.lru_cache(maxsize=4096)
def _serial(certificate_pem: bytes) -> str:
    """A verified peer certificate's serial (hex); the same few certificates come back at
    every call of their devices, parsing one costs more than the rest of admission."""
    return format(load_certificate(certificate_pem).serial_number, "x")


def _peer(context: grpc.aio.ServicerContext) -> tuple[Principal, str]:
    """The principal and certificate serial (hex) of the verified peer certificate."""
    auth = context.auth_context()
    names = auth.get("x509_common_name")
    principal = principal_from_common_name(names[0].decode("utf-8") if names else None)
    certificates = auth.get("x509_pem_cert")
    return principal, _serial(certificates[0]) if certificates else ""


async def _admit(guard: GuardInterceptor, method: str, context: grpc.aio.ServicerContext) -> None:
    try:
        principal, serial = _peer(context)
        revision = guard.revision()
        if not guard.access.admitted(method, principal, serial, revision):
            await asyncio.to_thread(guard.access.admit, method, principal, serial, revision)
    except EdgefleetError as e:
        log.warning("rpc.denied", method=method, peer=context.peer(), reason=str(e))
        code, message = status_for(e)
        await context.abort(code, message)
    current_principal.set(principal)
    structlog.contextvars.bind_contextvars(
        request_id=f"{_REQUEST_PREFIX}{next(_request_numbers):x}",
        method=method.rsplit("/", 1)[-1],
        principal=str(principal),
    )


def _code_name(context: grpc.aio.ServicerContext) -> str:
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else "OK"


async def _fail(context: grpc.aio.ServicerContext, error: Exception) -> None:
    if isinstance(error, EdgefleetError):
        code, message = status_for(error)
        log.warning("rpc.failed", code=code.name, reason=str(error))
    else:
        code, message = grpc.StatusCode.INTERNAL, "internal error"
        log.exception("rpc.crashed")
    await context.abort(code, message)


class _Timed:
    """Counts a call and its duration under its method and final status code."""

    def __init__(self, metrics: ControllerMetrics, method: str) -> None:
        self.metrics = metrics
        self.method = method.rsplit("/", 1)[-1]
        self.started = time.monotonic()

    def done(self, context: grpc.aio.ServicerContext) -> float:
        seconds = time.monotonic() - self.started
        self.metrics.calls.labels(self.method, _code_name(context)).inc()
        self.metrics.latency.labels(self.method).observe(seconds)
        return seconds


def _wakes_devices(method: str) -> bool:
    rule = METHOD_RULES.get(method)
    return rule is not None and rule.wakes_devices


def _wrap_unary(
    guard: GuardInterceptor, method: str, behavior: Callable[..., Awaitable[Any]]
) -> Callable[..., Any]:
    wakes_devices = _wakes_devices(method)

    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
        timed = _Timed(guard.metrics, method)
        try:
            await _admit(guard, method, context)
            try:
                response = await behavior(request, context)
            except Exception as e:  # noqa: BLE001 - mapped to a status, never leaked
                await _fail(context, e)
            if wakes_devices:  # committed: tell the change feed before the caller hears
                guard.changed()
        finally:
            seconds = timed.done(context)
        log.info("rpc.ok", ms=round(seconds * 1000, 1))
        return response

    return guarded


def _wrap_stream(
    guard: GuardInterceptor, method: str, behavior: Callable[..., AsyncIterator[Any]]
) -> Callable[..., Any]:
    wakes_devices = _wakes_devices(method)

    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        timed = _Timed(guard.metrics, method)
        try:
            await _admit(guard, method, context)
            try:
                async for item in behavior(request, context):
                    yield item
            except Exception as e:  # noqa: BLE001 - mapped to a status, never leaked
                await _fail(context, e)
            if wakes_devices:
                guard.changed()
        finally:
            seconds = timed.done(context)
        log.info("rpc.ok", ms=round(seconds * 1000, 1))

    return guarded


class GuardInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Wraps each method handler so that no call reaches a servicer unauthorized; health
    checking and reflection (``PUBLIC_METHOD_PREFIXES``) pass as they are."""

    def __init__(
        self,
        access: AccessControl,
        metrics: ControllerMetrics,
        revision: Callable[[], object] = lambda: None,
        changed: Callable[[], None] = lambda: None,
    ) -> None:
        self.access = access
        self.metrics = metrics
        # Told after every successful call of a method whose rule says it wakes devices
        # (edgefleet.controller.fleet.changes.ChangeFeed.notify): no servicer has to remember it.
        self.changed = changed
        # What admissions are remembered under
        # (edgefleet.controller.fleet.syncs.DeviceSyncs.revision);
        # None remembers nothing.
        self.revision = revision

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or details.method.startswith(PUBLIC_METHOD_PREFIXES):
            return handler
        method = details.method
        serializers = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(self, method, handler.unary_unary), **serializers
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(self, method, handler.stream_unary), **serializers
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(self, method, handler.unary_stream), **serializers
            )
        return grpc.stream_stream_rpc_method_handler(
            _wrap_stream(self, method, handler.stream_stream), **serializers
        )
