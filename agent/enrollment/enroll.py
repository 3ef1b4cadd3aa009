"""Enrollment: verify the controller against the pinned root, then trade a token for a certificate.

The agent knows only the controller's address, a one-time token and the fleet's root
fingerprint. It pins the enrollment listener's certificate for one call to fetch the
root chain and CA, and sends the token only after checking that the root chain starts at
the pinned fingerprint, that the root names this CA, and that the CA issued the server's
certificate.
"""

from __future__ import annotations

import socket
import ssl
from datetime import UTC, datetime

from edgefleet import __version__
from edgefleet.agent.app.database import AgentDatabase
from edgefleet.agent.app.paths import AgentPaths
from edgefleet.agent.audit.log import AuditLog
from edgefleet.agent.enrollment.identity import Enrollment
from edgefleet.agent.registry.blobs import BlobStore
from edgefleet.agent.registry.offline import mark_fresh
from edgefleet.agent.registry.registry import Registry
from edgefleet.agent.sync.client import EnrollmentClient
from edgefleet.audit import AuditEvent
from edgefleet.config_files import split_address
from edgefleet.errors import ConfigError, EdgefleetError, SignatureError, TransportError
from edgefleet.tls import cert_sha256, common_name, is_issued_by, key_fingerprint, make_csr
from edgefleet.trust.verifier import TrustedState

FINGERPRINT_LENGTH = 64


def fetch_server_certificate(host: str, port: int, timeout: float) -> bytes:
    """The certificate the enrollment listener presents (not yet trusted)."""
    try:
        return ssl.get_server_certificate((host, port), timeout=timeout).encode("ascii")
    except (OSError, ssl.SSLError) as e:
        raise TransportError(f"cannot reach the controller at {host}:{port}: {e}") from e


class EnrollmentPending(EdgefleetError):
    """The controller has not approved this device yet; ask again later."""


def enroll(
    paths: AgentPaths, controller: str, token: str, fingerprint: str, timeout: float = 30.0
) -> Enrollment:
    """Enroll this device; on success every identity file and the trusted root are stored.

    Without a token the device asks for approval (or is accepted at once when its key was
    preauthorized); while it is pending this raises EnrollmentPending.
    """
    fingerprint = fingerprint.strip().lower()
    if len(fingerprint) != FINGERPRINT_LENGTH or any(
        c not in "0123456789abcdef" for c in fingerprint
    ):
        raise ConfigError("the root fingerprint must be 64 hex characters")
    if paths.identity.exists():
        raise ConfigError(f"{paths.data_dir} is already enrolled")
    host, port = split_address(controller)
    server_pem = fetch_server_certificate(host, port, timeout)
    client = EnrollmentClient(controller, server_pem, timeout)
    try:
        bootstrap = client.bootstrap()
        state = TrustedState.bootstrap(fingerprint, bootstrap.root_chain, datetime.now(UTC))
        if cert_sha256(bootstrap.ca_pem) != state.root.ca_sha256:
            raise SignatureError("the controller's CA is not the one the fleet root names")
        if not is_issued_by(server_pem, bootstrap.ca_pem):
            raise SignatureError("the controller's certificate was not issued by the fleet CA")
        tls_key, audit_key = paths.identity.keys()
        result = client.enroll(
            token, make_csr(tls_key), socket.gethostname(), __version__, audit_key.public.hex
        )
    finally:
        client.close()
    if result.status == "pending":
        raise EnrollmentPending(
            f"device {result.device_id} waits for approval (`edgefleetctl devices accept "
            f"{result.device_id}`); key fingerprint {key_fingerprint(tls_key)}"
        )
    if not is_issued_by(result.certificate_pem, bootstrap.ca_pem) or (
        common_name(result.certificate_pem) != f"device:{result.device_id}"
    ):
        raise SignatureError("the issued certificate does not belong to this device")
    enrollment = Enrollment(result.device_id, host, result.sync_port, fingerprint, result.labels)
    db = AgentDatabase(paths.database)
    try:
        audit = AuditLog(db, result.device_id)
        Registry(db, BlobStore(paths.blobs), audit).save_trust(state)
        mark_fresh(db, datetime.now(UTC))  # the root chain was just verified online
        if result.audit_key_attestation is not None:
            paths.identity.audit_attestation.write_bytes(result.audit_key_attestation.to_json())
        paths.identity.save(enrollment, result.certificate_pem, bootstrap.ca_pem)
        audit.append(
            AuditEvent(
                "agent",
                "device.enroll",
                f"device:{result.device_id}",
                "success",
                {
                    "controller": controller,
                    "labels": result.labels,
                    "root_version": state.root.version,
                },
            )
        )
    finally:
        db.dispose()
    return enrollment
