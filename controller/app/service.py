"""Composition root of `edgefleetctl serve`: build the services and run the gRPC server."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import dataclass, field
from datetime import UTC, timedelta
from pathlib import Path

import grpc
import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from edgefleet.config_files import split_address
from edgefleet.controller.app.config import ControllerConfig
from edgefleet.controller.app.datadir import DataDir
from edgefleet.controller.app.metrics import ControllerMetrics
from edgefleet.controller.catalog.blobs import BlobStore
from edgefleet.controller.catalog.publish import Catalog
from edgefleet.controller.fleet.changes import ChangeFeed, PostgresRelay
from edgefleet.controller.fleet.enrollment import Enrollment, EnrollmentLimits
from edgefleet.controller.fleet.syncs import DeviceSyncs
from edgefleet.controller.rbac.access import AccessControl
from edgefleet.controller.rbac.operators import ensure_bootstrap_admin
from edgefleet.controller.rbac.policies import PolicyService
from edgefleet.controller.rollouts.engine import advance_rollouts
from edgefleet.controller.rpc.guard import GuardInterceptor
from edgefleet.controller.rpc.operations import (
    EXCLUSIVE_PORTS,
    Operations,
    add_health_and_reflection,
    check_can_listen,
)
from edgefleet.controller.rpc.servicers import DeviceServicer, OperatorServicer, add_device_service
from edgefleet.controller.store.database import Database
from edgefleet.controller.trust.ca import CertificateAuthority
from edgefleet.controller.trust.keyring import Keyring
from edgefleet.controller.trust.snapshots import Snapshots
from edgefleet.errors import ConfigError, EdgefleetError
from edgefleet.lifecycle import until_signalled
from edgefleet.tls import cert_pem
from edgefleet.trust.envelope import Envelope
from edgefleet.trust.keys import SigningKey
from edgefleet.v1 import operator_pb2_grpc

log = structlog.get_logger("controller")


@dataclass
class ControllerApp:
    """Everything a servicer needs, built once from the configuration."""

    config: ControllerConfig
    data: DataDir
    db: Database
    blobs: BlobStore
    catalog: Catalog
    enrollment: Enrollment
    policies: PolicyService
    access: AccessControl
    ca: CertificateAuthority
    keyring: Keyring
    snapshots: Snapshots
    ca_pem: bytes
    changes: ChangeFeed
    syncs: DeviceSyncs
    sync_port: int = 0
    metrics: ControllerMetrics = field(default_factory=ControllerMetrics)

    @property
    def root_chain(self) -> tuple[Envelope, ...]:
        """Every root version, as the data directory holds it now."""
        return self.keyring.current().root_chain

    @property
    def audit_key(self) -> SigningKey:
        """The key that signs receipts, attestations and exports under the current root."""
        return self.keyring.current().signer("audit")

    @classmethod
    def build(cls, config: ControllerConfig) -> ControllerApp:
        """Open the data directory and database; sign targets v1 on a new controller."""
        data = DataDir(config.data_dir)
        data.require_initialized()
        keyring = Keyring(data)
        material = keyring.current()
        for role in ("targets", "policy", "timestamp", "audit"):
            material.signers(role)  # refuse to start without the online keys
        ca = data.load_ca()
        db = Database(config.resolved_database_url)
        db.upgrade_schema()
        blobs = BlobStore(data.blobs)
        catalog = Catalog(
            db,
            blobs,
            keyring,
            timedelta(days=config.targets_expiry_days),
            config.max_model_bytes,
        )
        catalog.ensure_targets()
        ensure_bootstrap_admin(db, _read(data.operators / "admin" / "cert.pem"))
        lifetime = timedelta(seconds=config.device_certificate_seconds)
        policies = PolicyService(db, keyring, timedelta(days=config.policy_expiry_days))
        metrics = ControllerMetrics()
        metrics.add_fleet(db, timedelta(seconds=config.stale_after_seconds))
        changes = ChangeFeed()
        return cls(
            config=config,
            data=data,
            db=db,
            blobs=blobs,
            catalog=catalog,
            enrollment=Enrollment(
                db,
                ca,
                lifetime,
                EnrollmentLimits(
                    config.enroll_failures_per_minute,
                    config.max_pending_per_source,
                    timedelta(hours=config.pending_expiry_hours),
                ),
            ),
            policies=policies,
            access=AccessControl(db),
            ca=ca,
            keyring=keyring,
            snapshots=Snapshots(
                db, keyring, catalog, policies, timedelta(days=config.timestamp_expiry_days)
            ),
            ca_pem=cert_pem(ca.cert),
            changes=changes,
            syncs=DeviceSyncs(db, changes, metrics),
            metrics=metrics,
        )


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from e


async def advance_rollouts_job(app: ControllerApp) -> None:
    """Judge and advance rollouts; wake devices' watch streams when assignments moved."""
    stale_after = timedelta(seconds=app.config.stale_after_seconds)
    try:
        changed = await asyncio.to_thread(advance_rollouts, app.db, stale_after)
    except EdgefleetError as e:
        log.warning("rollouts.advance_failed", reason=str(e))
        return
    if changed:
        app.changes.notify()


