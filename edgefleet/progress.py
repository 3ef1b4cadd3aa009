"""Progress of a long command (an upload, an export): a bar on a terminal (tqdm, loaded
only then), one JSON line per half second with ``-o json``, nothing otherwise. Always on
stderr: stdout holds the command's output alone."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from edgefleet.terminal import printable, raw_stderr

JSON_EVERY_SECONDS = 0.5


class Progress:
    """Count done units of ``total`` (bytes by default) and show them as asked."""

    def __init__(self, what: str, total: int, output: str = "table", unit: str = "B") -> None:
        self.what, self.total, self.unit, self.done = what, total, unit, 0
        self.json = output == "json"
        self._bar: Any = None
        self._said = 0.0
        if not self.json and output != "yaml" and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                desc=printable(what),
                unit=unit,
                unit_scale=True,
                unit_divisor=1024,
                file=raw_stderr(),  # its \r must stay \r
                leave=True,
            )

    def update(self, count: int) -> None:
        """``count`` more units are done."""
        self.done += count
        if self._bar is not None:
            self._bar.update(count)
        elif self.json and time.monotonic() - self._said >= JSON_EVERY_SECONDS:
            self._line()

    def close(self) -> None:
        """The operation ended (the bar goes; a JSON line says where it ended)."""
        if self._bar is not None:
            self._bar.close()
        elif self.json:
            self._line()

    def _line(self) -> None:
        self._said = time.monotonic()
        line = {"progress": self.what, "done": self.done, "total": self.total, "unit": self.unit}
        print(json.dumps(line), file=sys.stderr, flush=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
