"""Composition root of `edgefleet-agent run`: one asyncio loop hosting API, sync and scheduler."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog
from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from agent.audit.log import AuditLog
from agent.config import AgentConfig
from agent.database import AgentDatabase
from agent.enroll import AgentPaths
from agent.inference.api import build_app
from agent.inference.context import ApiContext
from agent.inference.engine import ChatBackend
from agent.inference.llama_backend import LlamaBackend
from agent.inference.pool import ModelPool, PoolSettings
from agent.inference.smoke import smoke_test
from agent.offline import OfflineGuard
from agent.policy import DevicePolicy, LocalPolicy
from agent.registry.blobs import BlobStore
from agent.registry.registry import Registry
from agent.sync.client import SyncClient
from agent.sync.mirrors import HttpSource, client_session, parse_sources, peer_app
from agent.sync.renewal import CertificateRenewer
from agent.sync.watch import watch_forever
from agent.sync.worker import Syncer
from edgefleet.config_files import split_address
from edgefleet.errors import ConfigError, HashMismatchError
from edgefleet.stacks import dump_on_sigusr1
from edgefleet.trust.metadata import ModelManifest

log = structlog.get_logger("agent")


@dataclass
class LocalState:
    """The agent's local stores, opened from its data directory."""

    paths: AgentPaths
    db: AgentDatabase
    audit: AuditLog
    blobs: BlobStore
    registry: Registry

    @classmethod
    def open(cls, data_dir: Path) -> LocalState:
        """Open the stores of an enrolled device."""
        paths = AgentPaths(data_dir)
        enrollment = paths.identity.load()
        db = AgentDatabase(paths.database)
        audit = AuditLog(db, enrollment.device_id)
        blobs = BlobStore(paths.blobs)
        return cls(paths, db, audit, blobs, Registry(db, blobs, audit))


def pool_settings(config: AgentConfig) -> PoolSettings:
    """The model pool's limits from the configuration."""
    return PoolSettings(
        budget_bytes=config.resolved_memory_budget,
        context=config.n_ctx,
        slots=config.n_parallel,
        keep_alive_seconds=config.keep_alive_seconds,
        max_queued=config.max_queued_requests,
    )


def sync_client(config: AgentConfig, state: LocalState) -> SyncClient:
    """The mTLS client of the enrolled device (create it inside the running event loop)."""
    identity = state.paths.identity
    enrollment = identity.load()
    return SyncClient(
        config.controller_sync_address or f"{enrollment.controller_host}:{enrollment.sync_port}",
        identity.read(identity.ca),
        identity.read(identity.tls_key),
        identity.read(identity.certificate),
        timeout=config.rpc_timeout_seconds,
        max_message_bytes=config.max_message_bytes,
    )


