"""Generation speed: in-process llama-cpp-python vs the agent's API vs llama_cpp.server.

One run, same model, prompt, threads and max_tokens for all three:
  (a) llama-cpp-python in process (the ceiling),
  (b) the edgefleet agent's local API through the `openai` client, streaming,
  (c) llama-cpp-python's own server (`llama_cpp.server`) through the same client.
Prints time to first token (TTFT) and generation tokens/s (tokens after the first,
divided by the time after the first), the median of --repeat runs each, and the ratios.
Targets (issue 4): (b) >= 0.95x (a) tokens/s, (b) >= 1.0x (c), TTFT(b) <= TTFT(a) + 15 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from edgefleet.agent.app.config import AgentConfig
from edgefleet.bundled import bundled_model_path
from tests.harness import Fleet, active_models, free_port, wait_for

PROMPT = "Write a long story about a dragon who learns to bake bread."


@dataclass
class Run:
    ttft: float
    tokens: int
    generation_seconds: float

    @property
    def tokens_per_second(self) -> float:
        return (self.tokens - 1) / self.generation_seconds if self.generation_seconds else 0.0


def measure(pieces: Iterator[str]) -> Run:
    """Time a stream of generated pieces (one per token)."""
    start = time.perf_counter()
    first = last = 0.0
    tokens = 0
    for _piece in pieces:
        now = time.perf_counter()
        if tokens == 0:
            first = now
        last = now
        tokens += 1
    return Run(first - start, tokens, last - first)


def in_process(threads: int, n_ctx: int, max_tokens: int) -> Callable[[], Run]:
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(bundled_model_path()), n_ctx=n_ctx, n_threads=threads, verbose=False
    )

    def one() -> Run:
        stream = llm.create_chat_completion(
            messages=[{"role": "user", "content": PROMPT}],
            max_tokens=max_tokens,
            temperature=0,
            seed=1,
            stream=True,
        )
        deltas = (cast(dict[str, Any], c)["choices"][0]["delta"] for c in stream)
        return measure(delta["content"] for delta in deltas if "content" in delta)

    return one


def through_openai(
    base_url: str, model: str, max_tokens: int, key: str = "unused"
) -> Callable[[], Run]:
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)

    def one() -> Run:
        stream = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": PROMPT}],
            max_tokens=max_tokens,
            temperature=0,
            seed=1,
            stream=True,
        )
        return measure(  # text only: the role chunk opening a chat stream has content ""
            c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content
        )

    return one


def median_run(runs: list[Run]) -> Run:
    return Run(
        statistics.median(r.ttft for r in runs),
        int(statistics.median(r.tokens for r in runs)),
        statistics.median(r.generation_seconds for r in runs),
    )


def start_agent(fleet: Fleet, threads: int, n_ctx: int) -> tuple[str, str]:
    """A controller and an agent serving the bundled model; return its API address and a token."""
    os.environ["EDGEFLEET_AGENT_N_THREADS"] = str(threads)
    os.environ["EDGEFLEET_AGENT_N_CTX"] = str(n_ctx)
    fleet.init_controller()
    fleet.start_controller()
    fleet.ctl("models", "publish", str(bundled_model_path()), "--name", "smollm2", "--version", "1")
    fleet.enroll("bench", {"role": "bench"})
    fleet.ctl("rollout", "create", "smollm2@1", "--selector", "role=bench")
    token = fleet.app_token("bench", "app:bench")
    api = fleet.start_agent("bench", sync_interval=3600)
    wait_for("the model", lambda: active_models(api, token), 120)
    fleet.stop("controller")  # idle from here on; keep the machine quiet
    return api, token


def start_llama_server(threads: int, n_ctx: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(bundled_model_path()),
            "--n_ctx",
            str(n_ctx),
            "--n_threads",
            str(threads),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    wait_for("llama_cpp.server", lambda: _up(f"{url}/models"), 60)
    return server, url


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=AgentConfig(data_dir=Path(".")).n_threads,
        help="llama.cpp threads for all three (default: the agent's default, cores - 1)",
    )
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print(
        f"model {bundled_model_path().name}, threads {args.threads}, n_ctx {args.n_ctx}, "
        f"max_tokens {args.max_tokens}; (a), (b), (c) interleaved, median of {args.rounds} rounds"
    )
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        fleet = Fleet(Path(tmp))
        server = None
        try:
            api, token = start_agent(fleet, args.threads, args.n_ctx)
            server, server_url = start_llama_server(args.threads, args.n_ctx)
            paths = {
                "a": in_process(args.threads, args.n_ctx, args.max_tokens),
                "b": through_openai(f"http://{api}/v1", "smollm2", args.max_tokens, token),
                "c": through_openai(server_url, str(bundled_model_path()), args.max_tokens),
            }
            runs: dict[str, list[Run]] = {key: [] for key in paths}
            for runner in paths.values():
                runner()  # warm-up: load, page in the weights
            for _ in range(args.rounds):
                for key, runner in paths.items():
                    runs[key].append(runner())
        finally:
            fleet.stop_all()
            if server is not None:
                server.terminate()
                server.wait(10)
    report({key: median_run(r) for key, r in runs.items()})
    return 0


def report(results: dict[str, Run]) -> None:
    names = {
        "a": "llama-cpp-python in process",
        "b": "edgefleet agent API (openai client)",
        "c": "llama_cpp.server (openai client)",
    }
    print(f"{'':4}{'path':<38}{'tokens':>7}{'TTFT ms':>10}{'gen tok/s':>11}")
    for key, run in results.items():
        figures = f"{run.tokens:>7}{run.ttft * 1000:>10.1f}{run.tokens_per_second:>11.1f}"
        print(f"({key}) {names[key]:<38}{figures}")
    a, b, c = results["a"], results["b"], results["c"]
    print(
        f"(b)/(a) tokens/s = {b.tokens_per_second:.1f} / {a.tokens_per_second:.1f} = "
        f"{b.tokens_per_second / a.tokens_per_second:.3f}  (target >= 0.95)"
    )
    print(
        f"(b)/(c) tokens/s = {b.tokens_per_second:.1f} / {c.tokens_per_second:.1f} = "
        f"{b.tokens_per_second / c.tokens_per_second:.3f}  (target >= 1.0)"
    )
    print(
        f"TTFT (b) - (a) = {b.ttft * 1000:.1f} - {a.ttft * 1000:.1f} = "
        f"{(b.ttft - a.ttft) * 1000:+.1f} ms  (target <= +15 ms)"
    )


def _up(url: str) -> bool | None:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2):  # noqa: S310
            return True
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main())
