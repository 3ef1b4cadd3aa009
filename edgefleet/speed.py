"""Speed of a loaded llama.cpp model, measured the way llama-bench does.

pp: evaluate ``prompt_tokens`` tokens in one batch; tg: evaluate ``generated_tokens``
tokens one at a time (no sampling, so the figure is the model's, not the sampler's).
Each is repeated and the median kept. Used by `edgefleet-agent bench` on devices and by
the quantization pipeline on the operator's machine, so their figures compare.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

DEFAULT_PROMPT_TOKENS = 512
DEFAULT_GENERATED_TOKENS = 128
DEFAULT_REPETITIONS = 3


class Speed(NamedTuple):
    """Median tokens per second of prompt processing (pp) and generation (tg). (A named
    tuple, and statistics imported when measuring: the CLIs read the defaults above for
    their help, and must not pay for dataclasses and statistics to start.)"""

    prompt_tokens_per_second: float
    generation_tokens_per_second: float


def _timed(action: Any) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def measure_speed(llm: Any, prompt_tokens: int, generated_tokens: int, repetitions: int) -> Speed:
    """Time pp and tg ``repetitions`` times on ``llm`` (a ``llama_cpp.Llama`` whose context
    holds ``prompt_tokens + generated_tokens`` tokens) with fixed pseudo-random token ids."""
    import random
    import statistics

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
    return Speed(
        prompt_tokens_per_second=round(prompt_tokens / statistics.median(pp_times), 2),
        generation_tokens_per_second=round(generated_tokens / statistics.median(tg_times), 2),
    )