async def _start_api(config: AgentConfig, ctx: ApiContext) -> tuple[web.AppRunner, str]:
    host, port = split_address(config.api_listen)
    runner = web.AppRunner(build_app(ctx), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        raise ConfigError(f"cannot listen on {config.api_listen}: {e.strerror}") from e
    bound = runner.addresses[0]
    return runner, f"{bound[0]}:{bound[1]}"


async def _start_peer_server(config: AgentConfig, blobs: BlobStore) -> web.AppRunner:
    """Serve verified blobs to LAN peers (opt-in); the bound address goes to peer.addr."""
    host, port = split_address(config.peer_listen)
    runner = web.AppRunner(peer_app(blobs), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as e:
        await runner.cleanup()
        raise ConfigError(f"cannot listen on {config.peer_listen}: {e.strerror}") from e
    bound = runner.addresses[0]
    (config.data_dir / "peer.addr").write_text(f"{bound[0]}:{bound[1]}\n")
    log.info("peer.serving", address=f"{bound[0]}:{bound[1]}")
    return runner


async def run(config: AgentConfig) -> None:
    """Serve the local API and sync on a schedule until SIGINT/SIGTERM. SIGUSR1 writes
    every thread's stack and every task's awaits to stderr (the journal), to see where a
    stuck agent waits."""
    dump_on_sigusr1(asyncio.get_running_loop())  # again with the scheduler's jobs below
    state = await asyncio.to_thread(LocalState.open, config.data_dir)
    enrollment = state.paths.identity.load()
    trust = await asyncio.to_thread(state.registry.load_trust, enrollment.root_fingerprint)
    client = sync_client(config, state)
    syncer = Syncer(config, client, state.registry, state.blobs, state.audit, trust)

    def load_model(path: Path) -> ChatBackend:
        return LlamaBackend(path, config.n_ctx, config.n_threads)

    def verify_before_load(manifest: ModelManifest) -> None:
        result = state.registry.verify(
            manifest, config.verify_before_load, config.verify_sample_chunks
        )
        if not result.ok:
            raise HashMismatchError(
                f"{manifest.ref} failed its check before loading ({result.reason}); it is "
                f"quarantined until repaired (`edgefleet-agent models repair {manifest.name}` "
                "or the next sync)"
            )

    pool = ModelPool(load_model, pool_settings(config), verify_before_load)
    if config.smoke_test:
        syncer.smoke_test = lambda manifest: smoke_test(
            state.blobs.path_of(manifest.sha256), config.n_threads
        )
    policy = DevicePolicy(LocalPolicy(config.data_dir), trust.policy)
    syncer.on_policy = policy.set_signed
    syncer.renewer = CertificateRenewer(state.paths.identity, client, state.audit)
    syncer.audit_key = state.paths.identity.keys()[1]
    syncer.reload_trust = lambda: state.registry.load_trust(enrollment.root_fingerprint)
    ctx = ApiContext(
        config,
        state.registry,
        pool,
        state.audit,
        policy,
        labels=dict(enrollment.labels),
        offline=OfflineGuard(state.db, state.audit, config.max_offline_days, config.offline_mode),
    )
    syncer.serving = ctx.serving
    runner, api_address = await _start_api(config, ctx)
    (config.data_dir / "api.addr").write_text(api_address + "\n")
    http = client_session(config.mirror_ca_file)
    syncer.mirrors = [
        HttpSource(url, http, config.download_stall_seconds)
        for url in parse_sources(config.mirrors)
    ]
    peers = await _start_peer_server(config, state.blobs) if config.peer_listen else None
    scheduler = AsyncIOScheduler(timezone=UTC)
    scheduler.add_job(
        syncer.run_once,
        "interval",
        seconds=config.sync_interval_seconds,
        jitter=config.sync_jitter_seconds,
        next_run_time=datetime.now(UTC),
        max_instances=1,
        coalesce=True,
        id="sync",
    )
    scheduler.add_job(pool.unload_idle, "interval", seconds=30, id="keep-alive", coalesce=True)
    scheduler.add_job(syncer.checkpoint, "interval", seconds=60, id="checkpoint", coalesce=True)
    if config.scrub_interval_hours:
        scheduler.add_job(
            syncer.scrub,
            "interval",
            hours=config.scrub_interval_hours,
            jitter=min(3600, config.scrub_interval_hours * 360),
            id="scrub",
            coalesce=True,
            max_instances=1,
        )
    scheduler.start()
    dump_on_sigusr1(asyncio.get_running_loop(), lambda out: scheduler.print_jobs(out=out))
    watcher = asyncio.get_running_loop().create_task(watch_forever(config, client, syncer))
    log.info("agent.running", device_id=enrollment.device_id, api=api_address)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("agent.stopping")
        scheduler.shutdown(wait=False)
        watcher.cancel()
        await asyncio.wait({watcher}, timeout=10)  # never hang a shutdown on it
        await syncer.stop()
        await runner.cleanup()
        if peers is not None:
            await peers.cleanup()
        await http.close()
        await client.close()
        pool.close()
        await asyncio.to_thread(state.audit.flush)
        with contextlib.suppress(FileNotFoundError):
            (config.data_dir / "api.addr").unlink()
        state.db.dispose()