def build_server(app: ControllerApp, operations: Operations) -> tuple[grpc.aio.Server, int, int]:
    """A grpc.aio server with an mTLS listener and a TLS-only enrollment listener (both
    also answer health checks and reflection)."""
    limit = app.config.max_message_bytes
    server = grpc.aio.server(
        interceptors=[
            GuardInterceptor(
                app.access, app.metrics, lambda: app.syncs.revision, app.changes.notify
            )
        ],
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            *EXCLUSIVE_PORTS,
        ],
    )
    add_device_service(server, DeviceServicer(app))
    operator_pb2_grpc.add_OperatorServiceServicer_to_server(OperatorServicer(app), server)
    add_health_and_reflection(server, operations.health)
    key_pair = [(_read(app.data.tls / "server.key"), _read(app.data.tls / "server.pem"))]
    mtls = grpc.ssl_server_credentials(
        key_pair, root_certificates=app.ca_pem, require_client_auth=True
    )
    tls_only = grpc.ssl_server_credentials(key_pair)
    check_can_listen(app.config.listen)
    check_can_listen(app.config.enroll_listen)
    try:
        sync_port = server.add_secure_port(app.config.listen, mtls)
        enroll_port = server.add_secure_port(app.config.enroll_listen, tls_only)
    except RuntimeError as e:
        raise ConfigError(
            f"cannot listen on {app.config.listen} / {app.config.enroll_listen}: {e}"
        ) from e
    return server, sync_port, enroll_port


async def serve(config: ControllerConfig) -> None:
    """Run until SIGINT/SIGTERM; then report NOT_SERVING, end watch streams and let calls
    in flight finish for up to ``shutdown_grace_seconds``.

    Every resource is entered on one exit stack as it starts, so a failure at any step
    (a port in use, a database gone) releases what was started, in reverse order; the
    stack's order is also the orderly stop's."""
    app = await asyncio.to_thread(ControllerApp.build, config)
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(app.db.dispose)
        app.changes.listeners.append(app.snapshots.invalidate)
        if app.db.is_postgresql:
            relay = PostgresRelay(app.db, app.changes)
            relay.start()
            stack.push_async_callback(relay.stop)
        operations = Operations(app.db, app.metrics, config.health_listen, config.metrics_listen)
        stack.push_async_callback(operations.stop)
        await operations.start()  # NOT_SERVING until the server below serves
        # Its ports are bound from here, and only a started server lets go of them: nothing
        # that can fail comes between this and start().
        server, sync_port, enroll_port = build_server(app, operations)
        app.sync_port = sync_port
        stack.push_async_callback(app.syncs.stop)  # the last syncs' reports, after the drain
        app.syncs.start()
        await server.start()
        stack.push_async_callback(server.stop, config.shutdown_grace_seconds)
        operations.report_health()
        stack.callback(app.changes.close)  # end watch streams rather than at the grace
        stack.push_async_callback(operations.draining)  # NOT_SERVING first
        scheduler = _start_scheduler(app)
        stack.callback(scheduler.shutdown, wait=False)
        _write_listening(app, operations, sync_port, enroll_port)
        stack.callback(app.data.listening_file.unlink, missing_ok=True)
        await until_signalled(signal.SIGINT, signal.SIGTERM)
        log.info("controller.stopping", grace_seconds=config.shutdown_grace_seconds)


def _start_scheduler(app: ControllerApp) -> AsyncIOScheduler:
    """Rollouts judged and advanced every ``rollout_tick_seconds``."""
    scheduler = AsyncIOScheduler(timezone=UTC)
    scheduler.add_job(
        advance_rollouts_job,
        "interval",
        args=(app,),
        seconds=app.config.rollout_tick_seconds,
        max_instances=1,
        coalesce=True,
        id="advance_rollouts",
    )
    scheduler.start()
    return scheduler


def _write_listening(
    app: ControllerApp, operations: Operations, sync_port: int, enroll_port: int
) -> None:
    """The ports bound (port 0 picks one), in serve.addr and the log."""
    config = app.config
    host, _ = split_address(config.listen)
    enroll_host, _ = split_address(config.enroll_listen)
    lines = [f"{host}:{sync_port}", f"{enroll_host}:{enroll_port}"]
    for address, port in (
        (config.health_listen, operations.health_port),
        (config.metrics_listen, operations.metrics_port),
    ):
        lines.append(f"{split_address(address)[0]}:{port}" if address else "off")
    app.data.listening_file.write_text("\n".join(lines) + "\n")
    log.info(
        "controller.listening",
        sync=f"{host}:{sync_port}",
        enroll=f"{enroll_host}:{enroll_port}",
        health=operations.health_port or "off",
        metrics=operations.metrics_port or "off",
    )
