"""Errors of the local API, answered in OpenAI's JSON error shape."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgefleet.agent.inference.pool import QueueFullError
from edgefleet.errors import (
    AuditUnavailableError,
    EdgefleetError,
    InferenceError,
    InvalidPromptError,
    RequestTooLargeError,
    ResourceError,
    StaleTrustError,
    StorageError,
    UntrustedInputError,
)


class ApiError(Exception):
    """An error answered in OpenAI's JSON error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = (
            status,
            message,
            kind,
            param,
            code,
        )

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    """A 400 naming the parameter at fault."""
    return ApiError(400, message, "invalid_request_error", param, code)


@dataclass(frozen=True)
class HttpError:
    """How one kind of failure is answered, and the outcome it is counted and audited as."""

    status: int
    kind: str
    code: str | None
    outcome: str
    names_prompt: bool = False  # the caller's prompt is at fault: ``param`` names it


# Most specific first; the first match wins. Model endpoints map through it (and count the
# outcome), the API's middleware maps whatever escapes any route; anything else is a 500
# that says nothing about the internals.
HTTP_ERRORS: tuple[tuple[type[Exception], HttpError], ...] = (
    (QueueFullError, HttpError(429, "rate_limit_error", "queue_full", "rejected")),
    (ResourceError, HttpError(503, "server_error", "insufficient_memory", "refused")),
    (
        RequestTooLargeError,  # the caller's mistake: never the model's failure
        HttpError(400, "invalid_request_error", "context_length_exceeded", "invalid", True),
    ),
    (InvalidPromptError, HttpError(400, "invalid_request_error", None, "invalid", True)),
    (InferenceError, HttpError(500, "server_error", None, "error")),
    (StaleTrustError, HttpError(503, "server_error", "trust_stale", "refused")),
    (AuditUnavailableError, HttpError(503, "server_error", "audit_unavailable", "unavailable")),
    # the model file failed its check before loading
    (UntrustedInputError, HttpError(503, "server_error", "model_integrity", "refused")),
    (StorageError, HttpError(503, "server_error", "storage_unavailable", "unavailable")),
)
INTERNAL = HttpError(500, "server_error", None, "error")


def http_error(error: EdgefleetError, prompt_param: str | None = None) -> tuple[ApiError, str]:
    """The API error answering ``error``, and the outcome to count it as. Messages of
    mapped kinds are shown (they are written for the caller); others say only "internal
    error"."""
    for kind, mapped in HTTP_ERRORS:
        if isinstance(error, kind):
            param = prompt_param if mapped.names_prompt else None
            api_error = ApiError(mapped.status, str(error), mapped.kind, param, mapped.code)
            return api_error, mapped.outcome
    return ApiError(500, "internal error", INTERNAL.kind), INTERNAL.outcome
