"""The model runner (a child process per loaded model): a crash ends the runner and its
requests, not the agent, and the next request gets a new runner; an unloaded model leaves
nothing in the agent (no llama.cpp, no numpy, its memory back); the runner gives the same
tokens as the engine in process; the frames between them are bounded and checked."""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edgefleet.agent.inference.llama_backend import load_slots
from edgefleet.agent.inference.model_io import Prompt, SamplingParams
from edgefleet.agent.inference.pool import ModelPool, PoolSettings
from edgefleet.agent.inference.protocol import HEADER, MAX_FRAME, read_frame, write_frame
from edgefleet.agent.inference.remote import RemoteSlot, load_runner_slots
from edgefleet.bundled import bundled_model_path
from edgefleet.errors import InferenceError, MalformedInputError
from edgefleet.memory import MIB
from tests.edgefleet.trustkit import manifest

GREEDY = SamplingParams(max_tokens=16, temperature=0.0)


def _pool() -> ModelPool:
    settings = PoolSettings(4096 * MIB, context=1024, slots=2, keep_alive_seconds=0, max_queued=8)
    return ModelPool(lambda p, n: list(load_runner_slots(p, 1024, n, 2)), settings)


@pytest.mark.model
def test_a_crash_ends_the_runner_and_its_requests_not_the_agent() -> None:
    path = bundled_model_path()
    model = manifest("m", "1", sha="a" * 64, length=path.stat().st_size)
    pool = _pool()

    async def main() -> tuple[str, int, int, str]:
        async with pool.slot(model, path) as worker:
            assert isinstance(worker.backend, RemoteSlot)
            first = worker.backend.runner.process.pid
            stream = worker.stream(Prompt(text="Count: 1, 2, 3,"), SamplingParams(max_tokens=400))
            with pytest.raises(InferenceError) as crashed:
                async for _ in stream:
                    os.kill(first, signal.SIGSEGV)  # as llama.cpp would on a hostile file
        async with pool.slot(model, path) as worker:  # the next request: a new runner
            second = worker.backend.runner.process.pid  # type: ignore[attr-defined]
            result = await worker.complete(Prompt(text="Once upon a time"), GREEDY)
        return str(crashed.value), first, second, result.text

    try:
        reason, first, second, text = asyncio.run(main())
    finally:
        pool.close()
    assert "crashed its model runner (SIGSEGV)" in reason
    assert second != first and text


@pytest.mark.model
def test_a_runner_that_stops_answering_is_stopped_and_the_next_request_gets_a_new_one() -> None:
    """A decode that never returns (here the runner is frozen with SIGSTOP mid-stream)
    would hold its slot, and every request after it, for ever: after the stall limit the
    agent kills the runner, the request fails saying so, and the next one loads anew."""
    path = bundled_model_path()
    model = manifest("m", "1", sha="a" * 64, length=path.stat().st_size)
    settings = PoolSettings(4096 * MIB, context=1024, slots=2, keep_alive_seconds=0, max_queued=8)
    pool = ModelPool(lambda p, n: list(load_runner_slots(p, 1024, n, 2, 1.5)), settings)

    async def main() -> tuple[str, float, int, int, str]:
        async with pool.slot(model, path) as worker:
            first = worker.backend.runner.process  # type: ignore[attr-defined]
            stream = worker.stream(Prompt(text="Count: 1, 2, 3,"), SamplingParams(max_tokens=400))
            with pytest.raises(InferenceError) as stalled:
                async for _ in stream:
                    if first.poll() is None:
                        os.kill(first.pid, signal.SIGSTOP)
                        frozen_at = asyncio.get_running_loop().time()
            waited = asyncio.get_running_loop().time() - frozen_at
        async with pool.slot(model, path) as worker:
            second = worker.backend.runner.process.pid  # type: ignore[attr-defined]
            result = await worker.complete(Prompt(text="Once upon a time"), GREEDY)
        return str(stalled.value), waited, first.pid, second, result.text

    try:
        reason, waited, first, second, text = asyncio.run(main())
    finally:
        pool.close()
    assert re.search(r"sent nothing for \d+ s with requests in flight and was stopped", reason)
    assert 1.5 <= waited < 10
    assert second != first and text


