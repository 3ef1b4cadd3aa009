"""Shell completion scripts for both commands, generated from their parsers."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from edgefleet.agent.cli.main import main as agent_main
from edgefleet.controller.ctl.main import main as ctl_main


@pytest.mark.parametrize(
    ("main", "words"),
    [(ctl_main, ("quantize", "rollout", "--max-ppl-increase")), (agent_main, ("enroll", "bench"))],
)
def test_bash_completion_is_valid_and_knows_the_commands(
    main: object, words: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    assert all(word in script for word in words)
    if shutil.which("bash"):
        subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_an_unknown_shell_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        ctl_main(["completion", "cmd.exe"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_the_shells_offered_are_shtabs() -> None:
    """The parser names the shells without importing shtab (it loads only to print):
    each is one shtab writes for (newer shtab releases add fish and powershell)."""
    import shtab

    from edgefleet.cli_support import COMPLETION_SHELLS

    assert set(COMPLETION_SHELLS) <= set(shtab.SUPPORTED_SHELLS)
