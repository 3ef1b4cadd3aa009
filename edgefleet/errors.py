"""The one exception tree of edgefleet, split by who is at fault."""

from __future__ import annotations


class EdgefleetError(Exception):
    """Root of every error edgefleet raises on purpose."""


class UntrustedInputError(EdgefleetError):
    """Input from outside failed a check; it must not be used."""


class SignatureError(UntrustedInputError):
    """A signature is missing, invalid, below threshold or from the wrong role."""


class HashMismatchError(UntrustedInputError):
    """Bytes differ from the length or SHA-256 their signed manifest names."""


class RollbackError(UntrustedInputError):
    """Metadata has a lower version than one already trusted."""


class ExpiredMetadataError(UntrustedInputError):
    """Newly received metadata is past its expiry date."""


class SnapshotMismatchError(UntrustedInputError):
    """Targets or policy metadata is not the one the trusted timestamp names (mix-and-match)."""


class MalformedInputError(UntrustedInputError):
    """Input cannot be parsed: bad JSON, bad GGUF, bad field."""


class RequestTooLargeError(UntrustedInputError):
    """A request asks for more than the model can take (a prompt longer than its context)."""


class InvalidPromptError(UntrustedInputError):
    """A request the model cannot take as given (its chat template refuses the conversation)."""


class AuditChainError(UntrustedInputError):
    """An audit record does not link to its predecessor or is out of sequence."""


class StaleTrustError(EdgefleetError):
    """The device has had no fresh trust metadata for longer than its maximum offline age."""


class TransportError(EdgefleetError):
    """The peer could not be reached or the connection broke."""


class PermissionDeniedError(EdgefleetError):
    """The caller is authenticated but not allowed to do this."""


class AuthenticationError(EdgefleetError):
    """The caller could not be identified (no or bad credential)."""


class EnrollmentError(PermissionDeniedError):
    """An enrollment token is unknown, used or expired."""


class NotFoundError(EdgefleetError):
    """The named object does not exist."""


class ConflictError(EdgefleetError):
    """The request conflicts with stored state (duplicate publish, for example)."""


class StorageError(EdgefleetError):
    """Local storage failed or holds inconsistent state."""


class AuditUnavailableError(StorageError):
    """The audit log cannot be written (a full disk): what it would record is refused."""


class ConfigError(EdgefleetError):
    """Configuration or command-line input is invalid."""


class InferenceError(EdgefleetError):
    """The model could not be loaded or could not generate."""


class ResourceError(InferenceError):
    """The model does not fit the memory budget."""
