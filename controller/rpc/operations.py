"""What load balancers, Kubernetes and operators' tools talk to: gRPC health checking,
server reflection and Prometheus ``/metrics``.

Health is served on the controller's own listeners and, without TLS, on ``health_listen``
(Kubernetes' gRPC probes and most load balancers speak plaintext only). It reports
SERVING while the database answers, NOT_SERVING when it does not or while the replica
drains for shutdown, so traffic moves to another replica first.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import grpc
import structlog
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from sqlalchemy import text

from edgefleet.config_files import split_address
from edgefleet.controller.app.metrics import ControllerMetrics
from edgefleet.controller.store.database import Database
from edgefleet.errors import ConfigError, EdgefleetError
from edgefleet.lifecycle import listen_http
from edgefleet.v1 import device_pb2, operator_pb2

log = structlog.get_logger("controller.operations")

# The services of this controller, by the names health checks and reflection use.
SERVICE_NAMES = (
    device_pb2.DESCRIPTOR.services_by_name["DeviceService"].full_name,
    operator_pb2.DESCRIPTOR.services_by_name["OperatorService"].full_name,
)
DATABASE_PROBE_SECONDS = 5.0
# gRPC listens with SO_REUSEPORT by default: a second listener on a port already in use (the
# sync and enrollment listeners given one address, or a second controller on this host)
# would bind too and the kernel would split connections between them, so TLS-only
# enrollments would reach the mTLS listener and be dropped. Bind exclusively: the second
# listener fails to start with a clear error instead.
EXCLUSIVE_PORTS = [("grpc.so_reuseport", 0)]


def check_can_listen(address: str) -> None:
    """Refuse, in one line, an address this host cannot listen on (in use, not local,
    privileged port) before gRPC tries: its own error is a log line and a vaguer message."""
    host, port = split_address(address)
    if port == 0:
        return
    try:
        candidates = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as e:
        raise ConfigError(f"cannot listen on {address}: {e.strerror}") from e
    for family, kind, proto, _, socket_address in candidates:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does
            try:
                probe.bind(socket_address)
            except OSError as e:
                raise ConfigError(f"cannot listen on {address}: {e.strerror}") from e


def add_health_and_reflection(server: grpc.aio.Server, servicer: health.aio.HealthServicer) -> None:
    """Serve health checking and reflection on ``server`` beside the controller's services."""
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )


class Operations:
    """Health status, the plaintext health listener and the metrics listener of a replica."""

    def __init__(
        self, db: Database, metrics: ControllerMetrics, health_listen: str, metrics_listen: str
    ) -> None:
        self.db = db
        self.metrics = metrics
        self.health = health.aio.HealthServicer()
        self.health_listen = health_listen
        self.metrics_listen = metrics_listen
        self.health_port = 0
        self.metrics_port = 0
        self._health_server: grpc.aio.Server | None = None
        self._metrics_runner: web.AppRunner | None = None
        self._probe: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the health and metrics listeners (each may be disabled with ""); health
        says NOT_SERVING until :meth:`report_health`."""
        await self._set(False)  # until the first database probe answers
        if self.health_listen:
            check_can_listen(self.health_listen)
            server = grpc.aio.server(options=EXCLUSIVE_PORTS)
            health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
            try:
                self.health_port = server.add_insecure_port(self.health_listen)
            except RuntimeError as e:
                raise ConfigError(f"cannot listen on {self.health_listen}: {e}") from e
            await server.start()
            self._health_server = server
        if self.metrics_listen:
            app = web.Application()
            app.router.add_get("/metrics", self._serve_metrics)
            self._metrics_runner, bound = await listen_http(app, self.metrics_listen)
            self.metrics_port = int(bound.rsplit(":", 1)[1])

    def report_health(self) -> None:
        """The controller serves: from now on health follows the database's answers."""
        self._probe = asyncio.get_running_loop().create_task(self._probe_database())

    async def _serve_metrics(self, request: web.Request) -> web.Response:
        body = await asyncio.to_thread(self.metrics.exposition)
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    async def _set(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)

    async def _probe_database(self) -> None:
        serving: bool | None = None
        while True:
            ok = await asyncio.to_thread(self._database_answers)
            if ok != serving:
                log.info("controller.health", serving=ok)
                await self._set(ok)
                serving = ok
            await asyncio.sleep(DATABASE_PROBE_SECONDS)

    def _database_answers(self) -> bool:
        try:
            with self.db.session() as session:
                session.execute(text("select 1"))
            return True
        except EdgefleetError:
            return False

    async def draining(self) -> None:
        """The replica is stopping: report NOT_SERVING from now on."""
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        await self.health.enter_graceful_shutdown()

    async def stop(self) -> None:
        """Close the health and metrics listeners (after the main server drained)."""
        if self._health_server is not None:
            await self._health_server.stop(grace=None)
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
