"""Model workers: one thread owns each llama.cpp context and hands results back to the loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from edgefleet.agent.inference.decoding import Piece
from edgefleet.agent.inference.model_io import (
    BackendFactory,
    ChatBackend,
    Generation,
    Prompt,
    SamplingParams,
)
from edgefleet.errors import InferenceError, UntrustedInputError
from edgefleet.memory import give_back_freed_memory

T = TypeVar("T")


class _Handoff:
    """Worker thread → event loop handoff that wakes the loop once per batch of items."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._items: list[tuple[Piece, Generation]] = []
        self._finished = False
        self._error: Exception | None = None
        self._woken = False
        self._ready = asyncio.Event()

    def _wake(self) -> None:
        # called with the lock held
        if not self._woken:
            self._woken = True
            self._loop.call_soon_threadsafe(self._ready.set)

    def put(self, item: tuple[Piece, Generation]) -> None:
        """From the worker thread: hand over one item."""
        with self._lock:
            self._items.append(item)
            self._wake()

    def close(self, error: Exception | None) -> None:
        """From the worker thread: no more items (``error`` if it failed)."""
        with self._lock:
            self._finished, self._error = True, error
            self._wake()

    async def take(self) -> tuple[list[tuple[Piece, Generation]], bool, Exception | None]:
        """On the loop: wait for items, then take all of them."""
        await self._ready.wait()
        with self._lock:
            items, self._items = self._items, []
            self._ready.clear()
            self._woken = False
            return items, self._finished, self._error


class ModelWorker:
    """One slot of a loaded model and the single thread that drives it."""

    def __init__(self, name: str, backend: ChatBackend) -> None:
        self.name = name
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{name}")
        self.backend = backend
        self.prefix = ""  # the last prompt it served, as text (what its KV cache holds)

    @classmethod
    async def load(
        cls, name: str, factory: BackendFactory, path: Path, slots: int
    ) -> list[ModelWorker]:
        """Load the model (off the event loop) and make a worker of each of its slots."""
        backends = await asyncio.to_thread(factory, path, slots)
        return [cls(name, backend) for backend in backends]

    async def stream(
        self, prompt: Prompt, params: SamplingParams
    ) -> AsyncGenerator[list[tuple[Piece, Generation]], None]:
        """Yield batches of pieces as the worker thread produces them.

        The loop is woken once per batch, not once per token: while the loop is busy,
        pieces accumulate. The worker stops when the consumer leaves.
        """
        handoff = _Handoff(asyncio.get_running_loop())
        cancel = threading.Event()

        def work() -> None:
            try:
                for item in self.backend.generate(prompt, params, cancel):
                    handoff.put(item)
                handoff.close(None)
            except Exception as e:  # noqa: BLE001 - handed to the loop and re-raised there
                handoff.close(e)

        future = asyncio.get_running_loop().run_in_executor(self.executor, work)
        try:
            while True:
                batch, finished, error = await handoff.take()
                if batch:
                    yield batch
                if isinstance(error, UntrustedInputError):  # the caller's request, not the model
                    raise error
                if error is not None:
                    raise InferenceError(f"generation failed: {error}") from error
                if finished:
                    return
        finally:
            cancel.set()
            await asyncio.shield(future)

    async def run(self, work: Callable[[ChatBackend], T]) -> T:
        """Run ``work`` on the model's own thread (the only one that may touch it)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, work, self.backend)

    async def complete(self, prompt: Prompt, params: SamplingParams) -> Generation:
        """Run a whole generation and return its text and counts."""
        result = Generation()
        async for batch in self.stream(prompt, params):
            result = batch[-1][1]
        return result

    def close(self) -> None:
        """Stop accepting work; free the model on its own thread (the only one that may
        touch it), then give the memory back to the operating system. Called when no
        request is using the worker."""
        self.executor.submit(_release, self.backend)
        self.executor.shutdown(wait=False)


def _release(backend: ChatBackend) -> None:
    backend.close()
    give_back_freed_memory()
