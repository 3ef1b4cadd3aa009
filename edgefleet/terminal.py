"""Text for a terminal: control characters from devices, model files or requests never
reach it raw (an escape sequence in a hostname could rewrite the operator's screen).

Both CLIs write through ``PrintableStream``: every control character but newline and tab
(C0, DEL, C1, and the bidirectional overrides that reorder what a line appears to say) is
shown escaped, as ``\\x1b`` or ``\\u202e``. JSON output is unaffected (JSON escapes them).
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

_KEEP = {"\n", "\t"}
_CONTROLS = [
    *range(0x00, 0x20),
    *range(0x7F, 0xA0),
    *range(0x202A, 0x202F),
    *range(0x2066, 0x206A),
]
_ESCAPES = {
    code: (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    for code in _CONTROLS
    if chr(code) not in _KEEP
}


def printable(text: str) -> str:
    """``text`` with every control character but newline and tab escaped."""
    return text.translate(_ESCAPES)


class PrintableStream:
    """Wraps a text stream (stdout, stderr) so that what is written is `printable`."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(printable(text))
        return len(text)

    @property
    def raw(self) -> TextIO:
        """The stream itself, for what draws with control characters of its own (a
        progress bar's carriage returns) and prints nothing from outside."""
        return self._stream

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def raw_stderr() -> TextIO:
    """stderr itself, under the `PrintableStream` the CLIs wrap it in: for what draws with
    its own control characters (a progress bar's carriage returns)."""
    stream: Any = sys.stderr
    raw: TextIO = stream.raw if isinstance(stream, PrintableStream) else stream
    return raw
