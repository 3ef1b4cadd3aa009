"""The controller's data directory: where keys, metadata, TLS material and blobs live."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from edgefleet.controller.trust.ca import OPERATOR_VALIDITY, CertificateAuthority
from edgefleet.errors import ConfigError
from edgefleet.tls import cert_pem, cert_sha256, key_pem, new_tls_key
from edgefleet.trust.envelope import Envelope, sign_envelope
from edgefleet.trust.keys import SigningKey, write_private_file
from edgefleet.trust.metadata import ROLES, ROOT_TYPE, RoleKeys, Root
from edgefleet.trust.verifier import root_fingerprint

ROOT_EXPIRY = timedelta(days=365)


@dataclass(frozen=True)
class DataDir:
    """Named paths inside a controller data directory."""

    path: Path

    @property
    def keys(self) -> Path:
        return self.path / "keys"

    def role_key(self, role: str) -> Path:
        return self.keys / f"{role}.key"

    @property
    def root_metadata(self) -> Path:
        return self.path / "metadata" / "root"

    @property
    def tls(self) -> Path:
        return self.path / "tls"

    @property
    def ca_cert(self) -> Path:
        return self.tls / "ca.pem"

    @property
    def blobs(self) -> Path:
        return self.path / "blobs"

    @property
    def operators(self) -> Path:
        return self.path / "operators"

    @property
    def listening_file(self) -> Path:
        """Written by `serve` with the bound addresses (useful with port 0)."""
        return self.path / "serve.addr"

    def require_initialized(self) -> None:
        """Refuse a folder `edgefleetctl init` did not make, before anything reads it."""
        if not self.root_metadata.is_dir():
            raise ConfigError(
                f"{self.path} is not a controller data directory: run "
                f"`edgefleetctl init --data-dir {self.path}` first"
            )

    def load_role_key(self, role: str) -> SigningKey:
        return SigningKey.load(self.role_key(role))

    def load_ca(self) -> CertificateAuthority:
        return CertificateAuthority.load(self.ca_cert, self.tls / "ca.key")

    def root_chain(self) -> list[Envelope]:
        """Every root metadata version, oldest first."""
        files = sorted(self.root_metadata.glob("*.json"), key=lambda p: int(p.stem))
        if not files:
            raise ConfigError(f"{self.path} has no root metadata: run `edgefleetctl init` first")
        return [Envelope.from_json(p.read_bytes()) for p in files]


@dataclass(frozen=True)
class InitResult:
    """What `edgefleetctl init` made."""

    root_fingerprint: str
    operator_config: Path


def initialize(path: Path, fleet_name: str, hosts: list[str], advertise: str) -> InitResult:
    """Create a new data dir: role keys, root v1, CA, server and admin operator certificates."""
    path = path.resolve()
    data = DataDir(path)
    if (path / "keys").exists():
        raise ConfigError(f"{path} is already initialized")
    for directory in (data.keys, data.root_metadata, data.tls, data.blobs, data.operators):
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(data.keys, 0o700)
    keys = {}
    for role in ROLES:
        keys[role] = SigningKey.generate()
        keys[role].save(data.role_key(role))
    ca = CertificateAuthority.create(fleet_name)
    ca.save(data.ca_cert, data.tls / "ca.key")
    server_key = new_tls_key()
    server_hosts = sorted({"127.0.0.1", "localhost", socket.gethostname(), *hosts})
    (data.tls / "server.pem").write_bytes(cert_pem(ca.issue_server(server_key, server_hosts)))
    write_private_file(data.tls / "server.key", key_pem(server_key))
    root = Root(
        version=1,
        expires=datetime.now(UTC).replace(microsecond=0) + ROOT_EXPIRY,
        keys={k.keyid: k.public for k in keys.values()},
        roles={role: RoleKeys((keys[role].keyid,), 1) for role in ROLES},
        ca_sha256=cert_sha256(cert_pem(ca.cert)),
    )
    envelope = sign_envelope(ROOT_TYPE, root.to_payload(), [keys["root"]])
    (data.root_metadata / "1.json").write_bytes(envelope.to_json())
    operator_config = issue_operator_credential(data, ca, "admin", advertise)
    return InitResult(root_fingerprint(envelope), operator_config)


def issue_operator_credential(
    data: DataDir, ca: CertificateAuthority, name: str, controller_address: str
) -> Path:
    """Write the bootstrap operator's key, certificate and config file."""
    key = new_tls_key()
    folder = data.operators / name
    folder.mkdir(mode=0o700)
    certificate = ca.issue_client(key.public_key(), f"operator:{name}", OPERATOR_VALIDITY)
    return write_operator_credential(
        folder, key_pem(key), cert_pem(certificate), cert_pem(ca.cert), controller_address
    )


def write_operator_credential(
    folder: Path, key: bytes, certificate: bytes, ca: bytes, controller_address: str
) -> Path:
    """An operator credential folder: key (0600), certificate, CA and `edgefleetctl.toml`."""
    write_private_file(folder / "key.pem", key)
    (folder / "cert.pem").write_bytes(certificate)
    (folder / "ca.pem").write_bytes(ca)
    config = folder / "edgefleetctl.toml"
    config.write_text(
        f'controller = "{controller_address}"\nca = "ca.pem"\n'
        'certificate = "cert.pem"\nkey = "key.pem"\n'
    )
    return config
