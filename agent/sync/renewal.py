"""Certificate renewal: before a third of its lifetime is left, trade a CSR for a fresh one."""

from __future__ import annotations

import asyncio
from datetime import datetime

import structlog

from edgefleet.agent.audit.log import AuditLog
from edgefleet.agent.enrollment.identity import IdentityFiles
from edgefleet.agent.sync.client import SyncClient
from edgefleet.audit import AuditEvent
from edgefleet.errors import SignatureError
from edgefleet.tls import common_name, is_issued_by, load_certificate, make_csr

log = structlog.get_logger("agent.renewal")


class CertificateRenewer:
    """Renews the device certificate over the existing mTLS channel (same key)."""

    def __init__(self, identity: IdentityFiles, client: SyncClient, audit: AuditLog) -> None:
        self.identity = identity
        self.client = client
        self.audit = audit

    def due(self, now: datetime) -> bool:
        """Less than a third of the current certificate's lifetime is left."""
        cert = load_certificate(self.identity.read(self.identity.certificate))
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        return cert.not_valid_after_utc - now < lifetime / 3

    async def renew_if_due(self, now: datetime) -> bool:
        """Renew when due; return whether a new certificate is in use."""
        if not await asyncio.to_thread(self.due, now):
            return False
        current = self.identity.read(self.identity.certificate)
        key, _ = self.identity.keys()
        renewed = await self.client.renew_certificate(make_csr(key))
        ca = self.identity.read(self.identity.ca)
        if not is_issued_by(renewed, ca) or common_name(renewed) != common_name(current):
            raise SignatureError("the renewed certificate is not this device's")
        await asyncio.to_thread(self.identity.replace_certificate, renewed)
        await self.client.use_certificate(renewed)
        expires = load_certificate(renewed).not_valid_after_utc.isoformat()
        event = AuditEvent(
            "agent", "device.renew", common_name(renewed), "success", {"expires": expires}
        )
        await asyncio.to_thread(self.audit.append, event)
        log.info("certificate.renewed", expires=expires)
        return True
