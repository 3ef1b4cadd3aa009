"""Role metadata (root, targets) as frozen dataclasses with exact-bytes payloads."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

from edgefleet.canonical import canonical_bytes, parse_object
from edgefleet.errors import MalformedInputError
from edgefleet.gguf import (
    ARCHITECTURE_PATTERN,
    MAX_CONTEXT,
    MAX_PARAMETERS,
    QUANTIZATION_PATTERN,
)
from edgefleet.trust.chunks import check_chunk_size
from edgefleet.trust.keys import PublicKey

ROOT_TYPE = "application/vnd.edgefleet.root+json"
TARGETS_TYPE = "application/vnd.edgefleet.targets+json"
POLICY_TYPE = "application/vnd.edgefleet.policy+json"
TIMESTAMP_TYPE = "application/vnd.edgefleet.timestamp+json"
ROLES = ("root", "targets", "policy", "timestamp", "audit")
ONLINE_ROLES = ("targets", "policy", "timestamp", "audit")
AUDIT_EXPORT_TYPE = "application/vnd.edgefleet.audit-export+json"
CHECKPOINT_TYPE = "application/vnd.edgefleet.audit-checkpoint+json"
RECEIPT_TYPE = "application/vnd.edgefleet.audit-receipt+json"
AUDIT_KEY_TYPE = "application/vnd.edgefleet.audit-key+json"
SPEC_VERSION = "1"
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
# 1 PiB, and a KV cache of 1 TiB a token: far above any real model, far below what
# JSON (2^53) and protobuf (2^63) carry exactly.
MAX_MODEL_LENGTH = 1 << 50
MAX_KV_BYTES_PER_TOKEN = 1 << 40
MAX_VERSION = (1 << 53) - 1


def format_time(moment: datetime) -> str:
    """Render a timestamp in UTC the way metadata stores it. A naive one is UTC already
    (SQLite hands back the UTC times stored in it without their zone): astimezone would
    take it for the machine's local time."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: object, what: str) -> datetime:
    """Parse a metadata timestamp (``YYYY-MM-DDTHH:MM:SSZ``)."""
    if not isinstance(value, str):
        raise MalformedInputError(f"{what} is not a timestamp")
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError as e:
        raise MalformedInputError(f"{what} is not a timestamp: {value!r}") from e


def check_model_name(name: str) -> str:
    """Refuse model names that could escape a path or confuse a selector."""
    if not NAME_PATTERN.match(name):
        raise MalformedInputError(
            f"model name {name!r} must be 1-64 chars of a-z, 0-9, '.', '_', '-'"
        )
    return name


def check_model_version(version: str) -> str:
    """Refuse model versions with characters outside a safe set."""
    if not VERSION_PATTERN.match(version):
        raise MalformedInputError(
            f"model version {version!r} has characters outside [A-Za-z0-9._+-]"
        )
    return version


def _field(doc: Mapping[str, Any], key: str, kind: type, what: str) -> Any:
    return _typed(doc.get(key), kind, what, key)


def _typed(value: Any, kind: type, what: str, key: str) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MalformedInputError(f"{what}: field {key!r} missing or not {kind.__name__}")
    return value


def _bounded(value: Any, low: int, high: int, what: str, key: str) -> int:
    if not low <= _typed(value, int, what, key) <= high:
        raise MalformedInputError(f"{what}: {key} {value} is outside {low}..{high}")
    return int(value)


@dataclass(frozen=True)
class RoleKeys:
    """The keys allowed to sign for a role and how many must."""

    keyids: tuple[str, ...]
    threshold: int


