"""`models quantize` says which step of how many it is on, and when the run should end."""

from __future__ import annotations

import io
import re

from edgefleet.controller.ctl.quantize import StepProgress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_steps_and_an_eta_when_not_a_terminal() -> None:
    out = io.StringIO()
    progress = StepProgress(3, out)
    for stage in ("quantize q4_0", "measure source", "measure q4_0"):
        progress(stage, 1, 2)
        progress(stage, 2, 2)
    lines = out.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "[1/3] quantize q4_0",
        "[2/3] measure source",
        "[3/3] measure q4_0",
    ]
    assert re.search(r", ETA \d+s$", lines[0]) and "ETA" not in lines[2]  # done: no ETA


def test_a_terminal_line_is_rewritten_in_place() -> None:
    out = _Terminal()
    progress = StepProgress(2, out)
    progress("quantize q8_0", 5, 10)
    progress("quantize q8_0", 10, 10)
    text = out.getvalue()
    assert text.startswith("\r[1/2] quantize q8_0: 5/10") and text.endswith("\n")
    assert "\\x0d" not in text
