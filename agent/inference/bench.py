"""`edgefleet-agent bench`: prompt-processing and generation speed of an installed model
(``edgefleet.speed``, llama-bench style); results are stored and reported to the controller.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgefleet.agent.app.database import AgentDatabase
from edgefleet.errors import InferenceError
from edgefleet.fleet import BenchResult
from edgefleet.speed import measure_speed
from edgefleet.trust.metadata import ModelManifest, format_time

STATE_PREFIX = "bench/"


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
    speed = measure_speed(llm, prompt_tokens, generated_tokens, repetitions)
    return BenchResult(
        model=manifest.name,
        version=manifest.version,
        sha256=manifest.sha256,
        threads=threads,
        prompt_tokens=prompt_tokens,
        generated_tokens=generated_tokens,
        prompt_tokens_per_second=speed.prompt_tokens_per_second,
        generation_tokens_per_second=speed.generation_tokens_per_second,
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
