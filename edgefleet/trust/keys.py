"""Ed25519 signing keys: generation, key ids, and private key files created 0600."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from edgefleet.errors import ConfigError, MalformedInputError

PRIVATE_KEY_MODE = 0o600


def keyid_of(public_raw: bytes) -> str:
    """Return the key id: hex SHA-256 of the raw 32-byte Ed25519 public key."""
    return hashlib.sha256(public_raw).hexdigest()


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key as named in metadata."""

    raw: bytes

    @classmethod
    def from_hex(cls, value: str) -> PublicKey:
        """Parse a hex-encoded raw public key, refusing anything but 32 bytes."""
        try:
            raw = bytes.fromhex(value)
        except (ValueError, TypeError) as e:
            raise MalformedInputError("public key is not hex") from e
        if len(raw) != 32:
            raise MalformedInputError("an Ed25519 public key has 32 bytes")
        return cls(raw)

    @property
    def keyid(self) -> str:
        """The key id derived from the key itself."""
        return keyid_of(self.raw)

    @property
    def hex(self) -> str:
        """Hex encoding of the raw key."""
        return self.raw.hex()

    def verifies(self, signature: bytes, message: bytes) -> bool:
        """Tell whether ``signature`` is this key's signature over ``message``."""
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, message)
        except InvalidSignature:
            return False
        return True


class SigningKey:
    """An Ed25519 private key that signs metadata, policy, checkpoints and exports."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public = PublicKey(raw)

    @classmethod
    def generate(cls) -> SigningKey:
        """Make a fresh random key."""
        return cls(Ed25519PrivateKey.generate())

    @property
    def keyid(self) -> str:
        """The key id of the public half."""
        return self.public.keyid

    def sign(self, message: bytes) -> bytes:
        """Sign ``message`` (already the exact bytes to sign)."""
        return self._key.sign(message)

    def save(self, path: Path) -> None:
        """Write the key as PKCS#8 PEM to a new file readable by its owner only."""
        pem = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_private_file(path, pem)

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        """Read a PKCS#8 PEM Ed25519 key written by :meth:`save`."""
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except OSError as e:
            raise ConfigError(f"cannot read key {path}: {e.strerror}") from e
        except ValueError as e:
            raise ConfigError(f"{path} is not a PEM private key") from e
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{path} is not an Ed25519 key")
        return cls(key)


def write_private_file(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 (never wider, even briefly) and write ``data``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_KEY_MODE)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
