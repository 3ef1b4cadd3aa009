"""Memory estimates from GGUF headers bound what llama.cpp really uses."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgefleet.bundled import bundled_model_path
from edgefleet.errors import MalformedInputError
from edgefleet.gguf import read_gguf_file
from edgefleet.memory import MIB, SEQUENCE_OVERHEAD, estimate_memory, fits, kv_bytes_per_token

MEASURE = """
import sys, threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from edgefleet.agent.inference.model_io import Prompt, SamplingParams
from edgefleet.agent.inference.remote import RunnerProcess
def rss(pid):
    lines = Path(f'/proc/{pid}/status').read_text().splitlines()
    return next(int(l.split()[1]) * 1024 for l in lines if l.startswith('VmRSS'))
context, slots = int(sys.argv[2]), int(sys.argv[3])
runner = RunnerProcess(Path(sys.argv[1]), context, slots, 2)
def chat(slot):
    prompt = Prompt(messages=({'role': 'user', 'content': f'{slot} ' + 'hi ' * 300},))
    for _ in runner.slots[slot].generate(prompt, SamplingParams(max_tokens=16), threading.Event()):
        pass
with ThreadPoolExecutor(slots) as pool:  # every sequence generating at once
    list(pool.map(chat, range(slots)))
measured = rss(runner.process.pid)  # the whole runner: the model's cost to the gateway
runner.close()
print(measured)
"""


def test_kv_cache_of_the_bundled_model() -> None:
    """SmolLM2-135M: 30 layers x 3 KV heads x (64 + 64) dims x 2 bytes per token."""
    info = read_gguf_file(bundled_model_path())
    assert info.kv_bytes_per_token == 30 * 3 * 128 * 2


def test_grouped_query_attention_and_missing_facts() -> None:
    """KV heads default to heads; a header without attention facts reserves no KV cache."""
    facts = {"block_count": 2, "embedding_length": 64, "attention.head_count": 4}
    assert kv_bytes_per_token(facts) == 2 * 4 * (16 + 16) * 2
    assert kv_bytes_per_token({**facts, "attention.head_count_kv": 1}) == 2 * 1 * (16 + 16) * 2
    assert kv_bytes_per_token({"block_count": 2}) == 0


def test_negative_facts_are_refused_not_computed() -> None:
    """A negative fact never becomes a (negative) KV size."""
    facts = {"block_count": -30, "embedding_length": 64, "attention.head_count": -9}
    with pytest.raises(MalformedInputError, match="must not be negative"):
        kv_bytes_per_token(facts)


def test_estimate_scales_with_context_and_slots() -> None:
    """Doubling slots doubles the KV cache, not the weights nor the context's compute
    buffers (its sequences are decoded in one batch): only a per-sequence term."""
    one = estimate_memory(100 * MIB, 1000, 2048, 1)
    two = estimate_memory(100 * MIB, 1000, 2048, 2)
    assert two.weights == one.weights and two.kv_cache == 2 * one.kv_cache
    assert two.overhead == one.overhead + SEQUENCE_OVERHEAD
    assert "weights 100 MiB" in str(one) and "2048 tokens x 1 slot(s)" in str(one)
    assert fits(one, one.total) and not fits(one, one.total, in_use=1)


@pytest.mark.model
@pytest.mark.parametrize(("context", "slots"), [(512, 1), (4096, 1), (2048, 4), (1024, 8)])
def test_estimate_bounds_measured_resident_memory(context: int, slots: int) -> None:
    """The estimate is above the resident memory of the model's whole runner process with
    every sequence of its batched context generating, and not wildly above it."""
    path = bundled_model_path()
    info = read_gguf_file(path)
    estimate = estimate_memory(path.stat().st_size, info.kv_bytes_per_token, context, slots)
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path), str(context), str(slots)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    measured = int(out.stdout.strip().splitlines()[-1])
    assert measured <= estimate.total <= 1.6 * measured, (measured / MIB, str(estimate))
