"""`edgefleet-agent bench`: prompt-processing and generation speed, the way llama-bench measures.

pp: evaluate ``prompt_tokens`` tokens in one batch; tg: evaluate ``generated_tokens``
tokens one at a time (no sampling, so the figure is the model's, not the sampler's).
Each is repeated and the median kept; results are stored and reported to the controller.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.database import AgentDatabase
from edgefleet.errors import InferenceError
from edgefleet.fleet import BenchResult
from edgefleet.trust.metadata import ModelManifest, format_time

STATE_PREFIX = "bench/"


def _timed(action: Any) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def run_bench(
    manifest: ModelManifest,
    path: Path,
    threads: int,
    prompt_tokens: int,
    generated_tokens: int,
    repetitions: int,
) -> BenchResult:
    """Load the model once and measure pp and tg ``repetitions`` times each."""
    import llama_cpp

    try:
        llm: Any = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=prompt_tokens + generated_tokens + 8,
            n_batch=prompt_tokens,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
    except (ValueError, RuntimeError, OSError) as e:
        raise InferenceError(f"cannot load {manifest.ref}: {e}") from e
    rng = random.Random(0)  # noqa: S311 - token ids for timing, not secrets
    vocabulary = llm.n_vocab()
    tokens = [rng.randrange(vocabulary) for _ in range(prompt_tokens)]
    pp_times, tg_times = [], []
    for _ in range(repetitions):
        llm.reset()
        pp_times.append(_timed(lambda: llm.eval(tokens)))
        llm.reset()

        def generate() -> None:
            for _ in range(generated_tokens):
                llm.eval([rng.randrange(vocabulary)])

        tg_times.append(_timed(generate))
    return BenchResult(
        model=manifest.name,
        version=manifest.version,
        sha256=manifest.sha256,
        threads=threads,
        prompt_tokens=prompt_tokens,
        generated_tokens=generated_tokens,
        prompt_tokens_per_second=round(prompt_tokens / statistics.median(pp_times), 2),
        generation_tokens_per_second=round(generated_tokens / statistics.median(tg_times), 2),
        measured_at=format_time(datetime.now(UTC)),
    )


def save_result(db: AgentDatabase, result: BenchResult) -> None:
    """Keep the latest result per model for the next status report."""
    db.set_state(STATE_PREFIX + result.model, json.dumps(asdict(result)))


def load_results(db: AgentDatabase, installed: dict[str, str]) -> tuple[BenchResult, ...]:
    """Stored results of the models whose measured blob is still installed (name -> sha256)."""
    results = []
    for name, sha256 in sorted(installed.items()):
        raw = db.get_state(STATE_PREFIX + name)
        if raw:
            result = BenchResult(**json.loads(raw))
            if result.sha256 == sha256:
                results.append(result)
    return tuple(results)
