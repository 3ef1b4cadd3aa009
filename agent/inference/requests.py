"""Validation of OpenAI-style request bodies into prompts and sampling parameters."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.inference.engine import Prompt, SamplingParams

ROLES = frozenset({"system", "user", "assistant"})
MAX_MESSAGES = 256
MAX_STOP = 4


class ApiError(Exception):
    """An error answered in OpenAI's JSON error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = (
            status,
            message,
            kind,
            param,
            code,
        )

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", param)


@dataclass(frozen=True)
class GenerationRequest:
    """A validated request of either endpoint."""

    model: str
    prompt: Prompt
    params: SamplingParams
    stream: bool


def _number(body: Mapping[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
        raise bad_request(f"{key} must be a number between {low} and {high}", key)
    return float(value)


def _messages(body: Mapping[str, Any]) -> Prompt:
    messages = body.get("messages")
    if not isinstance(messages, list) or not 0 < len(messages) <= MAX_MESSAGES:
        raise bad_request(f"messages must be a list of 1 to {MAX_MESSAGES} messages", "messages")
    parsed = []
    for message in messages:
        if (
            not isinstance(message, dict)
            or not isinstance(message.get("role"), str)
            or message["role"] not in ROLES
            or not isinstance(message.get("content"), str)
        ):
            raise bad_request(
                "each message needs a role (system, user, assistant) and string content", "messages"
            )
        parsed.append({"role": message["role"], "content": message["content"]})
    return Prompt(messages=tuple(parsed))


def _text(body: Mapping[str, Any]) -> Prompt:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise bad_request("prompt must be a string (one prompt per request)", "prompt")
    for unsupported in ("suffix", "echo", "best_of", "logprobs"):
        if body.get(unsupported):
            raise bad_request(f"{unsupported} is not supported", unsupported)
    return Prompt(text=prompt)


def parse_request(body: Any, chat: bool, max_tokens_limit: int) -> GenerationRequest:
    """Validate a chat or text completion request; raise ApiError(400) naming the bad field."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("model is required", "model")
    prompt = _messages(body) if chat else _text(body)
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    if max_tokens is None:
        max_tokens = min(256, max_tokens_limit) if chat else 16
    if (
        not isinstance(max_tokens, int)
        or isinstance(max_tokens, bool)
        or not 1 <= max_tokens <= max_tokens_limit
    ):
        raise bad_request(
            f"max_tokens must be an integer from 1 to {max_tokens_limit}", "max_tokens"
        )
    stop = body.get("stop") or ()
    if isinstance(stop, str):
        stop = (stop,)
    if (
        not isinstance(stop, list | tuple)
        or len(stop) > MAX_STOP
        or not all(isinstance(s, str) for s in stop)
    ):
        raise bad_request(f"stop must be a string or a list of up to {MAX_STOP} strings", "stop")
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise bad_request("seed must be an integer", "seed")
    if body.get("n", 1) != 1:
        raise bad_request("only n=1 is supported", "n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("stream must be a boolean", "stream")
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 0.8, 0.0, 2.0),
        top_p=_number(body, "top_p", 0.95, 0.0, 1.0),
        stop=tuple(stop),
        seed=seed,
    )
    return GenerationRequest(model, prompt, params, stream)
