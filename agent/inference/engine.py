"""Model workers: one thread owns each llama.cpp context and hands results back to the loop."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edgefleet.errors import InferenceError, RequestTooLargeError

# llama-cpp-python 0.3's refusal of a prompt that does not fit the context (a ValueError).
_OVER_CONTEXT = re.compile(r"Requested tokens \((\d+)\) exceed context window of (\d+)")


@dataclass(frozen=True)
class SamplingParams:
    """Generation parameters accepted by the API, already validated."""

    max_tokens: int = 256
    temperature: float = 0.8
    top_p: float = 0.95
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class Generation:
    """A finished (or streamed) generation's text and token counts."""

    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"


@dataclass(frozen=True)
class Prompt:
    """Chat messages (for chat completions) or plain text (for text completions)."""

    messages: tuple[Mapping[str, str], ...] = ()
    text: str | None = None


class ChatBackend(Protocol):
    """What a loaded model can do; llama.cpp in production, a fake in unit tests."""

    def generate(
        self, prompt: Prompt, params: SamplingParams, cancel: threading.Event
    ) -> Iterator[tuple[str, Generation]]:
        """Yield (piece, running totals) per token; stop early when ``cancel`` is set."""
        ...


class LlamaBackend:
    """llama-cpp-python behind :class:`ChatBackend`; only its worker thread touches it."""

    def __init__(self, path: Path, n_ctx: int, n_threads: int) -> None:
        import llama_cpp  # imported here so unit tests and the controller never load it

        try:
            self._llama: Any = llama_cpp.Llama(
                model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, verbose=False
            )
        except (ValueError, RuntimeError, OSError) as e:
            raise InferenceError(f"cannot load {path.name}: {e}") from e

    def _stream(self, prompt: Prompt, params: SamplingParams) -> Any:
        options = {
            "stream": True,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stop": list(params.stop) or None,
            "seed": params.seed,
        }
        if prompt.text is not None:
            return self._llama.create_completion(prompt=prompt.text, **options)
        return self._llama.create_chat_completion(
            messages=[dict(m) for m in prompt.messages], **options
        )

    def generate(
        self, prompt: Prompt, params: SamplingParams, cancel: threading.Event
    ) -> Iterator[tuple[str, Generation]]:
        totals = Generation()
        stream = self._stream(prompt, params)
        try:
            for chunk in _caller_errors(stream):
                if cancel.is_set():
                    totals.finish_reason = "cancelled"
                    break
                choice = chunk["choices"][0]
                if choice.get("finish_reason"):
                    totals.finish_reason = choice["finish_reason"]
                # llama-cpp-python streams one chunk per sampled token: chat chunks carry a
                # "content" key, text chunks a "text" key; the closing chunk carries neither
                # content nor a token (it only has the finish reason).
                if prompt.text is None:
                    if "content" not in choice["delta"]:
                        continue
                    piece = choice["delta"]["content"] or ""
                elif choice.get("finish_reason") is None:
                    piece = choice["text"]
                else:
                    continue
                totals.completion_tokens += 1
                totals.text += piece
                yield piece, totals
        finally:
            stream.close()
        # The context holds the prompt and every sampled token but the last one when the
        # length limit stopped generation (an end-of-generation token is never evaluated).
        evaluated_sampled = totals.completion_tokens - (
            1 if totals.finish_reason == "length" else 0
        )
        totals.prompt_tokens = max(0, self._llama.n_tokens - evaluated_sampled)
        yield "", totals


def _caller_errors(stream: Iterator[Any]) -> Iterator[Any]:
    """The stream, with llama.cpp's refusal of an over-long prompt as the caller's error."""
    try:
        yield from stream
    except ValueError as e:
        found = _OVER_CONTEXT.search(str(e))
        if found is None:
            raise
        raise RequestTooLargeError(
            f"the prompt is {found[1]} tokens, more than the model's context of {found[2]} tokens"
        ) from e


BackendFactory = Callable[[Path], ChatBackend]


class _Handoff:
    """Worker thread → event loop handoff that wakes the loop once per batch of items."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._items: list[tuple[str, Generation]] = []
        self._finished = False
        self._error: Exception | None = None
        self._woken = False
        self._ready = asyncio.Event()

    def _wake(self) -> None:
        # called with the lock held
        if not self._woken:
            self._woken = True
            self._loop.call_soon_threadsafe(self._ready.set)

    def put(self, item: tuple[str, Generation]) -> None:
        """From the worker thread: hand over one item."""
        with self._lock:
            self._items.append(item)
            self._wake()

    def close(self, error: Exception | None) -> None:
        """From the worker thread: no more items (``error`` if it failed)."""
        with self._lock:
            self._finished, self._error = True, error
            self._wake()

    async def take(self) -> tuple[list[tuple[str, Generation]], bool, Exception | None]:
        """On the loop: wait for items, then take all of them."""
        await self._ready.wait()
        with self._lock:
            items, self._items = self._items, []
            self._ready.clear()
            self._woken = False
            return items, self._finished, self._error


class ModelWorker:
    """One loaded model and the single thread allowed to use it."""

    def __init__(self, name: str, executor: ThreadPoolExecutor, backend: ChatBackend) -> None:
        self.name = name
        self.executor = executor
        self.backend = backend

    @classmethod
    async def load(cls, name: str, factory: BackendFactory, path: Path) -> ModelWorker:
        """Create the model's thread and load the model on it."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{name}")
        try:
            backend = await asyncio.get_running_loop().run_in_executor(executor, factory, path)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(name, executor, backend)

    async def stream(
        self, prompt: Prompt, params: SamplingParams
    ) -> AsyncGenerator[list[tuple[str, Generation]], None]:
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
                if isinstance(error, RequestTooLargeError):
                    raise error
                if error is not None:
                    raise InferenceError(f"generation failed: {error}") from error
                if finished:
                    return
        finally:
            cancel.set()
            await asyncio.shield(future)

    async def complete(self, prompt: Prompt, params: SamplingParams) -> Generation:
        """Run a whole generation and return its text and counts."""
        result = Generation()
        async for batch in self.stream(prompt, params):
            result = batch[-1][1]
        return result

    def close(self) -> None:
        """Stop accepting work."""
        self.executor.shutdown(wait=False, cancel_futures=True)