@dataclass(frozen=True)
class Root:
    """Root metadata: the trust anchor naming every role's keys and the TLS CA."""

    PAYLOAD_TYPE: ClassVar[str] = ROOT_TYPE

    version: int
    expires: datetime
    keys: Mapping[str, PublicKey]
    roles: Mapping[str, RoleKeys]
    ca_sha256: str

    def to_payload(self) -> bytes:
        """Canonical bytes to sign."""
        return canonical_bytes(
            {
                "_type": "root",
                "spec_version": SPEC_VERSION,
                "version": self.version,
                "expires": format_time(self.expires),
                "keys": {k: {"keytype": "ed25519", "public": v.hex} for k, v in self.keys.items()},
                "roles": {
                    name: {"keyids": list(r.keyids), "threshold": r.threshold}
                    for name, r in self.roles.items()
                },
                "tls_ca_sha256": self.ca_sha256,
            }
        )

    def __post_init__(self) -> None:
        """Refuse a root that could not be verified or used (before signing and on parse)."""
        what = "root metadata"
        _bounded(self.version, 1, MAX_VERSION, what, "version")
        for keyid, key in self.keys.items():
            if key.keyid != keyid:
                raise MalformedInputError(f"{what}: key id {keyid} does not match its key")
        for name in ROLES:
            role = self.roles.get(name)
            if role is None:
                raise MalformedInputError(f"{what}: role {name} is missing")
            if not 1 <= role.threshold <= len(role.keyids) or any(
                k not in self.keys for k in role.keyids
            ):
                raise MalformedInputError(f"{what}: role {name} has bad keys or threshold")
            if len(set(role.keyids)) != len(role.keyids):
                raise MalformedInputError(f"{what}: role {name} lists a key twice")
        online = {k for name in ONLINE_ROLES for k in self.roles[name].keyids}
        if shared := online.intersection(self.roles["root"].keyids):
            raise MalformedInputError(
                f"{what}: root key {sorted(shared)[0][:16]}… also signs for an online role"
            )
        if not SHA256_PATTERN.match(_typed(self.ca_sha256, str, what, "tls_ca_sha256")):
            raise MalformedInputError(f"{what}: tls_ca_sha256 is not a hex SHA-256")

    @classmethod
    def from_payload(cls, payload: bytes) -> Root:
        """Parse and check root metadata bytes."""
        doc = parse_object(payload, "root metadata")
        if doc.get("_type") != "root":
            raise MalformedInputError("root metadata: _type is not 'root'")
        keys: dict[str, PublicKey] = {}
        for keyid, entry in _field(doc, "keys", dict, "root metadata").items():
            if not isinstance(entry, dict) or entry.get("keytype") != "ed25519":
                raise MalformedInputError(f"root metadata: key {keyid} is not ed25519")
            keys[keyid] = PublicKey.from_hex(str(entry.get("public")))
        roles: dict[str, RoleKeys] = {}
        for name, entry in _field(doc, "roles", dict, "root metadata").items():
            if name not in ROLES:
                continue
            if not isinstance(entry, dict):
                raise MalformedInputError(f"root metadata: role {name} is not an object")
            keyids = tuple(str(k) for k in _field(entry, "keyids", list, f"role {name}"))
            roles[name] = RoleKeys(keyids, _field(entry, "threshold", int, f"role {name}"))
        return cls(
            _field(doc, "version", int, "root metadata"),
            parse_time(doc.get("expires"), "root expires"),
            keys,
            roles,
            _field(doc, "tls_ca_sha256", str, "root metadata"),
        )


@dataclass(frozen=True)
class ModelManifest:
    """What a model file must be: its identity, size, digest and GGUF facts."""

    name: str
    version: str
    sha256: str
    length: int
    architecture: str
    parameter_count: int
    quantization: str
    context_length: int
    kv_bytes_per_token: int
    chunk_size: int
    chunks_sha256: str

    @property
    def ref(self) -> str:
        """``name@version``."""
        return f"{self.name}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form."""
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "length": self.length,
            "architecture": self.architecture,
            "parameter_count": self.parameter_count,
            "quantization": self.quantization,
            "context_length": self.context_length,
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "chunk_size": self.chunk_size,
            "chunks_sha256": self.chunks_sha256,
        }

    def __post_init__(self) -> None:
        """Refuse any manifest a device could not use: this runs before a manifest is
        signed and again whenever one is parsed, so no bad value reaches a signature."""
        what = f"model manifest {self.name}@{self.version}"
        check_model_name(_typed(self.name, str, what, "name"))
        check_model_version(_typed(self.version, str, what, "version"))
        for key in ("sha256", "chunks_sha256"):
            if not SHA256_PATTERN.match(_typed(getattr(self, key), str, what, key)):
                raise MalformedInputError(f"{what}: {key} is not a hex SHA-256")
        _bounded(self.length, 1, MAX_MODEL_LENGTH, what, "length")
        _bounded(self.parameter_count, 0, MAX_PARAMETERS, what, "parameter_count")
        _bounded(self.context_length, 0, MAX_CONTEXT, what, "context_length")
        _bounded(self.kv_bytes_per_token, 0, MAX_KV_BYTES_PER_TOKEN, what, "kv_bytes_per_token")
        if not ARCHITECTURE_PATTERN.match(_typed(self.architecture, str, what, "architecture")):
            raise MalformedInputError(f"{what}: architecture is not a GGUF architecture name")
        if not QUANTIZATION_PATTERN.match(_typed(self.quantization, str, what, "quantization")):
            raise MalformedInputError(f"{what}: quantization is not a quantization type name")
        check_chunk_size(_typed(self.chunk_size, int, what, "chunk_size"))

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ModelManifest:
        """Parse and check one manifest."""
        what = "model manifest"
        if not isinstance(doc, Mapping):
            raise MalformedInputError(f"{what} is not an object")
        return cls(
            name=_field(doc, "name", str, what),
            version=_field(doc, "version", str, what),
            sha256=_field(doc, "sha256", str, what),
            length=_field(doc, "length", int, what),
            architecture=_field(doc, "architecture", str, what),
            parameter_count=_field(doc, "parameter_count", int, what),
            quantization=_field(doc, "quantization", str, what),
            context_length=_field(doc, "context_length", int, what),
            kv_bytes_per_token=_field(doc, "kv_bytes_per_token", int, what),
            chunk_size=_field(doc, "chunk_size", int, what),
            chunks_sha256=_field(doc, "chunks_sha256", str, what),
        )


