"""structlog set-up: JSON lines for services under systemd or in containers, readable
lines on a terminal and for CLIs. Everything goes to stderr: stdout is the command's."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Literal

from edgefleet.errors import ConfigError

if TYPE_CHECKING:
    import structlog

Renderer = Literal["json", "console"]
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMAT_ENV = "EDGEFLEET_LOG_FORMAT"


def service_renderer(choice: str | None) -> Renderer:
    """What a service (`serve`, `run`) logs in: ``json`` or ``console`` as asked (flag,
    else ``EDGEFLEET_LOG_FORMAT``); ``auto`` is readable lines on a terminal and JSON
    lines anywhere else (journald, which sets JOURNAL_STREAM; a container; a file)."""
    choice = (choice or os.environ.get(LOG_FORMAT_ENV) or "auto").lower()
    if choice == "json":
        return "json"
    if choice == "console":
        return "console"
    if choice != "auto":
        raise ConfigError(f"{LOG_FORMAT_ENV}={choice!r} is not one of {', '.join(LOG_FORMATS)}")
    interactive = sys.stderr.isatty() and "JOURNAL_STREAM" not in os.environ
    return "console" if interactive else "json"


def add_service_log_options(parser: argparse.ArgumentParser) -> None:
    """``--log-level`` and ``--log-format`` of `serve` and `run`."""
    parser.add_argument(
        "--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS, help="default INFO"
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help=f"json, console, or auto (default; env {LOG_FORMAT_ENV}): readable on a "
        "terminal, JSON lines under systemd and in containers",
    )


def _current_stderr(*_args: object) -> structlog.PrintLogger:
    """A logger on whatever ``sys.stderr`` is when the event is logged (not when logging
    was configured: a replaced and closed stream must not break later events)."""
    import structlog

    return structlog.PrintLogger(file=sys.stderr)


def configure_logging(renderer: Renderer = "json", level: str = "INFO") -> None:
    """Route structlog events to stderr with stable keys (timestamp, level, event).
    (structlog is imported here: a command that never logs does not pay for it.)"""
    import logging

    import structlog

    numeric_level = logging.getLevelName(level.upper())
    if not isinstance(numeric_level, int):
        numeric_level = logging.INFO
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    if renderer == "json":
        processors.append(structlog.processors.JSONRenderer(sort_keys=True))
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=_current_stderr,
        cache_logger_on_first_use=False,
    )
