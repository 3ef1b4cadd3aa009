"""The smoke test a new model version passes before it replaces the one serving.

It runs in a child process (``python -m edgefleet.agent.inference.smoke``): whatever the
model does to llama.cpp — a crash on a hostile file, memory the allocator keeps — ends
with the child, and the agent gets back every byte the test loaded (before, the agent
held the smoke test's model until it restarted: 154 MB instead of 97 MB idle). The
agent process itself never imports llama.cpp for it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from edgefleet.errors import InferenceError

SMOKE_CONTEXT = 256
SMOKE_TOKENS = 16
SMOKE_PROMPT = "Once upon a time, in a small town by the sea,"
# A large model read from an SD card loads slowly; a test that takes longer than this is
# a failure (the child is killed), not a hang of the sync pass.
SMOKE_TIMEOUT_SECONDS = 600.0


def smoke_test(path: Path, n_threads: int, timeout: float = SMOKE_TIMEOUT_SECONDS) -> float:
    """Load the model with a small context in a child process and generate a few tokens;
    InferenceError (with the child's reason) if it cannot.

    Returns the generation speed after the first token (tokens/s; 0.0 when fewer than two
    tokens came). Every version is tested with the same prompt and length, so the speeds
    of two versions on one device compare: rollouts gate on that ratio."""
    command = [sys.executable, "-m", __name__, str(path), str(n_threads)]
    try:
        child = subprocess.run(command, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise InferenceError(
            f"{path.name}: the smoke test took longer than {timeout:g} s"
        ) from None
    if child.returncode < 0:
        try:
            name = signal.Signals(-child.returncode).name
        except ValueError:
            name = f"signal {-child.returncode}"
        raise InferenceError(f"{path.name} crashed llama.cpp in the smoke test ({name})")
    try:
        answer = json.loads(child.stdout.decode("utf-8").strip().splitlines()[-1])
    except (ValueError, IndexError):
        said = child.stderr.decode("utf-8", errors="replace").strip().splitlines()
        raise InferenceError(
            f"{path.name}: the smoke test exited {child.returncode}"
            + (f": {said[-1][:200]}" if said else "")
        ) from None
    if "error" in answer:
        raise InferenceError(str(answer["error"]))
    return float(answer["tokens_per_second"])


def _run(path: Path, n_threads: int) -> float:
    """The test itself, in the child."""
    import threading

    from edgefleet.agent.inference.llama_backend import load_slots
    from edgefleet.agent.inference.model_io import Generation, Prompt, SamplingParams

    [backend] = load_slots(path, SMOKE_CONTEXT, 1, n_threads)  # the serving engine, one slot
    params = SamplingParams(max_tokens=SMOKE_TOKENS, temperature=0.0)
    try:
        stream = backend.generate(Prompt(text=SMOKE_PROMPT), params, threading.Event())
        totals, first, last = Generation(), 0.0, 0.0
        for _, totals in stream:  # noqa: B007 - the running totals of the last token
            last = time.perf_counter()
            first = first or last
    except (ValueError, RuntimeError) as e:
        raise InferenceError(f"generation failed: {e}") from e
    finally:
        backend.close()
    if totals.completion_tokens == 0:
        raise InferenceError(f"{path.name} loaded but generated no token")
    span = last - first
    return (totals.completion_tokens - 1) / span if totals.completion_tokens > 1 and span else 0.0


def main(argv: list[str]) -> int:
    """Child entry point: print one JSON line, ``{"tokens_per_second": x}`` or
    ``{"error": reason}``."""
    path, n_threads = Path(argv[0]), int(argv[1])
    try:
        answer: dict[str, object] = {"tokens_per_second": _run(path, n_threads)}
    except InferenceError as e:
        answer = {"error": str(e)}
    print(json.dumps(answer), flush=True)
    os._exit(0)  # no interpreter teardown: llama.cpp's own atexit work is not needed


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
