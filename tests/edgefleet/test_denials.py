"""Denials counted per source: the first of each window is recorded, floods are limited."""

from __future__ import annotations

from edgefleet.denials import DenialWindow


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_only_the_first_denial_of_a_window_is_recorded_with_the_previous_count() -> None:
    """A flood of 100 denials records one; the next window's record says 99 came before."""
    clock = Clock()
    window = DenialWindow(60, limit=10, clock=clock)
    outcomes = [window.deny("10.0.0.1") for _ in range(100)]
    assert [o.record for o in outcomes].count(True) == 1
    assert outcomes[10].limited and not outcomes[9].limited
    clock.now = 61
    first = window.deny("10.0.0.1")
    assert first.record and first.earlier == 99 and not first.limited


def test_sources_are_counted_apart_and_memory_is_bounded() -> None:
    """One source's flood does not limit another; the oldest sources are forgotten."""
    window = DenialWindow(60, limit=2, max_sources=3, clock=Clock())
    for _ in range(5):
        window.deny("a")
    assert window.limited("a") and not window.limited("b")
    assert window.deny("b").record
    for source in ("c", "d", "e"):
        window.deny(source)
    assert not window.limited("a")  # forgotten: at most 3 sources are tracked
