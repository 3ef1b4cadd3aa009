"""Errors map to gRPC status codes in one table, without leaking internals."""

from __future__ import annotations

import grpc

from edgefleet import errors
from edgefleet.rpc_status import error_from_status, status_for


def test_untrusted_input_is_invalid_argument() -> None:
    """A bad signature is the caller's fault and says why."""
    assert status_for(errors.SignatureError("bad sig")) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "bad sig",
    )


def test_enrollment_errors_are_permission_denied() -> None:
    """A used token is PERMISSION_DENIED with its reason."""
    code, message = status_for(errors.EnrollmentError("enrollment token was already used"))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "already used" in message


def test_storage_errors_hide_details() -> None:
    """Database failures do not reveal their text to the caller."""
    code, message = status_for(errors.StorageError("postgres at 10.0.0.5 password=hunter2"))
    assert code == grpc.StatusCode.UNAVAILABLE and "hunter2" not in message


def test_round_trip_through_status_names() -> None:
    """The client side turns status names back into the same error kinds."""
    for error in (
        errors.AuthenticationError("a"),
        errors.PermissionDeniedError("p"),
        errors.NotFoundError("n"),
        errors.ConflictError("c"),
    ):
        code, message = status_for(error)
        assert type(error_from_status(code.name, message)) is type(error)
    assert isinstance(error_from_status("UNAVAILABLE", "down"), errors.TransportError)
