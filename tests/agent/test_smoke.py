"""The smoke test runs in a child process: the agent never loads llama.cpp for it, gets
its memory back, and survives a model that crashes llama.cpp."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet.agent.inference.smoke import smoke_test
from edgefleet.bundled import bundled_model_path
from edgefleet.errors import InferenceError

IN_A_FRESH_PROCESS = """
import sys
from pathlib import Path
from edgefleet.agent.inference.smoke import smoke_test
def rss():
    lines = Path('/proc/self/status').read_text().splitlines()
    return next(int(l.split()[1]) // 1024 for l in lines if l.startswith('VmRSS'))
before = rss()
speed = smoke_test(Path(sys.argv[1]), 1)
print(speed, 'llama_cpp' in sys.modules, rss() - before)
"""


@pytest.mark.model
def test_the_bundled_model_passes_and_the_agent_loads_nothing_for_it() -> None:
    out = subprocess.run(
        [sys.executable, "-c", IN_A_FRESH_PROCESS, str(bundled_model_path())],
        capture_output=True, text=True, check=True, timeout=300,
    ).stdout.split()  # fmt: skip
    speed, loaded_llama, grown_mib = float(out[0]), out[1] == "True", int(out[2])
    assert speed > 0
    assert not loaded_llama
    assert grown_mib < 5  # the model's 100 MB stayed in the child


def test_a_file_llama_cpp_refuses_fails_with_its_reason(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(InferenceError, match="cannot load bad.gguf"):
        smoke_test(bad, 1)


def _fake_python(tmp_path: Path, body: str) -> str:
    script = tmp_path / "python"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return str(script)


def test_a_model_that_crashes_llama_cpp_fails_the_test_not_the_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", _fake_python(tmp_path, "kill -SEGV $$"))
    with pytest.raises(
        InferenceError, match=r"m.gguf crashed llama.cpp in the smoke test \(SIGSEGV\)"
    ):
        smoke_test(tmp_path / "m.gguf", 1)


def test_a_hanging_test_is_killed_after_its_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", _fake_python(tmp_path, "exec sleep 30"))
    with pytest.raises(InferenceError, match="took longer than 0.5 s"):
        smoke_test(tmp_path / "m.gguf", 1, timeout=0.5)


def test_a_child_that_says_nothing_readable_is_a_failure_with_its_last_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        sys, "executable", _fake_python(tmp_path, "echo 'out of memory' >&2; exit 3")
    )
    with pytest.raises(InferenceError, match="exited 3: out of memory"):
        smoke_test(tmp_path / "m.gguf", 1)
