"""`serve` and `run` log readable lines on a terminal and JSON lines under systemd, in
containers and to files, unless told otherwise; an unknown format is refused."""

from __future__ import annotations

import pytest

from edgefleet.errors import ConfigError
from edgefleet.logging import LOG_FORMAT_ENV, service_renderer


class _Terminal:
    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty

    def write(self, text: str) -> int:
        return len(text)


@pytest.mark.parametrize(
    "tty, journal, expected",
    [(True, False, "console"), (False, False, "json"), (True, True, "json")],
)
def test_auto(monkeypatch: pytest.MonkeyPatch, tty: bool, journal: bool, expected: str) -> None:
    monkeypatch.setattr("sys.stderr", _Terminal(tty))
    monkeypatch.delenv(LOG_FORMAT_ENV, raising=False)
    if journal:
        monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    else:
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert service_renderer(None) == expected
    assert service_renderer("auto") == expected


def test_flag_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stderr", _Terminal(True))
    monkeypatch.setenv(LOG_FORMAT_ENV, "json")
    assert service_renderer(None) == "json"
    assert service_renderer("console") == "console"
    monkeypatch.setenv(LOG_FORMAT_ENV, "xml")
    with pytest.raises(ConfigError, match="EDGEFLEET_LOG_FORMAT='xml' is not one of"):
        service_renderer(None)
