"""llama.cpp through its ctypes bindings alone: the agent's JSON-schema compiler loads
neither llama.cpp nor numpy (it loaded both, +33 MiB, for the rest of the agent's life);
a runner loads the bindings, not llama-cpp-python's high-level API, numpy or structlog
(a request under a grammar neither); a later plain `import llama_cpp` in the same process
still gets the whole package;
llama.cpp's load-time chatter stays out of the runner's stderr (the agent quotes its last
lines), and a model it refuses is refused with llama.cpp's reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet.agent.inference.llama_backend import load_slots
from edgefleet.agent.inference.llama_library import llama_module
from edgefleet.agent.inference.remote import load_runner_slots
from edgefleet.bundled import bundled_model_path
from edgefleet.errors import InferenceError
from tests.ggufkit import write_gguf_with_facts

GRAMMAR_ONLY = """
import sys
from concurrent.futures import ThreadPoolExecutor
from edgefleet.agent.inference.structured import compile_grammar
schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
with ThreadPoolExecutor(16) as pool:  # 16 requests compile their first schema at once
    grammars = set(pool.map(lambda _: compile_grammar(schema, "response_format"), range(16)))
assert len(grammars) == 1 and "root" in grammars.pop()
heavy = ("llama_cpp.llama_cpp", "llama_cpp.llama", "numpy", "jinja2", "diskcache")
print(",".join(sorted(m for m in heavy if m in sys.modules)) or "-")
import llama_cpp  # the whole package, as a benchmark or a script would
grammar = sys.modules["llama_cpp.llama_grammar"]
print(hasattr(llama_cpp, "Llama"), llama_cpp.llama_grammar is grammar)
"""

RUNNER_IMPORTS = """
import sys, threading
from pathlib import Path
from edgefleet.agent.inference.llama_backend import load_slots
from edgefleet.agent.inference.model_io import Prompt, SamplingParams
[slot] = load_slots(Path(sys.argv[1]), 512, 1, 2)
prompt = Prompt(messages=({"role": "user", "content": "Hi!"},))
greedy = SamplingParams(max_tokens=4, temperature=0.0)
*_, (_, totals) = slot.generate(prompt, greedy, threading.Event())
assert totals.completion_tokens > 0
shaped = SamplingParams(max_tokens=4, temperature=0.0, grammar='root ::= "yes" | "no"')
*_, (_, totals) = slot.generate(prompt, shaped, threading.Event())
assert totals.text in ("yes", "no"), totals.text
heavy = ("llama_cpp.llama", "llama_cpp._internals", "numpy", "structlog", "diskcache")
print(",".join(sorted(m for m in heavy if m in sys.modules)) or "-")
slot.close()
"""


def _run(script: str, *args: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.splitlines()


def test_compiling_a_schema_loads_neither_llama_cpp_nor_numpy() -> None:
    loaded, whole = _run(GRAMMAR_ONLY)
    assert loaded == "-"
    assert whole == "True True"  # the plain import afterwards: complete, sharing the module


@pytest.mark.model
def test_a_runner_loads_the_bindings_and_no_more() -> None:
    [loaded] = _run(RUNNER_IMPORTS, str(bundled_model_path()))
    assert loaded == "-"


def test_a_missing_submodule_is_an_import_error() -> None:
    with pytest.raises(ModuleNotFoundError):
        llama_module("no_such_module")


@pytest.mark.model
def test_llama_cpp_chatter_stays_out_of_the_runners_stderr() -> None:
    command = [sys.executable, "-m", "edgefleet.agent.inference.runner"]
    runner = subprocess.Popen(
        [*command, str(bundled_model_path()), "512", "1", "2"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    _, stderr = runner.communicate(b"", timeout=120)  # stdin closed: load, then exit
    assert runner.returncode == 0
    assert b"llama_context" not in stderr and b"llama_model_loader" not in stderr, stderr[-500:]


@pytest.mark.parametrize(
    ("content", "said"),
    [
        ("junk", "cannot load m.gguf: bad GGUF version: 0"),
        (
            "unknown architecture",
            "cannot load m.gguf: error loading model: unknown model architecture: 'nosucharch'",
        ),
    ],
)
def test_a_model_llama_cpp_refuses_says_why(tmp_path: Path, content: str, said: str) -> None:
    path = tmp_path / "m.gguf"
    if content == "junk":
        path.write_bytes(b"GGUF" + b"\0" * 60)
    else:
        write_gguf_with_facts(path, {}, arch="nosucharch")
    for load in (load_slots, load_runner_slots):  # in process, and through a runner
        with pytest.raises(InferenceError) as caught:
            load(path, 512, 1, 1)
        assert str(caught.value) == said