@pytest.mark.model
@pytest.mark.timeout(60)  # broken, it hangs: the writer's lock held the kill back
def test_a_stalled_runner_is_stopped_while_a_request_is_stuck_writing_to_it() -> None:
    """A frozen runner stops reading its pipe: a large request written to it blocks its
    sender mid-write. The request waiting beside it still stops the runner after the stall
    limit, which unblocks the writer, and both fail saying so."""
    path = bundled_model_path()
    model = manifest("m", "1", sha="a" * 64, length=path.stat().st_size)
    settings = PoolSettings(4096 * MIB, context=1024, slots=2, keep_alive_seconds=0, max_queued=8)
    pool = ModelPool(lambda p, n: list(load_runner_slots(p, 1024, n, 2, 1.5)), settings)

    async def large_request_to(runner: subprocess.Popen[bytes]) -> str:
        while runner.poll() is None and os.path.exists(f"/proc/{runner.pid}"):
            if Path(f"/proc/{runner.pid}/stat").read_text().split(") ")[1][0] == "T":
                break  # stopped: its pipe fills and stays full
            await asyncio.sleep(0.01)
        async with pool.slot(model, path) as worker:
            with pytest.raises(InferenceError) as failed:
                await worker.complete(Prompt(text="word " * 100_000), GREEDY)
        return str(failed.value)

    async def main() -> tuple[str, str, float]:
        started = asyncio.get_running_loop().time()
        async with pool.slot(model, path) as worker:
            runner = worker.backend.runner.process  # type: ignore[attr-defined]
            writer = asyncio.create_task(large_request_to(runner))
            stream = worker.stream(Prompt(text="Count: 1, 2, 3,"), SamplingParams(max_tokens=400))
            with pytest.raises(InferenceError) as stalled:
                async for _ in stream:
                    if runner.poll() is None:
                        os.kill(runner.pid, signal.SIGSTOP)
            written = await asyncio.wait_for(writer, 20)
        return str(stalled.value), written, asyncio.get_running_loop().time() - started

    try:
        waiting, writing, seconds = asyncio.run(main())
    finally:
        pool.close()
    assert "was stopped" in waiting and "was stopped" in writing, (waiting, writing)
    assert seconds < 20


MEASURE = """
import asyncio, sys
from pathlib import Path
from edgefleet.agent.inference.model_io import Prompt, SamplingParams
from edgefleet.agent.inference.pool import ModelPool, PoolSettings
from edgefleet.agent.inference.remote import load_runner_slots
from edgefleet.memory import MIB
from tests.edgefleet.trustkit import manifest

def rss():
    lines = Path('/proc/self/status').read_text().splitlines()
    return next(int(l.split()[1]) / 1024 for l in lines if l.startswith('VmRSS'))

async def main():
    path = Path(sys.argv[1])
    settings = PoolSettings(4096 * MIB, context=1024, slots=2, keep_alive_seconds=0, max_queued=4)
    pool = ModelPool(lambda p, n: list(load_runner_slots(p, 1024, n, 2)), settings)
    model = manifest("m", "1", sha="a" * 64, length=path.stat().st_size)
    base = rss()
    async with pool.slot(model, path) as worker:
        await worker.complete(Prompt(text="Hello there, " * 20), SamplingParams(max_tokens=8))
        runner = worker.backend.runner.process
    await asyncio.sleep(0.1)
    assert pool.unload_idle() == ["m"]
    for _ in range(100):  # the worker's thread closes the runner
        if runner.poll() is not None:
            break
        await asyncio.sleep(0.1)
    heavy = sorted(m for m in ("llama_cpp", "numpy") if m in sys.modules)
    print(round(rss() - base), runner.returncode, ",".join(heavy) or "-")

asyncio.run(main())
"""


@pytest.mark.model
def test_an_unloaded_model_leaves_nothing_in_the_agent() -> None:
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(bundled_model_path())],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    grown, code, heavy = out.stdout.splitlines()[-1].split()
    assert code == "0"  # the runner exited when told to
    assert heavy == "-"  # llama.cpp and numpy never loaded into the agent
    assert int(grown) <= 5  # MiB: what the pool, the client threads and their buffers keep


@pytest.mark.model
def test_the_runner_gives_the_tokens_the_engine_gives_in_process() -> None:
    path, prompt = bundled_model_path(), Prompt(messages=({"role": "user", "content": "Hi!"},))
    [local] = load_slots(path, 1024, 1, 2)
    [remote] = load_runner_slots(path, 1024, 1, 2)
    try:
        texts = []
        for backend in (local, remote):
            *_, (_, totals) = backend.generate(prompt, GREEDY, threading.Event())
            texts.append((totals.text, totals.completion_tokens, totals.prompt_tokens))
        assert texts[0] == texts[1]
        tokens = local.embedding_tokens("hello world")
        assert remote.embedding_tokens("hello world") == tokens
        [near], [far] = remote.embed([tokens]), local.embed([tokens])
        assert near == pytest.approx(far, abs=1e-6)
    finally:
        local.close()
        remote.close()


def test_frames_are_bounded_and_checked() -> None:
    stream = io.BytesIO()
    write_frame(stream, {"id": 1, "text": "é"})
    stream.seek(0)
    assert read_frame(stream) == {"id": 1, "text": "é"}
    assert read_frame(stream) is None  # the end
    assert read_frame(io.BytesIO(HEADER.pack(10) + b"{}")) is None  # cut short: the end
    with pytest.raises(MalformedInputError, match="at most"):
        read_frame(io.BytesIO(HEADER.pack(MAX_FRAME + 1)))
    with pytest.raises(MalformedInputError, match="not an object"):
        read_frame(io.BytesIO(HEADER.pack(2) + b"[]"))


def test_a_model_the_runner_cannot_load_is_one_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\0" * 60)
    with pytest.raises(InferenceError, match=r"junk\.gguf"):
        load_runner_slots(junk, 512, 1, 1)
