"""The local API's newer surface against its baselines, one run, same model and threads:

  1. embeddings per second through the API (the `openai` client, a real agent) ÷
     in-process llama-cpp-python (`Llama(embedding=True).create_embedding`) on the same
     inputs (target >= 0.9);
  2. generation tokens/s under a JSON-schema grammar ÷ unconstrained, the same number of
     tokens, both through the API (target >= 0.8);
  3. time to first token of a request repeating a ~1,000-token system prompt already in
     the slot's KV cache ÷ the same request cold (target <= 0.25).

Medians of --rounds rounds, the paths of each pair interleaved; both sides printed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.inference import start_agent
from edgefleet.agent.app.config import AgentConfig
from edgefleet.bundled import bundled_model_path
from tests.harness import Fleet

SENTENCES = [
    f"Sensor {i} on line {i % 7} reported {['normal', 'high', 'low'][i % 3]} vibration at "
    f"{i * 3 % 60} minutes past the hour, shift {i % 3 + 1}."
    for i in range(64)
]
SYSTEM = " ".join(
    f"Rule {i}: when a gateway in zone {i % 9} reports a fault, log it, notify the "
    f"operator on duty, and keep serving."
    for i in range(40)
)  # about 1,000 tokens
LONG_ANSWER = {
    "type": "object",
    "properties": {
        "lines": {
            "type": "array",
            "items": {"type": "string", "maxLength": 60},
            "minItems": 60,
        }
    },
    "required": ["lines"],
    "additionalProperties": False,
}  # cannot end before max_tokens: both paths generate the same number of tokens


def median(values: list[float]) -> float:
    return statistics.median(values)


def embeddings_in_process(threads: int) -> Callable[[], float]:
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(bundled_model_path()),
        embedding=True,
        pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
        n_ctx=512,
        n_batch=512,
        n_threads=threads,
        verbose=False,
    )

    def one() -> float:
        start = time.perf_counter()
        result = llm.create_embedding(SENTENCES)
        assert len(result["data"]) == len(SENTENCES)
        return len(SENTENCES) / (time.perf_counter() - start)

    return one


def embeddings_through_api(client: Any) -> Callable[[], float]:
    def one() -> float:
        start = time.perf_counter()
        result = client.embeddings.create(model="smollm2", input=SENTENCES)
        assert len(result.data) == len(SENTENCES)
        return len(SENTENCES) / (time.perf_counter() - start)

    return one


def generation(client: Any, max_tokens: int, constrained: bool) -> Callable[[], float]:
    """Generation tokens/s after the first token, streamed."""
    extra: dict[str, Any] = {}
    if constrained:
        extra["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "lines", "schema": LONG_ANSWER},
        }

    def one() -> float:
        stream = client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "Write a long story about a dragon."}],
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            **extra,
        )
        first = last = 0.0
        tokens = 0
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                last = time.perf_counter()
                first = first or last
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        assert tokens == max_tokens, f"generated {tokens}, not {max_tokens}"
        return (tokens - 1) / (last - first)

    return one


def first_token_seconds(client: Any, system: str, question: str) -> tuple[float, int]:
    start = time.perf_counter()
    stream = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
        max_tokens=4,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    ttft, cached = 0.0, 0
    for chunk in stream:
        if not ttft and chunk.choices and chunk.choices[0].delta.content:
            ttft = time.perf_counter() - start
        if chunk.usage is not None:
            cached = chunk.usage.prompt_tokens_details.cached_tokens
    return ttft, cached


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=AgentConfig(data_dir=Path(".")).n_threads)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import openai

    print(f"model {bundled_model_path().name}, threads {args.threads}, {args.rounds} rounds")
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        fleet = Fleet(Path(tmp))
        try:
            api, token = start_agent(fleet, args.threads, 2048)
            client = openai.OpenAI(base_url=f"http://{api}/v1", api_key=token, max_retries=0)
            pairs = {
                "embeddings/s": (
                    embeddings_through_api(client),
                    embeddings_in_process(args.threads),
                ),
                "constrained tokens/s": (
                    generation(client, args.max_tokens, True),
                    generation(client, args.max_tokens, False),
                ),
            }
            results: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in pairs}
            for ours, baseline in pairs.values():
                ours(), baseline()  # warm-up
            for _ in range(args.rounds):
                for name, (ours, baseline) in pairs.items():
                    results[name][0].append(ours())
                    results[name][1].append(baseline())
            warm, cold, cached = [], [], []
            for _ in range(args.rounds):
                fresh = f"[{uuid.uuid4().hex}] {SYSTEM}"  # shares no prefix with anything
                cold.append(first_token_seconds(client, fresh, "Is zone 3 in scope?")[0])
                seconds, reused = first_token_seconds(client, fresh, "What about zone 4?")
                warm.append(seconds)
                cached.append(reused)
        finally:
            fleet.stop_all()
    report(results, warm, cold, cached)
    return 0


def report(
    results: dict[str, tuple[list[float], list[float]]],
    warm: list[float],
    cold: list[float],
    cached: list[int],
) -> None:
    e_api, e_local = median(results["embeddings/s"][0]), median(results["embeddings/s"][1])
    print(
        f"embeddings/s: API {e_api:.1f} / in-process llama-cpp-python {e_local:.1f} = "
        f"{e_api / e_local:.3f}  (target >= 0.9)"
    )
    g_json, g_free = (
        median(results["constrained tokens/s"][0]),
        median(results["constrained tokens/s"][1]),
    )
    print(
        f"generation tokens/s: JSON schema {g_json:.1f} / unconstrained {g_free:.1f} = "
        f"{g_json / g_free:.3f}  (target >= 0.8)"
    )
    t_warm, t_cold = median(warm), median(cold)
    print(
        f"TTFT with a cached ~1,000-token system prompt: {t_warm * 1000:.1f} ms / cold "
        f"{t_cold * 1000:.1f} ms = {t_warm / t_cold:.3f}  (target <= 0.25; "
        f"{int(median([float(c) for c in cached]))} prompt tokens reused)"
    )


if __name__ == "__main__":
    raise SystemExit(main())
