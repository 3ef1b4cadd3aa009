"""The model pool: load on demand within a memory budget, slots per model, a bounded queue.

A model is loaded only if its estimate (weights + KV cache + overhead) fits the budget
beside the models already loaded; idle models are evicted least recently used first, and
unloaded after the keep-alive. Each model has ``slots`` workers, one per sequence of its
batched llama.cpp context (``llama_backend``: one decode loop serves them all); requests
wait for a free slot in a queue of bounded length.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from edgefleet.agent.inference.engine import ModelWorker
from edgefleet.agent.inference.model_io import BackendFactory
from edgefleet.errors import ResourceError
from edgefleet.memory import MIB, MemoryEstimate, estimate_memory, fits, require_fit
from edgefleet.trust.metadata import ModelManifest

log = structlog.get_logger("agent.pool")


class QueueFullError(ResourceError):
    """Every slot is busy and the waiting line is full; try again shortly."""


@dataclass
class LoadedModel:
    """One model version in memory with its slots."""

    manifest: ModelManifest
    estimate: MemoryEstimate
    workers: list[ModelWorker]
    path: Path
    file: tuple[int, ...]  # the identity (_file_id) of the blob at ``path`` it was loaded from

    def file_changed(self) -> bool:
        """True once its blob was quarantined (moved away, maybe repaired since)."""
        return self.file != _file_id(self.path)

    def failure(self) -> str:
        """Why it can serve nothing more (its model runner died), or ""."""
        return next((w.backend.failure for w in self.workers if w.backend.failure), "")

    free: asyncio.Queue[ModelWorker] = field(default_factory=asyncio.Queue)
    busy: int = 0
    last_used: float = field(default_factory=time.monotonic)

    def close(self) -> None:
        for worker in self.workers:
            worker.close()


@dataclass(frozen=True)
class PoolSettings:
    """Limits of the pool."""

    budget_bytes: int
    context: int
    slots: int
    keep_alive_seconds: float
    max_queued: int


def _file_id(path: Path) -> tuple[int, ...]:
    """Which file ``path`` is now (device, inode, and its change time, since a freed inode
    can be reused at once), or () if it is gone (quarantined)."""
    try:
        found = path.stat()
    except FileNotFoundError:
        return ()
    return (found.st_dev, found.st_ino, found.st_ctime_ns, found.st_size)


def _shared(a: str, b: str) -> int:
    """How many leading characters ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    low, high = 0, n  # binary search on slices: C-speed comparisons, O(log n) of them
    while low < high:
        mid = (low + high + 1) // 2
        if a[:mid] == b[:mid]:
            low = mid
        else:
            high = mid - 1
    return low


def _closest(first: ModelWorker, free: asyncio.Queue[ModelWorker], prefix: str) -> ModelWorker:
    """Of ``first`` and the other free workers, the one sharing the longest prefix; the
    rest go back to the queue."""
    if not prefix or free.empty():
        return first
    candidates = [first]
    while not free.empty():
        candidates.append(free.get_nowait())
    best = max(candidates, key=lambda w: _shared(w.prefix, prefix))
    for worker in candidates:
        if worker is not best:
            free.put_nowait(worker)
    return best


