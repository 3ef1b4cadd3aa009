"""Device syncs at fleet scale: a sync that changes nothing needs no database round trip.

Every agent syncs once a minute or so: 10,000 agents are 167 syncs a second, and almost
all of them report what they reported last time and get the answer they got last time.
A full sync stores the report, judges it for rollouts under way and reads the device's
assignments, pins and audit head in one transaction
(``edgefleet.controller.fleet.devices.sync_device``).
Here, a device's answer is kept after such a sync and reused while nothing changed:

- **Revision.** The change feed's generation (bumped on this replica by every change to
  what devices run or may do, and relayed from the other replicas by LISTEN/NOTIFY), plus
  a safety net should a notification be lost: every such change appends to the
  controller's audit chain in its own transaction, and the chain's head is read every
  ``RECHECK_SECONDS``. An answer kept under an older revision is never reused.
- **Reuse.** A device with a kept answer gets it again (with the current snapshot) and its
  report is queued; reports are written behind, the newest per device, every
  ``FLUSH_SECONDS`` in one transaction for all of them (``write_reports``: a report never
  overwrites a later one).
- **Judging.** A report that a rollout under way judges is judged as it arrives, by the
  same rules (``edgefleet.controller.rollouts.health.judge``) against what the full path kept of
  the rollout (strategy, version, baseline speed); the verdict is written behind with the
  report. A failed verdict takes the full path instead, which judges again in a
  transaction, puts the device back on its previous version and answers with it.
- Family assignments are never kept (the variant is re-picked from each report): those
  devices take the full path every time.

What a crash loses is at most ``FLUSH_SECONDS`` of reports (each device sends its status
again at its next sync); a graceful stop writes them. Operator reads that show reports
(`devices list`) write the queue first.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import structlog

from edgefleet.audit import CONTROLLER_CHAIN
from edgefleet.controller.app.metrics import ControllerMetrics
from edgefleet.controller.audit.log import acked_seq
from edgefleet.controller.fleet.changes import ChangeFeed
from edgefleet.controller.fleet.devices import (
    Synced,
    desired_state,
    report_values,
    sync_device,
    write_reports,
)
from edgefleet.controller.rollouts.engine import Judged, Judging, verdict_state
from edgefleet.controller.rollouts.health import judge
from edgefleet.controller.store.database import Database
from edgefleet.controller.trust.snapshots import Snapshot
from edgefleet.errors import EdgefleetError
from edgefleet.fleet import (
    DesiredState,
    DownloadProgress,
    InstalledModel,
    ModelAssignment,
    ModelHealth,
    StatusReport,
)

log = structlog.get_logger("edgefleet.controller.fleet.syncs")

# How often the controller's audit head is read (a lost change notification is noticed
# within this long).
RECHECK_SECONDS = 2.0
# How long a report may wait in memory before it is written.
FLUSH_SECONDS = 0.2

Revision = tuple[int, int]


@dataclass(frozen=True)
class _Kept:
    """A device's last answer, and the rollouts that judge its reports."""

    assignments: tuple[ModelAssignment, ...]
    acked_seq: int
    judging: tuple[Judging, ...]


@dataclass(frozen=True)
class _Reported:
    """A report not yet written, as rollout judging reads it (health.Reported)."""

    installed: tuple[InstalledModel, ...]
    health: tuple[ModelHealth, ...]
    downloads: tuple[DownloadProgress, ...]


def _judge(judging: tuple[Judging, ...], values: dict[str, Any]) -> list[tuple[int, Judged]] | None:
    """The verdict of each rollout judging this report, or None when one fails it (the
    full path then reverts the device in a transaction)."""
    if not judging:
        return []
    reported = _Reported(values["installed"], values["health"], values["downloads"])
    verdicts = []
    for rollout in judging:
        verdict = judge(reported, rollout.name, rollout, rollout.strategy)
        if verdict.verdict == "failed":
            return None
        judged = Judged(verdict_state(verdict.verdict), verdict.reason, values["last_seen"])
        verdicts.append((rollout.rollout_id, judged))
    return verdicts


