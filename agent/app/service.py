"""Composition root of `edgefleet-agent run`: one asyncio loop hosting API, sync and scheduler."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import structlog
from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from edgefleet.agent.app.config import AgentConfig, parse_sources
from edgefleet.agent.app.state import LocalState
from edgefleet.agent.inference.api import build_app
from edgefleet.agent.inference.context import ApiContext
from edgefleet.agent.inference.model_io import ChatBackend
from edgefleet.agent.inference.pool import ModelPool, PoolSettings
from edgefleet.agent.inference.smoke import smoke_test
from edgefleet.agent.rbac.policy import DevicePolicy, LocalPolicy
from edgefleet.agent.registry.blobs import BlobStore
from edgefleet.agent.registry.offline import OfflineGuard
from edgefleet.agent.sync.client import SyncClient
from edgefleet.agent.sync.mirrors import HttpSource, client_session, peer_app
from edgefleet.agent.sync.renewal import CertificateRenewer
from edgefleet.agent.sync.watch import watch_forever
from edgefleet.agent.sync.worker import Syncer, SyncHooks
from edgefleet.errors import HashMismatchError
from edgefleet.files import single_instance
from edgefleet.lifecycle import cancel_and_wait, listen_http, until_signalled
from edgefleet.stacks import dump_on_sigusr1
from edgefleet.trust.metadata import ModelManifest

log = structlog.get_logger("agent")
# Held by the running agent (its pid inside): a second `run` on the same data directory
# is refused instead of serving beside it.
RUN_LOCK = "run.lock"


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


async def _start_peer_server(config: AgentConfig, blobs: BlobStore) -> web.AppRunner:
    """Serve verified blobs to LAN peers (opt-in); the bound address goes to peer.addr."""
    runner, bound = await listen_http(peer_app(blobs), config.peer_listen)
    (config.data_dir / "peer.addr").write_text(f"{bound}\n")
    log.info("peer.serving", address=bound)
    return runner


async def run(config: AgentConfig) -> None:
    """Serve the local API and sync on a schedule until SIGINT/SIGTERM. SIGUSR1 writes
    every thread's stack and every task's awaits to stderr (the journal), to see where a
    stuck agent waits.

    Every resource is entered on one exit stack as it starts: a failure at any step (a
    port in use, a bad mirror CA) releases what was already started, in reverse order,
    and leaves no ``api.addr`` behind for the command line to read."""
    loop = asyncio.get_running_loop()
    dump_on_sigusr1(loop)  # again with the scheduler's jobs once it runs
    async with contextlib.AsyncExitStack() as stack:
        stack.enter_context(single_instance(config.data_dir / RUN_LOCK, "the agent"))
        state = await asyncio.to_thread(LocalState.open, config.data_dir)
        stack.callback(state.db.dispose)
        stack.push_async_callback(asyncio.to_thread, state.audit.flush)
        enrollment = state.paths.identity.load()
        trust = await asyncio.to_thread(state.registry.load_trust, enrollment.root_fingerprint)
        client = sync_client(config, state)
        stack.push_async_callback(client.close)
        pool = _model_pool(config, state)
        stack.callback(pool.close)
        policy = DevicePolicy(LocalPolicy(config.data_dir), trust.policy)
        ctx = ApiContext(
            config,
            state.registry,
            pool,
            state.audit,
            policy,
            labels=dict(enrollment.labels),
            offline=OfflineGuard(
                state.db, state.audit, config.max_offline_days, config.offline_mode
            ),
        )
        http = client_session(config.mirror_ca_file)
        stack.push_async_callback(http.close)
        hooks = SyncHooks(
            on_policy=policy.set_signed,
            renewer=CertificateRenewer(state.paths.identity, client, state.audit),
            audit_key=state.paths.identity.keys()[1],
            reload_trust=lambda: state.registry.load_trust(enrollment.root_fingerprint),
            smoke_test=_smoke_test(config, state) if config.smoke_test else None,
            serving=ctx.serving,
            mirrors=tuple(
                HttpSource(url, http, config.download_stall_seconds)
                for url in parse_sources(config.mirrors)
            ),
        )
        syncer = Syncer(config, client, state.registry, state.blobs, state.audit, trust, hooks)
        stack.push_async_callback(syncer.stop)
        runner, api_address = await listen_http(build_app(ctx), config.api_listen)
        stack.push_async_callback(runner.cleanup)
        api_addr = config.data_dir / "api.addr"
        api_addr.write_text(api_address + "\n")
        stack.callback(api_addr.unlink, missing_ok=True)
        if config.peer_listen:
            stack.push_async_callback((await _start_peer_server(config, state.blobs)).cleanup)
        scheduler = _start_scheduler(config, syncer, pool)
        stack.callback(scheduler.shutdown, wait=False)
        dump_on_sigusr1(loop, lambda out: scheduler.print_jobs(out=out))
        watcher = loop.create_task(watch_forever(config, client, syncer))
        stack.push_async_callback(cancel_and_wait, watcher)
        log.info("agent.running", device_id=enrollment.device_id, api=api_address)
        await until_signalled(signal.SIGINT, signal.SIGTERM)
        log.info("agent.stopping")


def _model_pool(config: AgentConfig, state: LocalState) -> ModelPool:
    """The pool of loaded models; each version is checked against its hashes as it loads."""

    def load_model(path: Path, slots: int) -> list[ChatBackend]:
        # Each model in its own runner process: llama.cpp and numpy never load into the
        # agent, a crash takes the runner only, and an unloaded model's runner exits.
        from edgefleet.agent.inference.remote import load_runner_slots

        return list(
            load_runner_slots(
                path, config.n_ctx, slots, config.n_threads, config.runner_stall_seconds
            )
        )

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

    return ModelPool(load_model, pool_settings(config), verify_before_load)


def _smoke_test(config: AgentConfig, state: LocalState) -> Callable[[ModelManifest], float]:
    return lambda manifest: smoke_test(state.blobs.path_of(manifest.sha256), config.n_threads)


def _start_scheduler(config: AgentConfig, syncer: Syncer, pool: ModelPool) -> AsyncIOScheduler:
    """Sync passes, idle model unloading, audit checkpoints and the blob scrub."""
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
    return scheduler
