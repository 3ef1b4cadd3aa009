"""One table from edgefleet errors to gRPC status codes and public messages."""

from __future__ import annotations

import grpc

from edgefleet import errors

# Most specific first; the first match wins.
STATUS_TABLE: tuple[tuple[type[errors.EdgefleetError], grpc.StatusCode, bool], ...] = (
    # (error, code, whether its message is safe to show the caller)
    (errors.AuthenticationError, grpc.StatusCode.UNAUTHENTICATED, True),
    (errors.PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED, True),
    (errors.UntrustedInputError, grpc.StatusCode.INVALID_ARGUMENT, True),
    (errors.ConfigError, grpc.StatusCode.INVALID_ARGUMENT, True),
    (errors.NotFoundError, grpc.StatusCode.NOT_FOUND, True),
    (errors.ConflictError, grpc.StatusCode.ALREADY_EXISTS, True),
    (errors.ResourceError, grpc.StatusCode.RESOURCE_EXHAUSTED, True),
    (errors.StorageError, grpc.StatusCode.UNAVAILABLE, False),
    (errors.EdgefleetError, grpc.StatusCode.INTERNAL, False),
)


def status_for(error: errors.EdgefleetError) -> tuple[grpc.StatusCode, str]:
    """The status code and the message the caller may see."""
    for kind, code, public in STATUS_TABLE:
        if isinstance(error, kind):
            return code, str(error) if public else f"{code.name.lower()}: internal error"
    return grpc.StatusCode.INTERNAL, "internal error"
