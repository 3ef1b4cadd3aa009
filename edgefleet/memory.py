"""How much RAM a model needs: weights + KV cache for the context and slots + runtime overhead.

Computed from GGUF header facts (carried in the signed manifest), so a device can refuse
a model that will not fit *before* downloading it, and again before loading it.
A loaded model is one llama.cpp context whose ``slots`` sequences are decoded in one
batch (continuous batching): the weights and the compute buffers are there once, the KV
cache once per sequence. Calibrated on SmolLM2-135M Q4_1 (llama.cpp via llama-cpp-python
0.3.36, tests/edgefleet/test_memory.py), every sequence generating: resident memory was
weights + f16 KV cache + 34 MiB with 1 sequence (n_ctx 512 and 2048), + 36 with 2, + 38
with 4 and + 44 with 8; the overhead terms are a deliberately generous upper bound on
that.
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Mapping
from dataclasses import dataclass

from edgefleet.errors import MalformedInputError, ResourceError

MIB = 1024 * 1024
BASE_OVERHEAD = 64 * MIB  # a context's compute buffers and runtime
SEQUENCE_OVERHEAD = 4 * MIB  # each sequence of it: output rows, sampler, graph
# The model's runner process itself: an interpreter, llama.cpp and its ctypes bindings,
# jinja2 (28.5 MiB measured after their import on x86-64, before any model; 51 while the
# runner imported numpy and llama-cpp-python's wrappers): kept at 40 so that an estimate
# stays above what tests/edgefleet/test_memory.py measures on every machine.
RUNNER_OVERHEAD = 40 * MIB
F16_BYTES = 2


def kv_bytes_per_token(facts: Mapping[str, int]) -> int:
    """Bytes of f16 K and V cache one token of context costs, from a header's checked facts
    (``edgefleet.gguf.header_facts``: non-negative integers, 0 where absent)."""
    if any(value < 0 for value in facts.values()):
        raise MalformedInputError("GGUF header facts must not be negative")
    layers, embedding = facts.get("block_count", 0), facts.get("embedding_length", 0)
    heads = facts.get("attention.head_count", 0)
    if not (layers and embedding and heads):
        return 0  # not an attention model (or no header facts): no KV cache to reserve
    kv_heads = facts.get("attention.head_count_kv", 0) or heads
    key_length = facts.get("attention.key_length", 0) or embedding // heads
    value_length = facts.get("attention.value_length", 0) or embedding // heads
    return layers * kv_heads * (key_length + value_length) * F16_BYTES


@dataclass(frozen=True)
class MemoryEstimate:
    """An upper bound on the resident memory of one loaded model."""

    weights: int
    kv_cache: int
    overhead: int
    context: int
    slots: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.overhead

    def __str__(self) -> str:
        return (
            f"weights {self.weights / MIB:.0f} MiB + KV cache {self.kv_cache / MIB:.0f} MiB "
            f"({self.context} tokens x {self.slots} slot(s)) "
            f"+ overhead {self.overhead / MIB:.0f} MiB"
            f" = {self.total / MIB:.0f} MiB"
        )


def estimate_memory(weights: int, kv_per_token: int, context: int, slots: int) -> MemoryEstimate:
    """Estimate for one context of ``slots`` sequences of ``context`` tokens each, on one
    mmapped weight file, in a runner process of its own."""
    overhead = RUNNER_OVERHEAD + max(BASE_OVERHEAD, weights // 10) + slots * SEQUENCE_OVERHEAD
    return MemoryEstimate(weights, kv_per_token * context * slots, overhead, context, slots)


def fits(estimate: MemoryEstimate, budget: int, in_use: int = 0) -> bool:
    """Tell whether the model fits beside ``in_use`` bytes within ``budget``."""
    return estimate.total + in_use <= budget


def require_fit(ref: str, estimate: MemoryEstimate, budget: int) -> MemoryEstimate:
    """Raise ResourceError (with the numbers) if ``ref`` can never fit ``budget``."""
    if not fits(estimate, budget):
        raise ResourceError(
            f"{ref} needs {estimate}, over the memory budget of {budget / MIB:.0f} MiB"
        )
    return estimate


def give_back_freed_memory() -> None:
    """Return freed memory to the operating system now: collect what still refers to it
    (an unloaded model, a download's buffers), then hand the C heap's free pages back
    (:func:`trim_heap`): freed blocks otherwise stay in the process and count in its
    RSS — 66-68 MiB of the bundled model's ~270 after unloading it, measured by
    tests/agent/test_pool_memory.py."""
    gc.collect()
    trim_heap()


def trim_heap() -> None:
    """Ask glibc to release the free pages of its heaps (``malloc_trim``: 0.1-0.7 ms after
    a request, where a garbage collection first costs 3-10 ms). Nothing to ask of other C
    libraries (musl, macOS)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
