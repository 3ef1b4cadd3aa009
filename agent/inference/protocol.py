"""Frames between the agent and its model runners: a 4-byte big-endian length, then a JSON
object; and the request and result types as JSON."""

from __future__ import annotations

import struct
from dataclasses import asdict
from typing import IO, Any

import orjson

from edgefleet.agent.inference.decoding import Piece, TokenLogprob
from edgefleet.agent.inference.model_io import Prompt, SamplingParams
from edgefleet.errors import MalformedInputError

HEADER = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024  # an embedding batch of many long vectors fits


def write_frame(out: IO[bytes], message: dict[str, Any]) -> None:
    """Write one frame and flush it."""
    body = orjson.dumps(message)
    out.write(HEADER.pack(len(body)) + body)
    out.flush()


def read_frame(source: IO[bytes]) -> dict[str, Any] | None:
    """The next frame, or None at the end of the stream (a frame cut short is the end)."""
    header = source.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise MalformedInputError(f"a runner frame of {length} bytes (at most {MAX_FRAME})")
    body = source.read(length)
    if len(body) < length:
        return None
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise MalformedInputError(f"a runner frame that is not JSON ({e})") from None
    if not isinstance(message, dict):
        raise MalformedInputError("a runner frame that is not an object")
    return message


def prompt_to_wire(prompt: Prompt) -> dict[str, Any]:
    return {"messages": [dict(m) for m in prompt.messages], "text": prompt.text}


def prompt_from_wire(doc: dict[str, Any]) -> Prompt:
    messages = tuple({str(k): str(v) for k, v in m.items()} for m in doc.get("messages") or ())
    text = doc.get("text")
    return Prompt(messages=messages, text=None if text is None else str(text))


def params_to_wire(params: SamplingParams) -> dict[str, Any]:
    return asdict(params)


def params_from_wire(doc: dict[str, Any]) -> SamplingParams:
    return SamplingParams(
        **{
            **doc,
            "stop": tuple(doc.get("stop") or ()),
            "logit_bias": tuple((int(t), float(b)) for t, b in doc.get("logit_bias") or ()),
        }
    )


def piece_to_wire(piece: Piece) -> dict[str, Any]:
    return {
        "text": piece.text,
        "stopped": piece.stopped,
        "logprobs": [
            [lp.text, lp.raw.hex(), lp.logprob, [[t, r.hex(), p] for t, r, p in lp.top]]
            for lp in piece.logprobs
        ],
    }


def answer_from_wire(doc: dict[str, Any]) -> tuple[Piece, tuple[int, int, str, int]]:
    """One token's answer from a runner: the piece and the running counts (prompt tokens,
    completion tokens, finish reason, cached tokens); MalformedInputError if it is not."""
    try:
        piece = piece_from_wire(doc["piece"])
        t = doc["totals"]
        counts = (
            int(t["prompt_tokens"]),
            int(t["completion_tokens"]),
            str(t["finish_reason"]),
            int(t["cached_tokens"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise MalformedInputError(f"a runner answer that is not a token ({e!r})") from None
    return piece, counts


def piece_from_wire(doc: dict[str, Any]) -> Piece:
    return Piece(
        text=str(doc["text"]),
        stopped=bool(doc["stopped"]),
        logprobs=[
            TokenLogprob(
                str(text),
                bytes.fromhex(raw),
                float(logprob),
                tuple((str(t), bytes.fromhex(r), float(p)) for t, r, p in top),
            )  # fmt: skip
            for text, raw, logprob, top in doc["logprobs"]
        ],
    )
