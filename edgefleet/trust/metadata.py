"""Role metadata (root, targets) as frozen dataclasses with exact-bytes payloads."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from edgefleet.canonical import canonical_bytes, parse_object
from edgefleet.errors import MalformedInputError
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


def format_time(moment: datetime) -> str:
    """Render a UTC timestamp the way metadata stores it."""
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
    value = doc.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MalformedInputError(f"{what}: field {key!r} missing or not {kind.__name__}")
    return value


@dataclass(frozen=True)
class RoleKeys:
    """The keys allowed to sign for a role and how many must."""

    keyids: tuple[str, ...]
    threshold: int


@dataclass(frozen=True)
class Root:
    """Root metadata: the trust anchor naming every role's keys and the TLS CA."""

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
            key = PublicKey.from_hex(str(entry.get("public")))
            if key.keyid != keyid:
                raise MalformedInputError(f"root metadata: key id {keyid} does not match its key")
            keys[keyid] = key
        roles: dict[str, RoleKeys] = {}
        raw_roles = _field(doc, "roles", dict, "root metadata")
        for name in ROLES:
            entry = raw_roles.get(name)
            if not isinstance(entry, dict):
                raise MalformedInputError(f"root metadata: role {name} is missing")
            keyids = tuple(str(k) for k in _field(entry, "keyids", list, f"role {name}"))
            threshold = _field(entry, "threshold", int, f"role {name}")
            if threshold < 1 or threshold > len(keyids) or any(k not in keys for k in keyids):
                raise MalformedInputError(f"root metadata: role {name} has bad keys or threshold")
            if len(set(keyids)) != len(keyids):
                raise MalformedInputError(f"root metadata: role {name} lists a key twice")
            roles[name] = RoleKeys(keyids, threshold)
        online = {k for name in ONLINE_ROLES for k in roles[name].keyids}
        if shared := online.intersection(roles["root"].keyids):
            raise MalformedInputError(
                f"root metadata: root key {sorted(shared)[0][:16]}… also signs for an online role"
            )
        ca_sha256 = _field(doc, "tls_ca_sha256", str, "root metadata")
        if not SHA256_PATTERN.match(ca_sha256):
            raise MalformedInputError("root metadata: tls_ca_sha256 is not a hex SHA-256")
        version = _field(doc, "version", int, "root metadata")
        if version < 1:
            raise MalformedInputError("root metadata: version must be >= 1")
        return cls(version, parse_time(doc.get("expires"), "root expires"), keys, roles, ca_sha256)


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

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ModelManifest:
        """Parse and check one manifest."""
        what = "model manifest"
        sha256 = _field(doc, "sha256", str, what)
        if not SHA256_PATTERN.match(sha256):
            raise MalformedInputError(f"{what}: sha256 is not a hex SHA-256")
        length = _field(doc, "length", int, what)
        if length <= 0:
            raise MalformedInputError(f"{what}: length must be positive")
        if _field(doc, "kv_bytes_per_token", int, what) < 0:
            raise MalformedInputError(f"{what}: kv_bytes_per_token must not be negative")
        chunks_sha256 = _field(doc, "chunks_sha256", str, what)
        if not SHA256_PATTERN.match(chunks_sha256):
            raise MalformedInputError(f"{what}: chunks_sha256 is not a hex SHA-256")
        return cls(
            name=check_model_name(_field(doc, "name", str, what)),
            version=check_model_version(_field(doc, "version", str, what)),
            sha256=sha256,
            length=length,
            architecture=_field(doc, "architecture", str, what),
            parameter_count=_field(doc, "parameter_count", int, what),
            quantization=_field(doc, "quantization", str, what),
            context_length=_field(doc, "context_length", int, what),
            kv_bytes_per_token=_field(doc, "kv_bytes_per_token", int, what),
            chunk_size=check_chunk_size(_field(doc, "chunk_size", int, what)),
            chunks_sha256=chunks_sha256,
        )


@dataclass(frozen=True)
class Targets:
    """Targets metadata: every published model manifest, versioned and expiring."""

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

    @classmethod
    def from_payload(cls, payload: bytes) -> Targets:
        """Parse and check targets metadata bytes."""
        doc = parse_object(payload, "targets metadata")
        if doc.get("_type") != "targets":
            raise MalformedInputError("targets metadata: _type is not 'targets'")
        models: dict[str, ModelManifest] = {}
        for ref, entry in _field(doc, "models", dict, "targets metadata").items():
            if not isinstance(entry, dict):
                raise MalformedInputError(f"targets metadata: {ref} is not an object")
            manifest = ModelManifest.from_dict(entry)
            if manifest.ref != ref:
                raise MalformedInputError(f"targets metadata: {ref} names {manifest.ref}")
            models[ref] = manifest
        version = _field(doc, "version", int, "targets metadata")
        if version < 1:
            raise MalformedInputError("targets metadata: version must be >= 1")
        return cls(version, parse_time(doc.get("expires"), "targets expires"), models)


@dataclass(frozen=True)
class MetaRef:
    """What the timestamp says a role's current metadata is: its version and payload hash."""

    version: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form."""
        return {"version": self.version, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, doc: object, what: str) -> MetaRef:
        """Parse and check a reference."""
        if not isinstance(doc, dict):
            raise MalformedInputError(f"{what} is not an object")
        version = _field(doc, "version", int, what)
        sha256 = _field(doc, "sha256", str, what)
        if version < 1 or not SHA256_PATTERN.match(sha256):
            raise MalformedInputError(f"{what} has a bad version or sha256")
        return cls(version, sha256)

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

    @classmethod
    def from_payload(cls, payload: bytes) -> Timestamp:
        """Parse and check timestamp metadata bytes."""
        doc = parse_object(payload, "timestamp metadata")
        if doc.get("_type") != "timestamp":
            raise MalformedInputError("timestamp metadata: _type is not 'timestamp'")
        version = _field(doc, "version", int, "timestamp metadata")
        if version < 1:
            raise MalformedInputError("timestamp metadata: version must be >= 1")
        policy = doc.get("policy")
        return cls(
            version,
            parse_time(doc.get("expires"), "timestamp expires"),
            MetaRef.from_dict(doc.get("targets"), "timestamp targets"),
            None if policy is None else MetaRef.from_dict(policy, "timestamp policy"),
        )
