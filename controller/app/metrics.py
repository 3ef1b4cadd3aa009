"""Prometheus metrics of the controller (prometheus-client, one registry per process).

Call counts and latencies are counted as calls are served; fleet figures (devices by state,
stale devices, rollouts by state, audit tamper alerts) are read from the database when
``/metrics`` is scraped, so every replica reports the same fleet.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from edgefleet.controller.store.database import Database
from edgefleet.controller.store.schema import AuditHead, Device, Rollout
from edgefleet.errors import EdgefleetError

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60)


class FleetCollector(Collector):
    """Fleet gauges computed from the database at scrape time."""

    def __init__(self, db: Database, stale_after: timedelta) -> None:
        self.db = db
        self.stale_after = stale_after

    def collect(self) -> Iterator[Metric]:
        devices = GaugeMetricFamily(
            "edgefleet_devices", "Enrolled devices by state", labels=["state"]
        )
        stale = GaugeMetricFamily(
            "edgefleet_devices_stale",
            "Active devices that have not reported within stale_after_seconds",
        )
        rollouts = GaugeMetricFamily("edgefleet_rollouts", "Rollouts by state", labels=["state"])
        alerts = GaugeMetricFamily(
            "edgefleet_audit_tamper_alerts", "Audit chains with a tamper alert"
        )
        up = GaugeMetricFamily("edgefleet_database_up", "1 when the last scrape read the database")
        cutoff = datetime.now(UTC) - self.stale_after
        try:
            with self.db.session() as session:
                for state, count in session.execute(
                    select(Device.state, func.count()).group_by(Device.state)
                ):
                    devices.add_metric([state], count)
                stale.add_metric(
                    [],
                    session.scalar(
                        select(func.count())
                        .select_from(Device)
                        .where(
                            Device.state == "active",
                            (Device.last_seen.is_(None)) | (Device.last_seen < cutoff),
                        )
                    )
                    or 0,
                )
                for state, count in session.execute(
                    select(Rollout.state, func.count()).group_by(Rollout.state)
                ):
                    rollouts.add_metric([state], count)
                alerts.add_metric(
                    [],
                    session.scalar(
                        select(func.count())
                        .select_from(AuditHead)
                        .where(AuditHead.tamper_alert.is_(True))
                    )
                    or 0,
                )
        except EdgefleetError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield from (devices, stale, rollouts, alerts, up)


class ControllerMetrics:
    """The counters and histograms the gRPC guard updates, plus the fleet collector."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.calls = Counter(
            "edgefleet_grpc_calls",
            "gRPC calls served, by method and status code",
            ["method", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "edgefleet_grpc_call_seconds",
            "Time to serve a gRPC call (streams: until the last message)",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.syncs = Counter(
            "edgefleet_syncs",
            "Device syncs on this replica, by answer: kept (no query; see "
            "edgefleet.controller.fleet.syncs) or full (one transaction)",
            ["answer"],
            registry=r,
        )
        self.audit_records = Counter(
            "edgefleet_audit_records_ingested",
            "Device audit records verified and stored on this replica",
            registry=r,
        )
        self.audit_pushes = Counter(
            "edgefleet_audit_pushes",
            "Device audit pushes on this replica, by result: stored (chain verified) or "
            "tamper (the device's chain is under a tamper alert)",
            ["result"],
            registry=r,
        )
        self.watch_streams = Gauge(
            "edgefleet_watch_streams", "Open device watch streams on this replica", registry=r
        )

    def add_fleet(self, db: Database, stale_after: timedelta) -> None:
        """Report fleet figures from ``db`` at each scrape."""
        self.registry.register(FleetCollector(db, stale_after))

    def exposition(self) -> bytes:
        """The text exposition format."""
        return bytes(generate_latest(self.registry))
