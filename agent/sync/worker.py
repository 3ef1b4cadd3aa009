"""One sync pass: report status, verify desired state, fetch and install models, ship audit."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from edgefleet import __version__
from edgefleet.agent.app.config import AgentConfig
from edgefleet.agent.audit.log import AuditLog
from edgefleet.agent.inference.bench import load_results
from edgefleet.agent.inference.serving_stats import ServingStats
from edgefleet.agent.registry.blobs import BlobStore
from edgefleet.agent.registry.offline import mark_fresh
from edgefleet.agent.registry.preflight import check_before_download, device_resources
from edgefleet.agent.registry.registry import Registry
from edgefleet.agent.sync.backoff import Backoff
from edgefleet.agent.sync.client import SyncClient
from edgefleet.agent.sync.fetch import BlobSource, Fetcher
from edgefleet.agent.sync.health import model_health, smoke_or_refuse
from edgefleet.agent.sync.metering import Meter, TransferPausedError
from edgefleet.agent.sync.progress import ProgressBoard
from edgefleet.agent.sync.renewal import CertificateRenewer
from edgefleet.agent.sync.state import LAST_ERROR_KEY, LAST_SYNC_KEY, RECEIPT_KEY
from edgefleet.audit import AuditEvent, Checkpoint, verify_receipt
from edgefleet.errors import (
    AuditChainError,
    EdgefleetError,
    HashMismatchError,
    InferenceError,
    ResourceError,
    StorageError,
    TransportError,
    UntrustedInputError,
)
from edgefleet.fleet import DesiredState, ModelAssignment, StatusReport
from edgefleet.memory import give_back_freed_memory
from edgefleet.rbac import Policy
from edgefleet.trust.envelope import Envelope
from edgefleet.trust.keys import SigningKey
from edgefleet.trust.metadata import ModelManifest, format_time
from edgefleet.trust.verifier import TrustedState

log = structlog.get_logger("edgefleet.agent.sync")

SMOKE_RETRY_SECONDS = 3600.0
CHECKPOINT_SHIPPED_KEY = "checkpoint_shipped_seq"
MIN_AUDIT_PUSH_BYTES = 64 * 1024


class ControllerUnreachableError(TransportError):
    """The Sync call itself failed: back off before the next scheduled pass."""


@dataclass(frozen=True)
class SyncHooks:
    """What the running service adds to a sync pass; each may be left out (tests, tools)."""

    # Called with each newly verified signed policy.
    on_policy: Callable[[Policy], None] = lambda policy: None
    renewer: CertificateRenewer | None = None
    audit_key: SigningKey | None = None  # signs checkpoints of the audit chain
    # Re-reads the stored trust state: a bundle imported from the command line may have
    # moved it forward since the last pass.
    reload_trust: Callable[[], TrustedState] | None = None
    # Loads a new version and generates a few tokens before it may serve; a failure keeps
    # the old version serving and is retried only later. Returns the smoke test's
    # generation speed (tokens/s, reported as health).
    smoke_test: Callable[[ModelManifest], float] | None = None
    serving: ServingStats | None = None  # requests served per version (reported as health)
    mirrors: tuple[BlobSource, ...] = ()  # mirrors and LAN peers tried before the controller


class Syncer:
    """Converges the device towards the controller's desired state, verifying everything."""

    def __init__(
        self,
        config: AgentConfig,
        client: SyncClient,
        registry: Registry,
        blobs: BlobStore,
        audit: AuditLog,
        trust: TrustedState,
        hooks: SyncHooks = SyncHooks(),  # noqa: B008 - frozen, shared safely
    ) -> None:
        self.config = config
        self.client = client
        self.registry = registry
        self.blobs = blobs
        self.audit = audit
        self.trust = trust
        self.hooks = hooks
        self._lock = asyncio.Lock()
        self._refusals: dict[str, str] = {}  # the last reason audited, per action and target
        self.last_error: str | None = None  # this run's (None: as stored by the last run)
        self.meter = Meter(
            registry.db,
            config.transfer_windows,
            config.bandwidth_limit_bytes_per_second,
            config.daily_data_budget_bytes,
        )
        self.board = ProgressBoard(registry.db)
        self.fetcher = Fetcher(blobs, config.download_stall_seconds, self.meter, self.board)
        self.backoff = Backoff(config.sync_interval_seconds, config.max_backoff_seconds)
        # Records per audit push fill at most this many bytes: half a message (the rest is
        # framing and checkpoints), halved again each time a push is refused as too large
        # (a controller with a lower message limit than ours).
        self.audit_push_bytes = config.max_message_bytes // 2
        self._smoke_failures: dict[str, tuple[float, str]] = {}
        self._requested: asyncio.Task[None] | None = None
        self._again = False

    def request_sync(self, delay: float = 0.0) -> None:
        """Sync soon (after ``delay`` seconds), whatever the backoff says: the controller
        just proved it is there. A request made while one is pending or running adds one
        more pass after it (a pass already under way may have missed the change)."""
        if self._requested is not None and not self._requested.done():
            self._again = True
            return

        async def later() -> None:
            await asyncio.sleep(delay)
            await self.run_once(forced=True)
            while self._again:
                self._again = False
                await self.run_once(forced=True)

        self._requested = asyncio.get_running_loop().create_task(later())

    async def stop(self) -> None:
        """Cancel a requested pass that has not run yet (the agent is stopping)."""
        if self._requested is not None and not self._requested.done():
            self._requested.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._requested

    async def run_once(self, forced: bool = False) -> None:
        """A whole pass; errors are logged and reported at the next pass, never raised.

        While the controller is unreachable, scheduled passes wait out an exponential
        backoff; a forced pass (the watch stream reconnected) goes ahead at once.
        """
        if not forced and not self.backoff.ready():
            return
        async with self._lock:
            try:
                await self._pass()
                await self._note_error("")
            except ControllerUnreachableError as e:
                wait = self.backoff.failed()
                log.warning("sync.unreachable", reason=str(e), retry_in_seconds=round(wait, 1))
                await self._note_error(str(e))
                return  # nothing to ship audit records to either
            except EdgefleetError as e:
                log.warning("sync.failed", error=type(e).__name__, reason=str(e))
                await self._note_error(str(e))
            except OSError as e:  # disk full, permissions: report it like any other failure
                reason = f"local storage: {e.strerror or e}"
                log.error("sync.failed", error="OSError", reason=reason)
                await self._note_error(reason)
            finally:
                await self._push_audit()

    async def _note_error(self, reason: str) -> None:
        """Remember the last error for the next report and `status`; with the disk full it
        cannot be stored, but the next report still carries it."""
        self.last_error = reason
        try:
            await asyncio.to_thread(self.registry.db.set_state, LAST_ERROR_KEY, reason)
        except StorageError as e:
            log.error("sync.cannot_store_last_error", reason=str(e))

    async def _pass(self) -> None:
        db = self.registry.db
        if self.hooks.reload_trust is not None:
            stored = await asyncio.to_thread(self.hooks.reload_trust)
            if stored.policy is not None and stored.policy != self.trust.policy:
                self.hooks.on_policy(stored.policy)
            self.trust = stored
        if self.hooks.renewer is not None:
            await self.hooks.renewer.renew_if_due(datetime.now(UTC))
        report = await self._status_report()
        try:
            desired = await self.client.sync(report)
        except TransportError as e:
            raise ControllerUnreachableError(f"controller unreachable: {e}") from e
        self.backoff.succeeded()
        await asyncio.to_thread(db.set_state, LAST_SYNC_KEY, format_time(datetime.now(UTC)))
        await self._accept_trust(desired)
        if self.trust.targets is not None:  # versions the catalog dropped go from the disk
            listed = set(self.trust.targets.models)
            for ref in await asyncio.to_thread(self.registry.prune_unlisted, listed):
                log.info("model.removed", model=ref, reason="no longer in signed targets")
        self.board.keep_only({f"{a.name}@{a.version}" for a in desired.assignments})
        failures: list[EdgefleetError] = []
        for assignment in desired.assignments:  # one model's failure does not block the others
            try:
                await self._converge(assignment)
            except EdgefleetError as e:
                failures.append(e)
        if failures:
            raise failures[0]

    async def _status_report(self) -> StatusReport:
        """What this device reports at each sync, and while a download runs."""
        db = self.registry.db
        installed = tuple(await asyncio.to_thread(self.registry.installed))
        active = {m.name: m.sha256 for m in installed if m.active}
        return StatusReport(
            agent_version=__version__,
            models=installed,
            audit_head_seq=await asyncio.to_thread(self.audit.head_seq),
            last_error=(
                self.last_error
                if self.last_error is not None
                else await asyncio.to_thread(db.get_state, LAST_ERROR_KEY)
            ),
            bench=await asyncio.to_thread(load_results, db, active),
            downloads=self.board.items(),
            data_used_today=self.meter.used_today(),
            daily_data_budget=self.meter.daily_budget,
            resources=await asyncio.to_thread(device_resources, self.config, self.blobs),
            health=await asyncio.to_thread(model_health, db, installed, self.hooks.serving),
        )

    @contextlib.asynccontextmanager
    async def _reporting_progress(self) -> AsyncIterator[None]:
        """While a download runs, send the status every ``download_report_seconds`` (the
        same Sync call; its answer is left to the next pass): the controller's `devices
        list` shows the percent, rate and time left as they move, not once the download
        is over. A report that fails is not retried: the download goes on."""
        interval = self.config.download_report_seconds

        async def report_while_moving() -> None:
            while True:
                await asyncio.sleep(interval)
                if not self.board.moving():
                    continue
                try:
                    await self.client.sync(await self._status_report())
                except EdgefleetError as e:
                    log.debug("sync.progress_report_failed", reason=str(e))
                except Exception as e:  # noqa: BLE001 - best effort: never the download's end
                    log.warning(
                        "sync.progress_report_failed", error=type(e).__name__, reason=str(e)
                    )

        if not interval:
            yield
            return
        reporter = asyncio.create_task(report_while_moving())
        try:
            yield
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter

    async def _accept_trust(self, desired: DesiredState) -> None:
        now = datetime.now(UTC)
        try:
            state = self.trust.update_root_chain(desired.root_chain, now).update_snapshot(
                desired.timestamp, desired.targets, desired.policy, now
            )
        except UntrustedInputError as e:
            await self._audit_failure("trust.verify", "metadata", e)
            raise
        await asyncio.to_thread(mark_fresh, self.registry.db, now)
        if state is not self.trust:
            await asyncio.to_thread(self.registry.save_trust, state)
            if state.policy is not None and state.policy is not (self.trust.policy):
                self.hooks.on_policy(state.policy)
                event = AuditEvent(
                    "agent", "policy.apply", "policy", "success", {"version": state.policy.version}
                )
                await asyncio.to_thread(self.audit.append, event)
            self.trust = state
            log.info(
                "trust.updated",
                root_version=state.root.version,
                timestamp_version=state.timestamp.version if state.timestamp else 0,
                targets_version=state.targets.version if state.targets else 0,
            )

    async def _converge(self, assignment: ModelAssignment) -> None:
        manifest = self.trust.manifest(assignment.name, assignment.version)
        held = await asyncio.to_thread(self.registry.held_back, manifest.name)
        if held and held != manifest.version:
            await asyncio.to_thread(self.registry.release_hold, manifest.name)
        elif held:
            return  # rolled back on the device: wait for the controller to assign another
        if not await asyncio.to_thread(self.registry.is_installed, manifest):
            await self._install(manifest)
        if await asyncio.to_thread(self.registry.active_version, manifest.name) != manifest.version:
            await self._smoke_test(manifest)
            await asyncio.to_thread(self.registry.activate, manifest)
            log.info("model.activated", model=manifest.ref)

    async def _smoke_test(self, manifest: ModelManifest) -> None:
        """Refuse to activate a version that cannot load and generate; say why, once."""
        if self.hooks.smoke_test is None:
            return
        failed = self._smoke_failures.get(manifest.sha256)
        if failed is not None and time.monotonic() - failed[0] < SMOKE_RETRY_SECONDS:
            raise InferenceError(failed[1])
        try:
            await asyncio.to_thread(smoke_or_refuse, self.hooks.smoke_test, self.registry, manifest)
        except InferenceError as e:
            self._smoke_failures[manifest.sha256] = (time.monotonic(), str(e))
            raise
        self._smoke_failures.pop(manifest.sha256, None)

    async def _install(self, manifest: ModelManifest) -> None:
        """Download (or repair, if a damaged copy is in quarantine) and record a version."""
        quarantined = self.blobs.quarantined_of(manifest.sha256).exists()
        try:
            async with self._reporting_progress():
                if quarantined:
                    await self._repair(manifest)
                    if await asyncio.to_thread(self.registry.is_installed, manifest):
                        return
                else:
                    await self._check_before_download(manifest)
                    await self._download(manifest)
        except TransferPausedError as e:
            self.board.note(manifest, "paused", str(e))
            log.info("model.download_paused", model=manifest.ref, reason=str(e))
            raise
        except (UntrustedInputError, ResourceError) as e:
            self.board.note(manifest, "refused", str(e))
            if isinstance(e, UntrustedInputError):
                await self._audit_failure("model.install", manifest.ref, e)
            raise
        except TransportError as e:
            self.board.note(manifest, "paused", str(e))
            await self._audit_failure("model.download", manifest.ref, e, outcome="interrupted")
            raise
        await asyncio.to_thread(self.registry.record_installed, manifest)
        await asyncio.to_thread(give_back_freed_memory)  # the transfer's buffers
        self.board.done(manifest)
        log.info("model.installed", model=manifest.ref)

    async def _download(self, manifest: ModelManifest) -> None:
        """From the first source that delivers; each resumes where the previous stopped."""
        for mirror in self.hooks.mirrors:
            try:
                await self.fetcher.download(mirror, manifest)
                log.info("model.downloaded", model=manifest.ref, source=repr(mirror))
                return
            except TransferPausedError:
                raise
            except (TransportError, HashMismatchError) as e:
                if isinstance(e, HashMismatchError):
                    await self._audit_failure("model.download", repr(mirror), e)
                log.warning("mirror.failed", source=repr(mirror), reason=str(e))
        await self.fetcher.download(self.client, manifest)

    async def _repair(self, manifest: ModelManifest) -> None:
        transfer = await self.fetcher.repair(self.client, manifest)
        await asyncio.to_thread(
            self.registry.record_repaired,
            manifest,
            transfer.repaired_chunks,
            transfer.bytes_received,
        )
        log.info("model.repaired", model=manifest.ref, chunks=len(transfer.repaired_chunks))

    async def _check_before_download(self, manifest: ModelManifest) -> None:
        try:
            check_before_download(self.config, self.blobs, manifest)
        except ResourceError as e:
            await self._audit_failure("model.install", manifest.ref, e, outcome="refused")
            raise

    async def _audit_failure(
        self, action: str, target: str, error: Exception, outcome: str = "verification_failed"
    ) -> None:
        """Audit a refusal once per distinct reason (not on every retry)."""
        key = f"{action} {target}"
        if self._refusals.get(key) == str(error):
            return
        self._refusals[key] = str(error)
        event = AuditEvent(
            "agent", action, target, outcome, {"reason": str(error), "error": type(error).__name__}
        )
        await asyncio.to_thread(self.audit.append, event)

    async def scrub(self) -> None:
        """Hash every installed blob in full; damaged ones are quarantined, then repaired."""
        async with self._lock:
            damaged = []
            for manifest in await asyncio.to_thread(self.registry.manifests):
                result = await asyncio.to_thread(self.registry.verify, manifest, "full")
                if not result.ok:
                    log.error("scrub.damaged", model=result.ref, reason=result.reason)
                    damaged.append(manifest)
            for manifest in damaged:
                try:
                    await self._install(manifest)
                except EdgefleetError as e:
                    log.warning("scrub.repair_failed", model=manifest.ref, reason=str(e))
            log.info("scrub.done", damaged=len(damaged))

    async def checkpoint(self) -> None:
        """Sign a checkpoint of the chain's head every audit_checkpoint_every records or
        audit_checkpoint_seconds (offline too: it bounds what could be rewritten unseen)."""
        if self.hooks.audit_key is not None:
            await asyncio.to_thread(
                self.audit.checkpoint_if_due,
                self.hooks.audit_key,
                self.config.audit_checkpoint_every,
                self.config.audit_checkpoint_seconds,
            )

    async def _push_audit(self) -> None:
        """Sign a checkpoint of the head, then ship unacknowledged records and checkpoints in
        batches: every record the controller stores is covered by this device's signature,
        so no export of it rests on the controller's audit key alone."""
        try:
            through = None  # with an audit key, only records a checkpoint covers are sent
            if self.hooks.audit_key is not None:
                await asyncio.to_thread(self.audit.checkpoint_if_due, self.hooks.audit_key, 1, 0)
                through = await asyncio.to_thread(self.audit.last_checkpoint_seq)
            shipped = int(
                await asyncio.to_thread(self.registry.db.get_state, CHECKPOINT_SHIPPED_KEY, "0")
            )
            while True:
                batch = await asyncio.to_thread(
                    self.audit.pending, self.config.audit_batch, self.audit_push_bytes, through
                )
                checkpoints = await asyncio.to_thread(self.audit.checkpoints_after, shipped)
                if not batch and not checkpoints:
                    break
                try:
                    acked, receipt = await self.client.push_audit(batch, checkpoints)
                except ResourceError as e:
                    if len(batch) <= 1 or self.audit_push_bytes <= MIN_AUDIT_PUSH_BYTES:
                        raise
                    self.audit_push_bytes = max(MIN_AUDIT_PUSH_BYTES, self.audit_push_bytes // 2)
                    log.warning(
                        "audit.push_too_large", reason=str(e), next_bytes=self.audit_push_bytes
                    )
                    continue
                before = await asyncio.to_thread(self.audit.acked_seq)
                if acked > before:
                    await asyncio.to_thread(self._accept_receipt, acked, receipt)
                await asyncio.to_thread(self.audit.set_acked, acked)
                covered = [
                    c for c in checkpoints if Checkpoint.from_payload(c.payload).seq <= acked
                ]
                if covered:
                    shipped = Checkpoint.from_payload(covered[-1].payload).seq
                    await asyncio.to_thread(
                        self.registry.db.set_state, CHECKPOINT_SHIPPED_KEY, str(shipped)
                    )
                if acked <= before:
                    break
        except EdgefleetError as e:
            log.warning("audit.push_failed", reason=str(e))
        await self._retain()

    def _accept_receipt(self, acked: int, receipt: Envelope | None) -> None:
        """An acknowledgement counts only with the fleet's signed receipt for our own record."""
        if receipt is None:
            raise AuditChainError("the controller acknowledged records without a signed receipt")
        role = self.trust.root.roles["audit"]
        doc = verify_receipt(
            receipt, self.trust.root.keys, role.keyids, role.threshold, self.audit.device_id
        )
        if doc.get("seq") != acked or doc.get("sha256") != self.audit.record_hash_at(acked):
            raise AuditChainError(
                f"the receipt for record {acked} does not match this device's chain"
            )
        self.registry.db.set_state(RECEIPT_KEY, receipt.to_json().decode("utf-8"))

    async def _retain(self) -> None:
        """Prune old acknowledged records; warn long before unacknowledged ones pile up."""
        pruned = await asyncio.to_thread(
            self.audit.prune_acknowledged, self.config.audit_keep_acknowledged
        )
        if pruned:
            log.info("audit.pruned", records=pruned)
        waiting = await asyncio.to_thread(self.audit.unacknowledged)
        if waiting >= self.config.audit_warn_unacknowledged:
            log.warning(
                "audit.backlog",
                unacknowledged=waiting,
                threshold=self.config.audit_warn_unacknowledged,
            )
