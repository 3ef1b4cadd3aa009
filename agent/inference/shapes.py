"""OpenAI's response shapes for chat and text completions: whole answers, stream chunks,
usage and logprobs. Pure functions of a finished (or partial) generation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from edgefleet.agent.inference.api_errors import ApiError
from edgefleet.agent.inference.decoding import TokenLogprob
from edgefleet.agent.inference.model_io import Generation
from edgefleet.agent.inference.requests import GenerationRequest, tool_calls_of
from edgefleet.agent.inference.structured import validate


@dataclass(frozen=True)
class Answer:
    """What the model answered, as the caller receives it."""

    content: str | None
    tool_calls: list[dict[str, Any]] | None
    finish_reason: str


def output_invalid(why: str) -> ApiError:
    """Constrained output that does not hold its grammar or schema: an error, never a 200."""
    return ApiError(500, why, "server_error", code="output_invalid")


def answer_of(req: GenerationRequest, result: Generation) -> Answer:
    """The caller's answer: free text as generated; constrained output parsed, checked
    against its schema, tool calls taken apart. Output cut short by max_tokens is returned
    as generated with finish_reason "length", as OpenAI does."""
    if not req.constrained or result.finish_reason != "stop":
        if req.tools is not None:  # cut short: never hand out the tool format's raw JSON
            return Answer(None, None, result.finish_reason)
        return Answer(result.text, None, result.finish_reason)
    try:
        value = json.loads(result.text)
    except json.JSONDecodeError as e:
        raise output_invalid(f"the constrained output is not JSON ({e.msg})") from e
    if req.tools is not None:
        calls = tool_calls_of(value)
        if calls is None:
            return Answer(str(value.get("response", "")), None, "stop")
        schemas = {t.name: t.parameters for t in req.tools.offered}
        for call in calls:
            name = call["function"]["name"]
            why = validate(json.loads(call["function"]["arguments"]), schemas[name])
            if why is not None:
                raise output_invalid(f"tool call {name}: arguments do not hold its schema: {why}")
        return Answer(None, calls, "tool_calls")
    if req.output.schema is not None:
        why = validate(value, req.output.schema)
        if why is not None:
            raise output_invalid(f"the output does not hold the schema: {why}")
    if not isinstance(value, dict):
        raise output_invalid("the output is not a JSON object")
    return Answer(result.text, None, "stop")


def usage(result: Generation) -> dict[str, Any]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": result.cached_tokens},
    }


def chat_logprobs(entries: list[TokenLogprob]) -> dict[str, Any]:
    return {"content": [e.as_chat() for e in entries], "refusal": None}


def text_logprobs(entries: list[TokenLogprob], offset: int = 0) -> dict[str, Any]:
    """The completions endpoint's (legacy) logprobs shape."""
    offsets, at = [], offset
    for e in entries:
        offsets.append(at)
        at += len(e.text)
    return {
        "tokens": [e.text for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [{t: lp for t, _, lp in e.top} for e in entries],
        "text_offset": offsets,
    }


def whole(
    req: GenerationRequest, chat: bool, request_id: str, created: int, result: Generation
) -> dict[str, Any]:
    """The non-streamed response body."""
    answer = answer_of(req, result)
    if chat:
        message: dict[str, Any] = {"role": "assistant", "content": answer.content}
        if answer.tool_calls is not None:
            message["tool_calls"] = answer.tool_calls
        choice: dict[str, Any] = {
            "index": 0,
            "message": message,
            "logprobs": chat_logprobs(result.logprobs) if req.params.logprobs else None,
            "finish_reason": answer.finish_reason,
        }
    else:
        choice = {
            "index": 0,
            "text": answer.content,
            "logprobs": text_logprobs(result.logprobs) if req.params.logprobs else None,
            "finish_reason": answer.finish_reason,
        }
    return {
        "id": request_id,
        "object": "chat.completion" if chat else "text_completion",
        "created": created,
        "model": req.model,
        "choices": [choice],
        "usage": usage(result),
    }


class ChunkWriter:
    """Server-sent events of one streamed response; constant fields encoded once."""

    def __init__(self, req: GenerationRequest, chat: bool, request_id: str, created: int) -> None:
        self.req, self.chat = req, chat
        fields = {
            "id": request_id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": req.model,
        }
        self._prefix = json.dumps(fields)[:-1].encode("utf-8")
        self._text_offset = 0

    def _event(self, choices: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> bytes:
        tail = {"choices": choices, **(extra or {})}
        if self.req.include_usage and "usage" not in tail:
            tail["usage"] = None
        return b"data: " + self._prefix + b", " + json.dumps(tail)[1:].encode("utf-8") + b"\n\n"

    def role(self) -> bytes:
        return self._event(
            [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ]
        )

    def content(self, text: str, entries: list[TokenLogprob]) -> bytes:
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "delta": {"content": text},
                "logprobs": chat_logprobs(entries) if self.req.params.logprobs else None,
                "finish_reason": None,
            }
        else:
            choice = {
                "index": 0,
                "text": text,
                "logprobs": text_logprobs(entries, self._text_offset)
                if self.req.params.logprobs
                else None,
                "finish_reason": None,
            }
            self._text_offset += len(text)
        return self._event([choice])

    def tool_calls(self, calls: list[dict[str, Any]]) -> bytes:
        """Each call in two deltas, as OpenAI streams them: id, type and name first, then
        the arguments (the SDK concatenates argument fragments by index)."""
        data = b""
        for index, call in enumerate(calls):
            head = {
                "index": index,
                "id": call["id"],
                "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""},
            }
            body = {"index": index, "function": {"arguments": call["function"]["arguments"]}}
            for part in (head, body):
                delta = {"tool_calls": [part]}
                data += self._event(
                    [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]
                )
        return data

    def finish(self, reason: str) -> bytes:
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "delta": {},
                "logprobs": None,
                "finish_reason": reason,
            }
        else:
            choice = {"index": 0, "text": "", "logprobs": None, "finish_reason": reason}
        return self._event([choice])

    def usage(self, result: Generation) -> bytes:
        return self._event([], {"usage": usage(result)})

    @staticmethod
    def error(error: ApiError) -> bytes:
        """An error after the stream began: the SDK raises it as an APIError."""
        return b"data: " + json.dumps(error.body()).encode("utf-8") + b"\n\n"

    @staticmethod
    def done() -> bytes:
        return b"data: [DONE]\n\n"
