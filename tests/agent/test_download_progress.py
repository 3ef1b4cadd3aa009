"""The rate a download reports: measured over windows of a few seconds, smoothed, reset
by a pause or a restart, and the time left it gives."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from edgefleet.agent.app.database import AgentDatabase
from edgefleet.agent.sync.progress import ProgressBoard, load_board
from edgefleet.output import download

MIB = 1 << 20


@dataclass(frozen=True)
class _Manifest:
    name: str = "m"
    version: str = "2"
    length: int = 100 * MIB

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@pytest.fixture
def board(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ProgressBoard:
    clock = [1000.0]
    monkeypatch.setattr("time.monotonic", lambda: clock[0])  # the board's clock
    made = ProgressBoard(AgentDatabase(tmp_path / "agent.db"))
    made.clock = clock  # type: ignore[attr-defined]  # the test moves it
    return made


def _at(board: ProgressBoard, seconds: float, received: int, state: str = "downloading") -> int:
    board.clock[0] = 1000.0 + seconds  # type: ignore[attr-defined]
    board.update(_Manifest(), received, state)  # type: ignore[arg-type]
    [item] = board.items()
    return item.bytes_per_second


def test_rate_is_measured_per_window_and_smoothed(board: ProgressBoard) -> None:
    assert _at(board, 0, 0) == 0
    assert _at(board, 1, 4 * MIB) == 0  # a window is at least 2 s
    assert _at(board, 2, 8 * MIB) == 4 * MIB  # 8 MiB in 2 s
    assert _at(board, 4, 12 * MIB) == 3 * MIB  # window 2 MiB/s, smoothed with 4 MiB/s
    [item] = board.items()
    assert item.seconds_left == pytest.approx(88 * MIB / (3 * MIB))
    assert download(item) == "m@2 downloading 12 %, 3.0 MiB/s, ETA 29s"


def test_a_pause_shows_no_rate_and_the_next_transfer_measures_afresh(
    board: ProgressBoard,
) -> None:
    _at(board, 0, 0)
    assert _at(board, 2, 8 * MIB) == 4 * MIB
    assert _at(board, 3, 8 * MIB, "paused") == 0
    [item] = board.items()
    assert item.seconds_left is None and download(item) == "m@2 paused 8 %"
    assert _at(board, 60, 8 * MIB) == 0  # the pause's minute is not in the rate
    assert _at(board, 62, 9 * MIB) == MIB // 2


def test_a_restart_from_a_lower_offset_resets_the_rate(board: ProgressBoard) -> None:
    _at(board, 0, 50 * MIB)
    assert _at(board, 2, 54 * MIB) == 2 * MIB
    assert _at(board, 3, 10 * MIB) == 0  # a repair starts again lower: no negative rate
    assert _at(board, 5, 14 * MIB) == 2 * MIB


def test_the_saved_board_keeps_the_rate_for_status(board: ProgressBoard) -> None:
    _at(board, 0, 0)
    _at(board, 2.5, 5 * MIB)  # saved: more than two seconds since the last save
    [saved] = load_board(board.db)
    assert saved.bytes_per_second == 2 * MIB and saved.received == 5 * MIB