class ModelPool:
    """Owns every loaded model; all methods run on the event loop."""

    def __init__(
        self,
        factory: BackendFactory,
        settings: PoolSettings,
        verify: Callable[[ModelManifest], object] | None = None,
    ) -> None:
        self._factory = factory
        self.settings = settings
        # Checks the file against its signed manifest before each load (raises to refuse).
        self._verify = verify
        self._models: dict[str, LoadedModel] = {}
        self._retiring: list[LoadedModel] = []  # replaced while serving; closed when idle
        self._load_lock = asyncio.Lock()
        self.waiting = 0

    def estimate(self, manifest: ModelManifest) -> MemoryEstimate:
        """What ``manifest`` would need with this pool's context and slots."""
        return estimate_memory(
            manifest.length, manifest.kv_bytes_per_token, self.settings.context, self.settings.slots
        )

    def check_fits_budget(self, manifest: ModelManifest) -> MemoryEstimate:
        """Raise ResourceError (with the numbers) if the model can never fit the budget."""
        return require_fit(manifest.ref, self.estimate(manifest), self.settings.budget_bytes)

    @property
    def in_use(self) -> int:
        """Estimated bytes of every loaded model (including replaced ones still serving)."""
        return sum(m.estimate.total for m in [*self._models.values(), *self._retiring])

    def loaded(self) -> list[LoadedModel]:
        """The loaded models."""
        return list(self._models.values())

    @asynccontextmanager
    async def slot(
        self, manifest: ModelManifest, path: Path, prefix: str = ""
    ) -> AsyncIterator[ModelWorker]:
        """A worker of ``manifest`` for one request: admitted, loaded, then a free slot;
        of several free slots, the one whose last prompt shares the longest start with
        ``prefix`` (its KV cache holds that part already)."""
        if self.waiting >= self.settings.max_queued:
            raise QueueFullError(f"{self.waiting} requests are already waiting; retry shortly")
        self.waiting += 1
        try:
            model = await self._ensure_loaded(manifest, path)
            model.busy += 1
            try:
                worker = _closest(await model.free.get(), model.free, prefix)
            except BaseException:
                model.busy -= 1
                raise
        finally:
            self.waiting -= 1
        if prefix:
            worker.prefix = prefix
        try:
            yield worker
        finally:
            model.free.put_nowait(worker)
            model.busy -= 1
            model.last_used = time.monotonic()
            if model in self._retiring and model.busy == 0:
                self._retiring.remove(model)
                model.close()

    async def _ensure_loaded(self, manifest: ModelManifest, path: Path) -> LoadedModel:
        async with self._load_lock:
            current = self._models.get(manifest.name)
            if current is not None and (failure := current.failure()):
                self._retire(manifest.name, failure)  # the next load starts a new runner
                current = None
            if current is not None and current.manifest.sha256 == manifest.sha256:
                if not current.file_changed():
                    return current
                # The blob it mapped was quarantined (and maybe repaired since): its pages
                # are no longer the verified file's, so it serves nothing more.
                self._retire(manifest.name, "its file was quarantined")
                current = None
            if self._verify is not None:  # before anything loaded is given up for it
                await asyncio.to_thread(self._verify, manifest)
            if current is not None:
                self._retire(manifest.name, "replaced")
            file = _file_id(path)
            estimate = self.check_fits_budget(manifest)
            self._evict_for(estimate)
            workers = await ModelWorker.load(
                manifest.name, self._factory, path, self.settings.slots
            )
            model = LoadedModel(manifest, estimate, workers, path, file)
            for worker in workers:
                model.free.put_nowait(worker)
            self._models[manifest.name] = model
            log.info("model.loaded", model=manifest.ref, estimate_mib=round(estimate.total / MIB))
            return model

    def _evict_for(self, estimate: MemoryEstimate) -> None:
        """Unload idle models, least recently used first, until ``estimate`` fits."""
        budget = self.settings.budget_bytes
        for name in sorted(self._models, key=lambda n: self._models[n].last_used):
            if fits(estimate, budget, self.in_use):
                return
            if self._models[name].busy == 0:
                self._unload(name, "evicted")
        if not fits(estimate, budget, self.in_use):
            raise ResourceError(
                f"needs {estimate}, but {self.in_use / MIB:.0f} MiB of the "
                f"{budget / MIB:.0f} MiB budget is held by models serving requests"
            )

    def _retire(self, name: str, reason: str) -> None:
        """Unload ``name`` now if idle, else once its requests in flight are done."""
        if self._models[name].busy == 0:
            self._unload(name, reason)
        else:
            self._retiring.append(self._models.pop(name))
            log.info("model.retiring", model=self._retiring[-1].manifest.ref, reason=reason)

    def _unload(self, name: str, reason: str) -> None:
        model = self._models.pop(name)
        model.close()
        log.info("model.unloaded", model=model.manifest.ref, reason=reason)

    def unload_idle(self) -> list[str]:
        """Unload models idle longer than the keep-alive, and idle ones whose blob was
        quarantined; return their names."""
        cutoff = time.monotonic() - self.settings.keep_alive_seconds
        idle = [
            n
            for n, m in self._models.items()
            if m.busy == 0 and (m.last_used < cutoff or m.file_changed() or m.failure())
        ]
        for name in idle:
            self._unload(name, "keep-alive expired")
        return idle

    def close(self) -> None:
        """Unload everything."""
        for name in list(self._models):
            self._unload(name, "shutdown")
        for model in self._retiring:
            model.close()
        self._retiring.clear()
