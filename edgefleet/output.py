"""One output contract for both command-line tools.

Every list, show and status command takes ``-o table|wide|json|yaml``: ``table`` (the
default) is aligned columns under upper-case headers, ``wide`` adds columns, ``json`` and
``yaml`` print the documented object (docs/cli.md): snake_case keys, ids typed as the API
types them, times as the API gives them (UTC, ``YYYY-MM-DDTHH:MM:SSZ``). Commands that
create something take ``-o name`` to print the created id alone. ``--json`` is kept as
another way to say ``-o json``.

Times in tables are local, with their zone and their age: ``2026-11-29 04:12 UTC (3m ago)``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from edgefleet.fleet import DownloadProgress

T = TypeVar("T")
OUTPUTS = ("table", "wide", "json", "yaml")
NAME = "name"


def add_output_option(parser: argparse.ArgumentParser, *, name: bool = False) -> None:
    """``-o/--output`` (with ``name`` for commands that create something) and ``--json``."""
    choices = (*OUTPUTS, NAME) if name else OUTPUTS
    parser.add_argument(
        "-o",
        "--output",
        choices=choices,
        default="table",
        help=f"{', '.join(choices)} (default table)",
    )
    parser.add_argument(
        "--json", dest="output", action="store_const", const="json", help="the same as -o json"
    )


class Column(Generic[T]):
    """One column of a table: its header, how a row's cell reads, and whether only
    ``-o wide`` shows it. (A plain class: the CLIs build their columns at start-up, and a
    dataclass would cost them the import of ``dataclasses`` and ``inspect``.)"""

    __slots__ = ("cell", "header", "wide")

    def __init__(self, header: str, cell: Callable[[T], object], wide: bool = False) -> None:
        self.header, self.cell, self.wide = header, cell, wide


def table(rows: Sequence[T], columns: Sequence[Column[T]], wide: bool = False) -> str:
    """Aligned columns, two spaces apart; the last column is not padded."""
    shown = [c for c in columns if wide or not c.wide]
    cells = [[c.header.upper() for c in shown]]
    cells += [[_text(c.cell(row)) for c in shown] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(shown))]
    return "\n".join(
        "  ".join(
            cell if i == len(line) - 1 else cell.ljust(widths[i]) for i, cell in enumerate(line)
        ).rstrip()
        for line in cells
    )


def _text(value: object) -> str:
    if value is None or value == "":
        return "-"
    return str(value).replace("\n", " ")


def print_documents(document: object, output: str) -> None:
    """``document`` (an object or a list of them) as JSON or YAML on stdout."""
    if output == "yaml":
        import yaml  # loaded only for -o yaml

        sys.stdout.write(
            yaml.safe_dump(document, sort_keys=False, allow_unicode=True, default_flow_style=False)
        )
    else:
        print(json.dumps(document, indent=2, ensure_ascii=False))


def print_list(
    items: Sequence[T],
    columns: Sequence[Column[T]],
    output: str,
    document: Callable[[T], object],
    empty: str = "",
) -> None:
    """A list command's output in the format asked for."""
    if output in ("json", "yaml"):
        print_documents([document(item) for item in items], output)
    elif not items and empty:
        print(empty, file=sys.stderr)
    else:
        print(table(items, columns, wide=output == "wide"))


def labels(values: Mapping[str, str]) -> str:
    """``k=v,k2=v2`` sorted, or ``-``."""
    return ",".join(f"{k}={v}" for k, v in sorted(values.items())) or "-"


def parse_moment(value: str | datetime | None) -> datetime | None:
    """An API time (``YYYY-MM-DDTHH:MM:SSZ`` or ISO 8601 with a zone) as an aware datetime."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def when(value: str | datetime | None, now: datetime | None = None) -> str:
    """A time for a table: local time with its zone, and how long ago (or from now)."""
    moment = parse_moment(value)
    if moment is None:
        return str(value) if value else "never"
    local = moment.astimezone()
    seconds = ((now or datetime.now(UTC)) - moment).total_seconds()
    relative = f"{age(seconds)} ago" if seconds >= 0 else f"in {age(-seconds)}"
    return f"{local:%Y-%m-%d %H:%M} {local.tzname()} ({relative})"


def age(seconds: float) -> str:
    """``45s``, ``3m``, ``2h``, ``5d``: the largest whole unit, as kubectl shows ages."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def rate(bytes_per_second: float) -> str:
    """``850 KiB/s``, ``1.2 MiB/s``."""
    if bytes_per_second >= 1048576:
        return f"{bytes_per_second / 1048576:.1f} MiB/s"
    return f"{bytes_per_second / 1024:.0f} KiB/s"


def download(d: DownloadProgress, *, reason: bool = True) -> str:
    """One download as both CLIs show it: ``tiny@1 downloading 41 %, 1.2 MiB/s, ETA 3m``
    (rate and time left while it moves; the reason, if asked, when it is paused or
    refused)."""
    line = f"{d.name}@{d.version} {d.state}"
    if d.total:
        line += f" {100 * d.received // d.total} %"
    left = d.seconds_left
    if left is not None:
        line += f", {rate(d.bytes_per_second)}, ETA {age(left)}"
    if reason and d.reason:
        line += f": {d.reason}"
    return line
