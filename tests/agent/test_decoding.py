"""The per-request output assembler: stop strings never leak, UTF-8 split across tokens
is whole, and logprob tokens always concatenate to the returned text."""

from __future__ import annotations

import random

from hypothesis import example, given, settings
from hypothesis import strategies as st

from edgefleet.agent.inference.decoding import OutputAssembler


def _run(tokens: list[bytes], stop: tuple[str, ...]) -> tuple[str, list[str], str]:
    """(final text, logprob token texts, everything streamed) for a token sequence."""
    out = OutputAssembler(stop)
    streamed, entries = "", []
    for raw in tokens:
        piece = out.push(raw, -0.5)
        streamed += piece.text
        entries += [e.text for e in piece.logprobs]
        if piece.stopped:
            break
    else:
        tail = out.finish()
        streamed += tail.text
        entries += [e.text for e in tail.logprobs]
    return out.text, entries, streamed


def test_a_stop_string_split_across_tokens_never_leaks() -> None:
    text, entries, streamed = _run(
        [b"Hello", b" wor", b"ld<", b"|e", b"nd|>", b"after"], ("<|end|>",)
    )
    assert text == streamed == "Hello world"
    assert "".join(entries) == text


def test_a_partial_stop_string_is_released_once_it_cannot_match() -> None:
    out = OutputAssembler(("STOP",))
    assert out.push(b"ab ", -1.0).text == "ab "
    assert out.push(b"ST", -1.0).text == ""  # "ST" could begin STOP: held (whole tokens)
    assert out.push(b"AR", -1.0).text == "STAR"  # it did not
    assert out.finish().text == "" and out.text == "ab STAR"


def test_utf8_split_across_tokens_comes_whole_with_the_completing_token() -> None:
    e_acute = "é".encode()
    text, entries, _ = _run([b"caf", e_acute[:1], e_acute[1:], b"!"], ())
    assert text == "café!"
    assert entries == ["caf", "", "é", "!"]


@settings(max_examples=300, deadline=None)
@example("10", ["0", "10"], 0)  # the later-listed stop string starts earlier (found in CI)
@given(
    st.text(min_size=0, max_size=40),
    st.lists(st.text(min_size=1, max_size=4), max_size=3),
    st.integers(0, 2**32),
)
def test_any_text_any_split_any_stop(text: str, stops: list[str], seed: int) -> None:
    """Whatever the split into tokens: the result is the text up to the first stop
    string, never more; streamed pieces and logprob tokens both concatenate to it."""
    raw = text.encode()
    rng = random.Random(seed)
    cuts = (
        sorted(rng.sample(range(1, len(raw)), min(len(raw) - 1, rng.randint(0, 8))))
        if len(raw) > 1
        else []
    )
    tokens = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True) if raw[a:b]]
    result, entries, streamed = _run(tokens, tuple(stops))
    found = [text.find(s) for s in stops if s and text.find(s) >= 0]
    expected = text[: min(found)] if found else text
    assert result == streamed == expected
    assert "".join(entries) == expected
