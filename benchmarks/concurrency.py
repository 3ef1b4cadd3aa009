"""Aggregate generation speed with 1, 2, 4 and 8 concurrent clients (issue 22).

Same model, threads and max_tokens for the three paths, levels and rounds interleaved:
  (ours)  the edgefleet agent's API (n_parallel 8: one batched context), N streaming
          `openai` clients at once, each with its own prompt;
  (a)     llama-cpp-python's own server (`llama_cpp.server`) through the same clients: it
          has no parallel decoding (one `Llama` behind a lock; its docs offer none), so N
          requests are served one after another;
  (b)     the ceiling: the same model decoding N sequences in one batch, in process, with
          llama.cpp's low-level API (llama_batch, llama_decode, a greedy sampler), from
          the same prompt tokens the servers evaluate (the GGUF's chat template applied).
Aggregate tokens/s = N x max_tokens / (time from sending the N requests to the last
token). Also: the batching gain (b at N)/(b at 1) — what this machine gives batching at
all (a 2-vCPU VM little; a Raspberry Pi 5, bound by memory bandwidth, several-fold) —
and the p50 and p99 time between two tokens of one stream at 4 clients against one client,
with the floor batching sets on that ratio here: (b)'s step of 4 sequences against its step of 1.
Targets: ours ≥ 0.85 x (b) and ≥ 1.0 x (a) at every N; p99 at 4 ≤ 2 x p99 at 1.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.inference import start_agent, start_llama_server
from edgefleet.agent.app.config import AgentConfig
from edgefleet.bundled import bundled_model_path
from tests.harness import Fleet

LEVELS = (1, 2, 4, 8)
TOPICS = ("the sea", "bread", "a gateway", "colours", "numbers", "a small town", "the sky", "rain")


def prompt(i: int) -> str:
    return f"Write a long story about {TOPICS[i % len(TOPICS)]}."


@dataclass
class Level:
    """One run of N concurrent streams."""

    tokens: int
    seconds: float
    gaps: list[float] = field(default_factory=list)  # between two tokens of one stream

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds


def through_openai(base_url: str, model: str, key: str, max_tokens: int) -> Callable[[int], Level]:
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=600)

    def stream(i: int) -> tuple[int, list[float]]:
        chunks = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": prompt(i)}],
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        arrivals, tokens = [], 0
        for chunk in chunks:
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append(time.perf_counter())
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return tokens or len(arrivals), arrivals

    def level(n: int) -> Level:
        started = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            results = list(pool.map(stream, range(n)))
        seconds = time.perf_counter() - started
        gaps = [b - a for _, t in results for a, b in zip(t, t[1:], strict=False)]
        return Level(sum(tokens for tokens, _ in results), seconds, gaps)

    return level


def in_process_batched(threads: int, n_ctx: int, max_tokens: int) -> Callable[[int], Level]:
    """N sequences in one llama_batch per step: the ceiling of batching on this machine."""
    import multiprocessing

    import llama_cpp
    from llama_cpp import _internals

    model: Any = _internals.LlamaModel(
        path_model=str(bundled_model_path()),
        params=llama_cpp.llama_model_default_params(),
        verbose=False,
    )
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = n_ctx * max(LEVELS)
    params.n_batch = params.n_ubatch = 512
    params.n_seq_max = max(LEVELS)
    params.kv_unified = False
    params.n_threads, params.n_threads_batch = threads, multiprocessing.cpu_count()
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    ctx: Any = _internals.LlamaContext(model=model, params=params, verbose=False)
    batch: Any = _internals.LlamaBatch(n_tokens=512, embd=0, n_seq_max=1, verbose=False)
    greedy = llama_cpp.llama_sampler_init_greedy()
    memory = llama_cpp.llama_get_memory(ctx.ctx)
    prompts = [templated_tokens(model, prompt(i)) for i in range(max(LEVELS))]

    def add(token: int, pos: int, seq: int, logits: bool) -> int:
        b = batch.batch
        row = int(b.n_tokens)
        b.token[row], b.pos[row], b.seq_id[row][0], b.n_seq_id[row] = token, pos, seq, 1
        b.logits[row], b.n_tokens = logits, row + 1
        return row

    def level(n: int) -> Level:
        llama_cpp.llama_memory_clear(memory, True)
        started = time.perf_counter()
        batch.batch.n_tokens = 0
        rows, positions = [], []
        for seq in range(n):
            tokens = prompts[seq]
            for pos, token in enumerate(tokens):
                row = add(token, pos, seq, pos == len(tokens) - 1)
            rows.append(row)
            positions.append(len(tokens))
        ctx.decode(batch)
        for _ in range(max_tokens):
            tokens = [llama_cpp.llama_sampler_sample(greedy, ctx.ctx, row) for row in rows]
            batch.batch.n_tokens = 0
            rows = [add(t, positions[s], s, True) for s, t in enumerate(tokens)]
            positions = [p + 1 for p in positions]
            ctx.decode(batch)
        return Level(n * max_tokens, time.perf_counter() - started)

    return level


def templated_tokens(model: Any, text: str) -> list[int]:
    """The tokens the agent and llama_cpp.server evaluate for one user message: the GGUF's
    chat template applied (the raw text is a fifth as long, 7-9 tokens against 37-39: the
    ceiling would read shorter prompts than the servers it bounds)."""
    from llama_cpp import llama_chat_format

    eos, bos = model.token_eos(), model.token_bos()
    formatter = llama_chat_format.Jinja2ChatFormatter(
        template=model.metadata()["tokenizer.chat_template"],
        eos_token=model.token_get_text(eos) if eos != -1 else "",
        bos_token=model.token_get_text(bos) if bos != -1 else "",
    )
    rendered = formatter(messages=[{"role": "user", "content": text}])
    return list(model.tokenize(rendered.prompt.encode(), not rendered.added_special, True))


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=AgentConfig(data_dir=Path(".")).n_threads)
    parser.add_argument("--n-ctx", type=int, default=1024)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(
        f"model {bundled_model_path().name}, threads {args.threads}, n_ctx {args.n_ctx} per "
        f"sequence, max_tokens {args.max_tokens}; medians of {args.rounds} rounds, interleaved"
    )
    results: dict[tuple[str, int], list[Level]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-concurrency-") as tmp:
        fleet = Fleet(Path(tmp))
        fleet.agent_env["EDGEFLEET_AGENT_N_PARALLEL"] = str(max(LEVELS))
        fleet.agent_env["EDGEFLEET_AGENT_MAX_QUEUED_REQUESTS"] = "32"
        server = None
        try:
            api, token = start_agent(fleet, args.threads, args.n_ctx)
            server, server_url = start_llama_server(args.threads, args.n_ctx)
            paths = {
                "ours": through_openai(f"http://{api}/v1", "smollm2", token, args.max_tokens),
                "a": through_openai(server_url, str(bundled_model_path()), "-", args.max_tokens),
                "b": in_process_batched(args.threads, args.n_ctx, args.max_tokens),
            }
            for path in paths.values():
                path(1)  # warm-up: load, page the weights in
            for _ in range(args.rounds):
                for n in LEVELS:
                    for key, path in paths.items():
                        results.setdefault((key, n), []).append(path(n))
        finally:
            fleet.stop_all()
            if server is not None:
                server.terminate()
                server.wait(10)
    report(results)
    return 0


def report(results: dict[tuple[str, int], list[Level]]) -> None:
    speed = {k: statistics.median(r.tokens_per_second for r in v) for k, v in results.items()}
    print(f"{'clients':>7}{'ours tok/s':>12}{'(a) tok/s':>11}{'(b) tok/s':>11}"
          f"{'ours/(b)':>10}{'ours/(a)':>10}{'gain (b)':>10}")  # fmt: skip
    for n in LEVELS:
        ours, a, b = speed[("ours", n)], speed[("a", n)], speed[("b", n)]
        print(
            f"{n:>7}{ours:>12.1f}{a:>11.1f}{b:>11.1f}{ours / b:>10.2f}{ours / a:>10.2f}"
            f"{b / speed[('b', 1)]:>10.2f}"
        )
    gaps = {n: [g for r in results[("ours", n)] for g in r.gaps] for n in (1, 4)}
    for q in (0.5, 0.99):
        one, four = quantile(gaps[1], q), quantile(gaps[4], q)
        print(
            f"p{q * 100:.0f} time between tokens of one stream: 4 clients {four * 1000:.1f} ms, "
            f"1 client {one * 1000:.1f} ms: {four / one:.2f}x"
            + (" (target <= 2)" if q == 0.99 else "")
        )
    # In the ceiling (b), one step of 4 sequences takes 4 / gain(4) times a step of one:
    # the least time between two tokens of one stream that batching 4 allows here.
    floor = 4 * speed[("b", 1)] / speed[("b", 4)]
    print(f"the ceiling's step of 4 sequences against a step of 1 (its floor): {floor:.2f}x")
    print("targets: ours/(b) >= 0.85 and ours/(a) >= 1.0 at every level")


if __name__ == "__main__":
    sys.exit(main())
