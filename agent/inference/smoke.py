"""The smoke test a new model version passes before it replaces the one serving."""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path

from edgefleet.agent.inference.engine import Generation, Prompt, SamplingParams
from edgefleet.agent.inference.llama_backend import LlamaBackend
from edgefleet.errors import InferenceError

SMOKE_CONTEXT = 256
SMOKE_TOKENS = 16
SMOKE_PROMPT = "Once upon a time, in a small town by the sea,"


def smoke_test(path: Path, n_threads: int) -> float:
    """Load the model with a small context and generate a few tokens; InferenceError if not.

    Returns the generation speed after the first token (tokens/s; 0.0 when fewer than two
    tokens came). Every version is tested with the same prompt and length, so the speeds
    of two versions on one device compare: rollouts gate on that ratio."""
    backend = LlamaBackend(path, SMOKE_CONTEXT, n_threads)
    try:
        params = SamplingParams(max_tokens=SMOKE_TOKENS, temperature=0.0)
        stream = backend.generate(Prompt(text=SMOKE_PROMPT), params, threading.Event())
        totals, first, last = Generation(), 0.0, 0.0
        for _, totals in stream:  # noqa: B007 - the running totals of the last token
            last = time.perf_counter()
            first = first or last
        if totals.completion_tokens == 0:
            raise InferenceError(f"{path.name} loaded but generated no token")
    except (ValueError, RuntimeError) as e:
        raise InferenceError(f"generation failed: {e}") from e
    finally:
        del backend
        gc.collect()  # free the weights now, not when the collector gets round to it
    span = last - first
    return (totals.completion_tokens - 1) / span if totals.completion_tokens > 1 and span else 0.0
