"""Per-request output state, independent of the engine: token bytes become text (UTF-8
split across tokens is held until whole), stop strings end the text (a stop string split
across tokens never leaks: a tail that could begin one is held back), and each token's
log-probability travels with exactly the text it produced, so the tokens of `logprobs`
always concatenate to the returned content.

The engine feeds :meth:`OutputAssembler.push` one sampled token at a time and forwards
what it releases; whichever engine samples (one context per slot today, a batched decode
loop tomorrow) keeps one assembler per request.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TokenLogprob:
    """One sampled token as OpenAI's `logprobs` reports it.

    ``text`` is the text this token released (empty while a UTF-8 character is still
    incomplete; the whole character comes with the token that completes it); ``raw`` is
    the token's own bytes."""

    text: str
    raw: bytes
    logprob: float
    top: tuple[tuple[str, bytes, float], ...] = ()

    def as_chat(self) -> dict[str, object]:
        """The chat completions shape of one entry."""
        return {
            "token": self.text,
            "logprob": self.logprob,
            "bytes": list(self.raw),
            "top_logprobs": [
                {"token": t, "logprob": lp, "bytes": list(raw)} for t, raw, lp in self.top
            ],
        }


@dataclass
class Piece:
    """Text made final by one push (possibly empty), with its tokens' log-probabilities."""

    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    stopped: bool = False  # a stop string was found: generation must end


class OutputAssembler:
    """Token bytes in, final text out, with stop strings and logprobs kept consistent."""

    def __init__(self, stop: tuple[str, ...] = ()) -> None:
        self.stop = tuple(s for s in stop if s)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending: list[tuple[str, TokenLogprob | None]] = []  # held back, whole tokens
        self.text = ""  # everything released so far
        self.stopped = False

    def push(
        self,
        raw: bytes,
        logprob: float | None = None,
        top: tuple[tuple[str, bytes, float], ...] = (),
    ) -> Piece:
        """Add one sampled token; release the text that can no longer be part of a stop."""
        if self.stopped:
            return Piece(stopped=True)
        piece = self._decoder.decode(raw)
        entry = None if logprob is None else TokenLogprob(piece, raw, logprob, top)
        self._pending.append((piece, entry))
        held = "".join(p for p, _ in self._pending)
        found = [at for at in (held.find(stop) for stop in self.stop) if at >= 0]
        if found:  # the earliest stop string ends the text, whichever is listed first
            self.stopped = True
            return self._release(min(found), final=True)
        return self._release(len(held) - self._stop_prefix_len(held), final=False)

    def finish(self) -> Piece:
        """The end of generation: everything still held is final (no stop string came).
        A UTF-8 character cut off by the length limit is dropped, never sent as U+FFFD."""
        held = sum(len(p) for p, _ in self._pending)
        return self._release(held, final=True)

    def _stop_prefix_len(self, held: str) -> int:
        """The longest tail of ``held`` that is the start of some stop string."""
        longest = 0
        for stop in self.stop:
            for n in range(min(len(stop) - 1, len(held)), longest, -1):
                if held.endswith(stop[:n]):
                    longest = n
                    break
        return longest

    def _release(self, upto: int, final: bool) -> Piece:
        """Release whole pending tokens whose text lies within the first ``upto`` characters;
        when ``final``, also the part of the token that straddles ``upto`` (cut there)."""
        out = Piece(stopped=self.stopped)
        used = 0
        keep_from = len(self._pending)
        for i, (piece, entry) in enumerate(self._pending):
            if used + len(piece) <= upto:
                used += len(piece)
                out.text += piece
                if entry is not None:
                    out.logprobs.append(entry)
                continue
            if final:
                cut = piece[: upto - used]
                out.text += cut
                if entry is not None and cut:
                    out.logprobs.append(TokenLogprob(cut, entry.raw, entry.logprob, entry.top))
                keep_from = len(self._pending)
            else:
                keep_from = i
            break
        self._pending = [] if final else self._pending[keep_from:]
        self.text += out.text
        return out
