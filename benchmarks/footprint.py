"""The agent's resident memory (RSS) through a model's life, black-box, on the bundled model.

One run: a controller and an agent (`edgefleet-agent run`, smoke test on, keep-alive
short), the RSS of the agent and of its children (the model runner, while a model is
loaded) read from /proc after it settles at each stage:

  idle            enrolled, serving its API, syncing; no model installed
  after smoke     a version installed, smoke-tested and active, never used
  loaded          after two chat completions, one under a JSON schema (the model in the
                  pool)
  after eviction  the keep-alive expired and the pool unloaded it

Targets (issue 22): idle ≤ 60 MB; after the smoke test and after eviction within 10 MB of
idle; loaded ≤ weights + KV cache + 40 MB over idle (what the model adds: its weights, its
KV cache, and at most 40 MB for compute buffers and the libraries it loads). Medians of
--runs runs (each a fresh agent). RSS counts the pages of shared libraries the agent
touched too: it is what `top` and the kernel's OOM killer see.

It also prints the floor under the idle figure: the same interpreter with the libraries
the agent holds resident imported (gRPC, aiohttp, cryptography, structlog, APScheduler,
prometheus_client, …) and none of the agent's code.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edgefleet.bundled import bundled_model_path
from edgefleet.gguf import read_gguf_file
from edgefleet.memory import MIB, estimate_memory
from tests.harness import (
    Fleet,
    active_models,
    http_json,
    process_rss_mib,
    tree_rss_mib,
    wait_for,
)

IDLE_TARGET_MIB = 60
RETURNED_WITHIN_MIB = 10
LOADED_MARGIN_MIB = 40
KEEP_ALIVE_SECONDS = 2
N_CTX = 2048
SETTLE_SECONDS = 3.0
# What the idle agent holds imported, its own code aside: the floor under its idle RSS.
RESIDENT_LIBRARIES = (
    "asyncio",
    "sqlite3",
    "structlog",
    "aiohttp.web",
    "grpc.aio",
    "google.protobuf",
    "cryptography.x509",
    "cryptography.hazmat.primitives.asymmetric.ed25519",
    "apscheduler.schedulers.asyncio",
    "prometheus_client",
    "orjson",
    "rfc8785",
)
FLOOR_SCRIPT = """
import importlib, sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
bare = rss()
for name in sys.argv[1:]:
    importlib.import_module(name)
print(bare, rss())
"""


def library_floor() -> tuple[float, float]:
    """RSS (MiB) of this interpreter bare, and with the agent's resident libraries
    imported and nothing else: what no change to the agent's own code can go under."""
    result = subprocess.run(
        [sys.executable, "-c", FLOOR_SCRIPT, *RESIDENT_LIBRARIES],
        capture_output=True,
        text=True,
        check=True,
    )
    bare, libraries = result.stdout.split()
    return float(bare), float(libraries)


def one_run(root: Path) -> dict[str, float]:
    """RSS at each stage of one fresh agent."""
    fleet = Fleet(root)
    env = {"EDGEFLEET_AGENT_KEEP_ALIVE_SECONDS": str(KEEP_ALIVE_SECONDS)}
    env |= {"EDGEFLEET_AGENT_N_CTX": str(N_CTX), "EDGEFLEET_AGENT_N_PARALLEL": "1"}
    try:
        fleet.init_controller()
        fleet.start_controller()
        fleet.enroll("gw", {"site": "bench"})
        token = fleet.app_token("gw", "app:bench")
        api = fleet.start_agent("gw", sync_interval=3600, env=env)
        pid = fleet.processes["agent-gw"].pid
        measured: dict[str, float] = {}
        time.sleep(SETTLE_SECONDS)
        measured["idle"] = tree_rss_mib(pid)

        model = str(bundled_model_path())
        fleet.ctl("models", "publish", model, "--name", "smollm2", "--version", "1")
        fleet.ctl("rollout", "create", "smollm2@1", "--selector", "site=bench", "--yes")
        wait_for("the model active", lambda: active_models(api, token), 180)
        time.sleep(SETTLE_SECONDS)
        measured["after smoke"] = tree_rss_mib(pid)

        body = {"model": "smollm2", "max_tokens": 16, "temperature": 0}
        body["messages"] = [{"role": "user", "content": "Say hello."}]
        http_json(f"http://{api}/v1/chat/completions", body, token=token)
        # and one under a JSON schema: the agent compiles it to a grammar (which once
        # loaded all of llama.cpp and numpy into the agent for good)
        schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "n", "schema": schema},
        }
        http_json(f"http://{api}/v1/chat/completions", body, token=token)
        time.sleep(SETTLE_SECONDS)
        measured["loaded"] = tree_rss_mib(pid)
        measured["loaded: the agent alone"] = process_rss_mib(pid)

        # The pool's keep-alive job runs every 30 s; the model is idle after 2 s.
        wait_for(
            "the model unloaded",
            lambda: True if "keep-alive expired" in fleet.log("agent-gw") else None,
            90,
        )
        time.sleep(SETTLE_SECONDS)
        measured["after eviction"] = tree_rss_mib(pid)
        return measured
    finally:
        fleet.stop_all()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()
    runs = []
    for number in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="bench-footprint-") as tmp:
            runs.append(one_run(Path(tmp)))
        print(f"run {number + 1}: " + ", ".join(f"{k} {v:.0f}" for k, v in runs[-1].items()))
    median = {stage: statistics.median(r[stage] for r in runs) for stage in runs[0]}
    info = read_gguf_file(bundled_model_path())
    size = bundled_model_path().stat().st_size
    estimate = estimate_memory(size, info.kv_bytes_per_token, N_CTX, 1)
    checks = {
        "idle": (median["idle"], IDLE_TARGET_MIB),
        "after smoke": (median["after smoke"], median["idle"] + RETURNED_WITHIN_MIB),
        "loaded": (
            median["loaded"],
            median["idle"] + (estimate.weights + estimate.kv_cache) / MIB + LOADED_MARGIN_MIB,
        ),
        "after eviction": (median["after eviction"], median["idle"] + RETURNED_WITHIN_MIB),
    }
    bare, libraries = library_floor()
    if args.json:
        print(
            json.dumps(
                {
                    "runs": runs,
                    "median_mib": median,
                    "estimate_mib": estimate.total / MIB,
                    "library_floor_mib": libraries,
                }
            )
        )
    print(f"agent RSS in MiB, median of {args.runs} runs; the pool's estimate: {estimate}")
    alone = median["loaded: the agent alone"]
    print(f"loaded: the agent {alone:.0f} + its model runner {median['loaded'] - alone:.0f}")
    print(
        f"floor: a bare interpreter {bare:.0f}; with the libraries the agent holds resident "
        f"and none of its code {libraries:.0f} ({', '.join(RESIDENT_LIBRARIES)})"
    )
    print(f"{'stage':<16}{'RSS':>8}{'target ≤':>10}")
    failed = False
    for stage, (value, limit) in checks.items():
        mark = "" if value <= limit else "  over target"
        failed |= value > limit
        print(f"{stage:<16}{value:>8.0f}{limit:>10.0f}{mark}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
