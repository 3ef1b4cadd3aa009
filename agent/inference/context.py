"""What the local API's handlers share: configuration, registry, pool, audit, policy, metrics."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field

import structlog
from aiohttp import web

from edgefleet.agent.app.config import AgentConfig
from edgefleet.agent.audit.log import AuditLog
from edgefleet.agent.inference.metrics import ApiMetrics
from edgefleet.agent.inference.pool import ModelPool
from edgefleet.agent.inference.serving_stats import ServingStats
from edgefleet.agent.rbac.policy import DevicePolicy
from edgefleet.agent.registry.offline import OfflineGuard
from edgefleet.agent.registry.registry import Registry
from edgefleet.audit import AuditEvent
from edgefleet.denials import DenialWindow
from edgefleet.rbac import Policy

ANONYMOUS = "local:anonymous"
log = structlog.get_logger("agent.api")


@dataclass
class ApiContext:
    """What the handlers need."""

    config: AgentConfig
    registry: Registry
    pool: ModelPool
    audit: AuditLog
    policy: DevicePolicy
    labels: dict[str, str] = field(default_factory=dict)
    metrics: ApiMetrics = field(default_factory=ApiMetrics)
    serving: ServingStats = field(default_factory=ServingStats)
    offline: OfflineGuard | None = None
    auth_failures: DenialWindow = field(default_factory=lambda: DenialWindow(60, 30))

    def __post_init__(self) -> None:
        self.auth_failures = DenialWindow(60, self.config.api_auth_failures_per_minute)

    @property
    def allowed_origins(self) -> frozenset[str]:
        """Origins a browser page may call from with api_auth off."""
        return frozenset(o.strip() for o in self.config.api_allowed_origins.split(",") if o.strip())

    def allows(self, subject: str, permission: str, model: str = "") -> bool:
        """RBAC check (everything is allowed with api_auth off, on loopback only)."""
        if not self.config.api_auth:
            return True
        return self.policy_now().authorize(subject, permission, model, self.labels)

    def policy_now(self) -> Policy:
        """The device policy in force."""
        return self.policy.current()

    async def audit_event(self, event: AuditEvent) -> None:
        """Queue the request's audit record for the writer; do not wait for its fsync.

        The writer makes it durable within one group commit (milliseconds), before it can
        be shipped or acknowledged; the request does not pay the disk's latency.
        """
        self.audit.submit(event).add_done_callback(_report_audit_failure)


def _report_audit_failure(future: Future[int]) -> None:
    if future.exception() is not None:
        log.error("audit.append_failed", reason=str(future.exception()))


CONTEXT = web.AppKey("ctx", ApiContext)
SUBJECT = web.RequestKey("subject", str)
