"""A real agent API on loopback for the official SDKs and third-party clients: the route
table, auth, pool, audit and metrics of the product, with llama.cpp serving the bundled
SmolLM2 model. No controller: the model is placed in the registry the way a verified
install leaves it, and the app tokens come from the device's local policy."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from edgefleet.agent.app.config import AgentConfig
from edgefleet.agent.app.database import AgentDatabase
from edgefleet.agent.audit.log import AuditLog
from edgefleet.agent.inference.api import build_app
from edgefleet.agent.inference.context import ApiContext
from edgefleet.agent.inference.model_io import ChatBackend
from edgefleet.agent.inference.pool import ModelPool, PoolSettings
from edgefleet.agent.inference.remote import load_runner_slots
from edgefleet.agent.rbac.policy import DevicePolicy, LocalPolicy
from edgefleet.agent.registry.blobs import BlobStore
from edgefleet.agent.registry.registry import Registry
from edgefleet.bundled import bundled_model_path
from edgefleet.files import sha256_of_file
from edgefleet.memory import MIB
from tests.edgefleet.trustkit import manifest

MODEL = "smollm2"


@dataclass
class LocalApi:
    """Where the API listens, tokens for it, and its audit log."""

    base_url: str
    token: str  # may invoke and embed every model
    embed_only: str  # may embed, not generate
    audit: AuditLog

    def records(self) -> list[bytes]:
        self.audit.flush()
        return self.audit.all_records()


@pytest.fixture(scope="session")
def local_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalApi]:
    root = tmp_path_factory.mktemp("local-api")
    source = bundled_model_path()
    db = AgentDatabase(root / "agent.db")
    audit = AuditLog(db, "dev-api")
    blobs = BlobStore(root / "blobs")
    registry = Registry(db, blobs, audit)
    m = manifest(MODEL, "1", sha256_of_file(source), source.stat().st_size)
    blobs.path_of(m.sha256).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(source, blobs.path_of(m.sha256))
    registry.record_installed(m)
    registry.activate(m)
    policy = DevicePolicy(LocalPolicy(root), signed=None)
    token, _ = policy.local.create_token("app:sdk", "inference", ("*",))
    embed_only, _ = policy.local.create_token("app:embedder", "embedder", ("*",))
    config = AgentConfig(data_dir=root, n_ctx=2048, n_threads=2)

    def load(path: Path, slots: int) -> list[ChatBackend]:  # as the agent loads: a runner
        return list(load_runner_slots(path, config.n_ctx, slots, config.n_threads))

    settings = PoolSettings(
        budget_bytes=2048 * MIB, context=2048, slots=2, keep_alive_seconds=600, max_queued=32
    )
    ctx = ApiContext(config, registry, ModelPool(load, settings), audit, policy)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(build_app(ctx), handler_cancellation=False)
    started = threading.Event()
    address: list[str] = []

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        host, port = runner.addresses[0][:2]
        address.append(f"http://{host}:{port}/v1")
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, name="local-api", daemon=True)
    thread.start()
    assert started.wait(30), "the local API did not start"
    yield LocalApi(address[0], token, embed_only, audit)
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    db.dispose()
