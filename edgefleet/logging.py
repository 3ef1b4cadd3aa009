"""structlog set-up: JSON lines for services, console rendering for CLIs."""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

Renderer = Literal["json", "console"]


def _current_stderr(*_args: object) -> structlog.PrintLogger:
    """A logger on whatever ``sys.stderr`` is when the event is logged (not when logging
    was configured: a replaced and closed stream must not break later events)."""
    return structlog.PrintLogger(file=sys.stderr)


def configure_logging(renderer: Renderer = "json", level: str = "INFO") -> None:
    """Route structlog events to stderr with stable keys (timestamp, level, event)."""
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