class DeviceSyncs:
    """Answers device syncs, reusing kept answers while the revision holds (see module)."""

    def __init__(self, db: Database, changes: ChangeFeed, metrics: ControllerMetrics) -> None:
        self.db = db
        self.changes = changes
        self._kept_answers = metrics.syncs.labels("kept")
        self._full_answers = metrics.syncs.labels("full")
        self._head_moves = 0
        self._head_seq: int | None = None
        self._kept: dict[str, _Kept] = {}
        self._kept_revision: Revision = (-1, -1)
        self._queued: dict[str, dict[str, object]] = {}
        self._judged: dict[tuple[int, str], Judged] = {}
        self._flushing = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    @property
    def revision(self) -> Revision:
        """What kept answers (and admissions: edgefleet.controller.rbac.access) are valid for."""
        return (self.changes.generation, self._head_moves)

    async def sync(self, device_id: str, report: StatusReport, snapshot: Snapshot) -> DesiredState:
        """Store ``report`` (now or soon) and answer with the device's desired state."""
        revision = self.revision
        kept = self._kept.get(device_id) if revision == self._kept_revision else None
        if kept is not None:
            values = report_values(report, datetime.now(UTC))
            verdicts = _judge(kept.judging, values)
            if verdicts is not None:  # no failure: the answer stands
                self._queued[device_id] = values
                for rollout_id, judged in verdicts:
                    self._judged[(rollout_id, device_id)] = judged
                self._kept_answers.inc()
                return desired_state(snapshot, kept.assignments, kept.acked_seq)
        self._queued.pop(device_id, None)  # this report is newer
        synced: Synced = await asyncio.to_thread(sync_device, self.db, device_id, report, snapshot)
        self._keep(device_id, synced, revision)
        self._full_answers.inc()
        return synced.state

    def _keep(self, device_id: str, synced: Synced, revision: Revision) -> None:
        if revision != self.revision:  # changed while we read: that answer may be old
            return
        if revision != self._kept_revision:
            self._kept.clear()
            self._kept_revision = revision
        if synced.reusable:
            state = synced.state
            self._kept[device_id] = _Kept(state.assignments, state.audit_acked_seq, synced.judging)
        else:
            self._kept.pop(device_id, None)

    def acked(self, device_id: str, seq: int) -> None:
        """The device's audit push was stored up to ``seq``: answer with that from now."""
        kept = self._kept.get(device_id)
        if kept is not None and seq > kept.acked_seq:
            self._kept[device_id] = replace(kept, acked_seq=seq)

    async def flush(self) -> None:
        """Write the queued reports and verdicts; on failure they stay queued (unless a
        newer one came)."""
        async with self._flushing:
            reports, self._queued = self._queued, {}
            judgements, self._judged = self._judged, {}
            try:
                await asyncio.to_thread(write_reports, self.db, reports, judgements)
            except EdgefleetError as e:
                for device_id, values in reports.items():
                    self._queued.setdefault(device_id, values)
                for key, judged in judgements.items():
                    self._judged.setdefault(key, judged)
                log.warning("syncs.flush_failed", reports=len(reports), reason=str(e))

    async def recheck(self) -> None:
        """Read the controller's audit head; a move not announced here ends kept answers."""
        try:
            seq = await asyncio.to_thread(self._controller_head)
        except EdgefleetError as e:
            log.warning("syncs.recheck_failed", reason=str(e))
            self._head_moves += 1  # unknown: assume it moved
            return
        if seq != self._head_seq:
            self._head_seq = seq
            self._head_moves += 1

    def _controller_head(self) -> int:
        with self.db.session() as session:
            return acked_seq(session, CONTROLLER_CHAIN)

    def start(self) -> None:
        """Write queued reports and recheck the revision in the background until `stop`."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        checked = 0.0
        while True:
            try:
                if time.monotonic() - checked >= RECHECK_SECONDS:
                    await self.recheck()
                    checked = time.monotonic()
                await asyncio.sleep(FLUSH_SECONDS)
                await self.flush()
            except Exception:  # noqa: BLE001 - logged; the writer must go on writing
                log.exception("syncs.background_failed")
                self._head_moves += 1  # kept answers may be stale now
                await asyncio.sleep(FLUSH_SECONDS)

    async def stop(self) -> None:
        """Stop the background work and write what is queued."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
