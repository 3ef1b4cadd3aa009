"""One table between edgefleet errors and gRPC status codes, read both ways: the server
answers an error with its code (and its message only where that is safe to show), and
a client turns a status back into the same kind of error with :func:`map_rpc_errors`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from edgefleet import errors

# Most specific first; the first match wins. (error, code, whether its message is safe to
# show the caller: only those kinds are rebuilt on the client side, the rest arrive as a
# TransportError naming the code, never as the client's own storage or internal error.)
STATUS_TABLE: tuple[tuple[type[errors.EdgefleetError], grpc.StatusCode, bool], ...] = (
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

_ERROR_FOR_CODE: dict[str, type[errors.EdgefleetError]] = {}
for _kind, _code, _public in STATUS_TABLE:
    if _public:
        _ERROR_FOR_CODE.setdefault(_code.name, _kind)


def status_for(error: errors.EdgefleetError) -> tuple[grpc.StatusCode, str]:
    """The status code and the message the caller may see."""
    for kind, code, public in STATUS_TABLE:
        if isinstance(error, kind):
            return code, str(error) if public else f"{code.name.lower()}: internal error"
    return grpc.StatusCode.INTERNAL, "internal error"


def error_from_status(code_name: str, details: str) -> errors.EdgefleetError:
    """The edgefleet error for a gRPC status received from a peer (by status name)."""
    kind = _ERROR_FOR_CODE.get(code_name)
    if kind is None:
        return errors.TransportError(f"{code_name.lower()}: {details}")
    return kind(details)


@contextmanager
def map_rpc_errors() -> Iterator[None]:
    """Around client calls (blocking or awaited, unary or streamed): a failed call raises
    the edgefleet error its status stands for, with the gRPC error as its cause."""
    try:
        yield
    except grpc.RpcError as e:
        raise error_from_status(e.code().name, e.details() or "") from e
