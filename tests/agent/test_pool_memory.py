"""A model the pool unloads gives its memory back to the operating system (issue 22):
measured in a fresh process after a first load and unload (the libraries and modules
that load with the first model stay), so that only the model's own memory (weights, KV
cache, buffers) is compared."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgefleet.bundled import bundled_model_path

MEASURE = """
import asyncio, sys
from pathlib import Path
from edgefleet.agent.inference.model_io import Prompt, SamplingParams
from edgefleet.agent.inference.llama_backend import load_slots
from edgefleet.agent.inference.pool import ModelPool, PoolSettings
from edgefleet.memory import MIB
from tests.edgefleet.trustkit import manifest

def rss():
    lines = Path('/proc/self/status').read_text().splitlines()
    return next(int(l.split()[1]) / 1024 for l in lines if l.startswith('VmRSS'))

async def main():
    path = Path(sys.argv[1])
    settings = PoolSettings(4096 * MIB, context=1024, slots=2, keep_alive_seconds=0, max_queued=4)
    pool = ModelPool(lambda p, n: list(load_slots(p, 1024, n, 2)), settings)
    model = manifest("m", "1", sha="a" * 64, length=path.stat().st_size)
    async def load_use_unload():
        async with pool.slot(model, path) as worker:
            await worker.complete(Prompt(text="Hello there, " * 20), SamplingParams(max_tokens=8))
        del worker  # as an endpoint's frame ends
        loaded = rss()
        await asyncio.sleep(0.1)
        assert pool.unload_idle() == ["m"]
        await asyncio.sleep(1)  # the model's own thread frees it
        return loaded

    await load_use_unload()  # what the first load imports (chat templates…) stays loaded
    base = rss()
    loaded = await load_use_unload()
    print(round(loaded - base), round(rss() - base))

asyncio.run(main())
"""


@pytest.mark.model
def test_an_unloaded_model_returns_its_memory() -> None:
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(bundled_model_path())],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    loaded, after = (int(v) for v in out.stdout.splitlines()[-1].split())
    assert loaded > 90  # the weights alone are 94 MiB
    assert after <= 10, f"{after} MiB still held after unloading ({loaded} MiB loaded)"
