"""The smoke test a new model version passes before it replaces the one serving."""

from __future__ import annotations

import gc
import threading
from pathlib import Path

from agent.inference.engine import Generation, LlamaBackend, Prompt, SamplingParams
from edgefleet.errors import InferenceError

SMOKE_CONTEXT = 256
SMOKE_TOKENS = 4


def smoke_test(path: Path, n_threads: int) -> None:
    """Load the model with a small context and generate a few tokens; InferenceError if not."""
    backend = LlamaBackend(path, SMOKE_CONTEXT, n_threads)
    try:
        params = SamplingParams(max_tokens=SMOKE_TOKENS, temperature=0.0)
        stream = backend.generate(Prompt(text="Hello"), params, threading.Event())
        totals = Generation()
        for _, totals in stream:  # noqa: B007 - the running totals of the last token
            continue
        if totals.completion_tokens == 0:
            raise InferenceError(f"{path.name} loaded but generated no token")
    except (ValueError, RuntimeError) as e:
        raise InferenceError(f"generation failed: {e}") from e
    finally:
        del backend
        gc.collect()  # free the weights now, not when the collector gets round to it