@dataclass(frozen=True)
class Targets:
    """Targets metadata: every published model manifest, versioned and expiring."""

    PAYLOAD_TYPE: ClassVar[str] = TARGETS_TYPE

    version: int
    expires: datetime
    models: Mapping[str, ModelManifest] = field(default_factory=dict)

    def to_payload(self) -> bytes:
        """Canonical bytes to sign."""
        return canonical_bytes(
            {
                "_type": "targets",
                "spec_version": SPEC_VERSION,
                "version": self.version,
                "expires": format_time(self.expires),
                "models": {ref: m.to_dict() for ref, m in self.models.items()},
            }
        )

    def __post_init__(self) -> None:
        """Refuse targets a device could not verify (before signing and on parse)."""
        _bounded(self.version, 1, MAX_VERSION, "targets metadata", "version")
        for ref, manifest in self.models.items():
            if not isinstance(manifest, ModelManifest) or manifest.ref != ref:
                raise MalformedInputError(f"targets metadata: {ref} names another model")

    @classmethod
    def from_payload(cls, payload: bytes) -> Targets:
        """Parse and check targets metadata bytes."""
        doc = parse_object(payload, "targets metadata")
        if doc.get("_type") != "targets":
            raise MalformedInputError("targets metadata: _type is not 'targets'")
        models = {
            ref: ModelManifest.from_dict(entry)
            for ref, entry in _field(doc, "models", dict, "targets metadata").items()
        }
        return cls(
            _field(doc, "version", int, "targets metadata"),
            parse_time(doc.get("expires"), "targets expires"),
            models,
        )


@dataclass(frozen=True)
class MetaRef:
    """What the timestamp says a role's current metadata is: its version and payload hash."""

    version: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form."""
        return {"version": self.version, "sha256": self.sha256}

    def __post_init__(self) -> None:
        """A version from 1 and a hex SHA-256."""
        _bounded(self.version, 1, MAX_VERSION, "metadata reference", "version")
        if not SHA256_PATTERN.match(_typed(self.sha256, str, "metadata reference", "sha256")):
            raise MalformedInputError("metadata reference: sha256 is not a hex SHA-256")

    @classmethod
    def from_dict(cls, doc: object, what: str) -> MetaRef:
        """Parse and check a reference."""
        if not isinstance(doc, dict):
            raise MalformedInputError(f"{what} is not an object")
        return cls(_field(doc, "version", int, what), _field(doc, "sha256", str, what))

    @classmethod
    def of(cls, payload: bytes) -> MetaRef:
        """The reference to a targets or policy payload (its own version field, its hash)."""
        version = _field(parse_object(payload, "metadata"), "version", int, "metadata")
        return cls(version, hashlib.sha256(payload).hexdigest())


@dataclass(frozen=True)
class Timestamp:
    """Freshness and snapshot in one: the current targets and policy, signed often.

    Binding the exact targets and policy payloads here means an agent never combines
    metadata from different moments (mix-and-match), and the short expiry means a
    replayed old state is refused as soon as it is stale (freeze).
    """

    PAYLOAD_TYPE: ClassVar[str] = TIMESTAMP_TYPE

    version: int
    expires: datetime
    targets: MetaRef
    policy: MetaRef | None

    def to_payload(self) -> bytes:
        """Canonical bytes to sign."""
        doc: dict[str, Any] = {
            "_type": "timestamp",
            "spec_version": SPEC_VERSION,
            "version": self.version,
            "expires": format_time(self.expires),
            "targets": self.targets.to_dict(),
        }
        if self.policy is not None:
            doc["policy"] = self.policy.to_dict()
        return canonical_bytes(doc)

    def __post_init__(self) -> None:
        """A version from 1 (the references check themselves)."""
        _bounded(self.version, 1, MAX_VERSION, "timestamp metadata", "version")

    @classmethod
    def from_payload(cls, payload: bytes) -> Timestamp:
        """Parse and check timestamp metadata bytes."""
        doc = parse_object(payload, "timestamp metadata")
        if doc.get("_type") != "timestamp":
            raise MalformedInputError("timestamp metadata: _type is not 'timestamp'")
        policy = doc.get("policy")
        return cls(
            _field(doc, "version", int, "timestamp metadata"),
            parse_time(doc.get("expires"), "timestamp expires"),
            MetaRef.from_dict(doc.get("targets"), "timestamp targets"),
            None if policy is None else MetaRef.from_dict(policy, "timestamp policy"),
        )
