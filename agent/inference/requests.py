"""Validation of OpenAI-style request bodies into prompts and sampling parameters.

Every parameter of OpenAI's chat and text completion requests is in ``PARAMETERS`` with
what the agent does with it: ``supported``, ``ignored`` (it changes nothing about the
output: ``user``, ``metadata`` …) or ``refused`` (a 400 naming it: honouring it silently
would hand back something other than what was asked). A parameter OpenAI does not know
is refused as OpenAI refuses it. docs/api.md renders the same table; a test walks it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgefleet.agent.inference.api_errors import bad_request
from edgefleet.agent.inference.model_io import Prompt, SamplingParams
from edgefleet.agent.inference.structured import (
    ToolSetup,
    check_schema,
    compile_grammar,
    parse_tools,
)

MAX_MESSAGES = 256
MAX_STOP = 4
MAX_TOP_LOGPROBS = 20
MAX_LOGIT_BIAS = 300

SUPPORTED, IGNORED, REFUSED = "supported", "ignored", "refused"

# parameter -> (chat completions, text completions): supported | ignored | refused | None
# (None: not a parameter of that endpoint, refused as unknown)
PARAMETERS: dict[str, tuple[str | None, str | None]] = {
    "model": (SUPPORTED, SUPPORTED),
    "messages": (SUPPORTED, None),
    "prompt": (None, SUPPORTED),
    "max_tokens": (SUPPORTED, SUPPORTED),
    "max_completion_tokens": (SUPPORTED, None),
    "temperature": (SUPPORTED, SUPPORTED),
    "top_p": (SUPPORTED, SUPPORTED),
    "stop": (SUPPORTED, SUPPORTED),
    "seed": (SUPPORTED, SUPPORTED),
    "presence_penalty": (SUPPORTED, SUPPORTED),
    "frequency_penalty": (SUPPORTED, SUPPORTED),
    "logit_bias": (SUPPORTED, SUPPORTED),
    "logprobs": (SUPPORTED, SUPPORTED),
    "top_logprobs": (SUPPORTED, None),
    "n": (SUPPORTED, SUPPORTED),  # n=1 only; n>1 is a 400
    "stream": (SUPPORTED, SUPPORTED),
    "stream_options": (SUPPORTED, SUPPORTED),
    "tools": (SUPPORTED, None),
    "tool_choice": (SUPPORTED, None),
    "parallel_tool_calls": (SUPPORTED, None),
    "response_format": (SUPPORTED, None),
    "user": (IGNORED, IGNORED),
    "metadata": (IGNORED, None),
    "store": (IGNORED, None),
    "service_tier": (IGNORED, None),
    "safety_identifier": (IGNORED, None),
    "prompt_cache_key": (IGNORED, None),
    "reasoning_effort": (IGNORED, None),  # no model on a gateway reasons on request
    "verbosity": (IGNORED, None),
    "echo": (None, REFUSED),  # false is accepted: it is the default
    "suffix": (None, REFUSED),
    "best_of": (None, REFUSED),  # 1 is accepted
    "functions": (REFUSED, None),  # deprecated: use tools
    "function_call": (REFUSED, None),
    "audio": (REFUSED, None),
    "modalities": (REFUSED, None),  # ["text"] is accepted
    "prediction": (REFUSED, None),
    "web_search_options": (REFUSED, None),
}
# values of a refused parameter that ask for nothing beyond the default
HARMLESS_VALUES: dict[str, tuple[Any, ...]] = {
    "echo": (False, None),
    "suffix": (None, ""),
    "best_of": (1, None),
    "modalities": (["text"], None),
    "functions": (None, []),
    "function_call": (None,),
    "audio": (None,),
    "prediction": (None,),
    "web_search_options": (None,),
}


@dataclass(frozen=True)
class OutputFormat:
    """What the answer must be: free text, any JSON object, or JSON holding a schema."""

    kind: str = "text"  # text | json_object | json_schema
    name: str = ""
    schema: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """A validated request of either endpoint."""

    model: str
    prompt: Prompt
    params: SamplingParams
    stream: bool
    include_usage: bool = False
    tools: ToolSetup | None = None
    output: OutputFormat = OutputFormat()

    @property
    def constrained(self) -> bool:
        """True when the answer is JSON under a grammar (tools or a response format)."""
        return self.tools is not None or self.output.kind != "text"


def _number(body: Mapping[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
        raise bad_request(f"{key} must be a number between {low} and {high}", key)
    return float(value)


def _integer(body: Mapping[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise bad_request(f"{key} must be an integer", key)
    return value


def _check_parameters(body: Mapping[str, Any], chat: bool) -> None:
    for key, value in body.items():
        entry = PARAMETERS.get(key)
        status = None if entry is None else entry[0 if chat else 1]
        if status is None:
            raise bad_request(f"unrecognized request argument: {str(key)[:64]}", str(key)[:64])
        if status == REFUSED and value not in HARMLESS_VALUES.get(key, ()):
            hint = " (use tools)" if key in ("functions", "function_call") else ""
            raise bad_request(f"{key} is not supported by this server{hint}", key)


def _content(message: Mapping[str, Any], required: bool) -> str:
    """A message's content as text: a string or a list of text parts."""
    content = message.get("content")
    if content is None and not required:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") not in ("text", "input_text"):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise bad_request(
                    f"content parts of type {str(kind)[:32]!r} are not supported (text only)",
                    "messages",
                )
            if not isinstance(part.get("text"), str):
                raise bad_request("a text content part needs a string text", "messages")
            texts.append(part["text"])
        return "".join(texts)
    raise bad_request("message content must be a string or a list of text parts", "messages")


def _tool_calls_text(calls: Any) -> str:
    """An assistant turn's earlier tool calls, in the format the model answers in."""
    if not isinstance(calls, list) or not calls:
        raise bad_request("tool_calls must be a non-empty list", "messages")
    rendered = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise bad_request("each tool call needs function.name", "messages")
        arguments = function.get("arguments", "{}")
        try:
            parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
        except json.JSONDecodeError as e:
            raise bad_request(
                f"tool call {function['name'][:64]!r}: arguments are not JSON", "messages"
            ) from e
        rendered.append({"name": function["name"], "arguments": parsed})
    return json.dumps({"tool_calls": rendered}, ensure_ascii=False)


def _messages(body: Mapping[str, Any]) -> list[dict[str, str]]:
    """The conversation as role/content strings any chat template renders: developer
    messages become system messages; an assistant's tool calls and the tools' results are
    written in the tool format the model answers in (tool results as user turns, which
    every template accepts)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not 0 < len(messages) <= MAX_MESSAGES:
        raise bad_request(f"messages must be a list of 1 to {MAX_MESSAGES} messages", "messages")
    parsed: list[dict[str, str]] = []
    for message in messages:
        role = message.get("role") if isinstance(message, dict) else None
        if role in ("system", "developer", "user"):
            parsed.append(
                {"role": "user" if role == "user" else "system", "content": _content(message, True)}
            )
        elif role == "assistant":
            if message.get("tool_calls"):
                text = _tool_calls_text(message["tool_calls"])
            else:
                text = _content(message, True)
            parsed.append({"role": "assistant", "content": text})
        elif role == "tool":
            result = {
                "tool_response": {
                    "tool_call_id": str(message.get("tool_call_id", ""))[:64],
                    "content": _content(message, True),
                }
            }
            parsed.append({"role": "user", "content": json.dumps(result, ensure_ascii=False)})
        else:
            raise bad_request(
                "each message needs a role (system, developer, user, assistant, tool) "
                "and string content",
                "messages",
            )
    return parsed


def _with_system(messages: list[dict[str, str]], text: str) -> list[dict[str, str]]:
    if messages and messages[0]["role"] == "system":
        first = {"role": "system", "content": f"{messages[0]['content']}\n\n{text}"}
        return [first, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def parse_output_format(value: Any, param: str = "response_format") -> OutputFormat:
    """``response_format`` (chat) or ``text.format`` (Responses), checked and compilable."""
    if value is None:
        return OutputFormat()
    if not isinstance(value, dict) or value.get("type") not in (
        "text",
        "json_object",
        "json_schema",
    ):
        raise bad_request(f'{param}.type must be "text", "json_object" or "json_schema"', param)
    if value["type"] != "json_schema":
        return OutputFormat(value["type"])
    spec = value.get("json_schema", value)  # the Responses API puts the fields at the top
    if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
        raise bad_request(f"{param}: json_schema needs a schema object", param)
    name = spec.get("name", "")
    if not isinstance(name, str) or len(name) > 64:
        raise bad_request(
            f"{param}: the schema name must be a string of up to 64 characters", param
        )
    check_schema(spec["schema"], param)
    return OutputFormat("json_schema", name, spec["schema"])


def _grammar(tools: ToolSetup | None, output: OutputFormat, param: str) -> str | None:
    if tools is not None:
        return compile_grammar(tools.answer_schema(), "tools")
    if output.kind == "json_object":
        return compile_grammar({"type": "object"}, param)
    if output.kind == "json_schema" and output.schema is not None:
        return compile_grammar(output.schema, param)
    return None


def _logit_bias(body: Mapping[str, Any]) -> tuple[tuple[int, float], ...]:
    bias = body.get("logit_bias") or {}
    if not isinstance(bias, dict) or len(bias) > MAX_LOGIT_BIAS:
        raise bad_request(
            f"logit_bias must map up to {MAX_LOGIT_BIAS} token ids to numbers", "logit_bias"
        )
    parsed = []
    for token, value in bias.items():
        try:
            token_id = int(token)
        except ValueError as e:
            raise bad_request(
                f"logit_bias key {str(token)[:20]!r} is not a token id", "logit_bias"
            ) from e
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not -100 <= value <= 100
        ):
            raise bad_request("logit_bias values must be numbers from -100 to 100", "logit_bias")
        parsed.append((token_id, float(value)))
    return tuple(parsed)


def _logprobs(body: Mapping[str, Any], chat: bool) -> tuple[bool, int]:
    """(return logprobs, how many alternatives per token)."""
    if chat:
        wanted = body.get("logprobs") or False
        if not isinstance(wanted, bool):
            raise bad_request("logprobs must be a boolean", "logprobs")
        top = _integer(body, "top_logprobs") or 0
        if not 0 <= top <= MAX_TOP_LOGPROBS:
            raise bad_request(f"top_logprobs must be from 0 to {MAX_TOP_LOGPROBS}", "top_logprobs")
        if top and not wanted:
            raise bad_request("top_logprobs needs logprobs: true", "top_logprobs")
        return wanted, top
    alternatives = _integer(body, "logprobs")
    if alternatives is None:
        return False, 0
    if not 0 <= alternatives <= 5:
        raise bad_request("logprobs must be an integer from 0 to 5", "logprobs")
    return True, alternatives


def _stop(body: Mapping[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop") or ()
    if isinstance(stop, str):
        stop = (stop,)
    if (
        not isinstance(stop, list | tuple)
        or len(stop) > MAX_STOP
        or not all(isinstance(s, str) for s in stop)
    ):
        raise bad_request(f"stop must be a string or a list of up to {MAX_STOP} strings", "stop")
    return tuple(stop)


def _max_tokens(body: Mapping[str, Any], chat: bool, limit: int) -> int:
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = body.get(key)
    if max_tokens is None:
        return min(256, limit) if chat else 16
    if (
        not isinstance(max_tokens, int)
        or isinstance(max_tokens, bool)
        or not 1 <= max_tokens <= limit
    ):
        raise bad_request(f"{key} must be an integer from 1 to {limit}", key)
    return max_tokens


def _stream_options(body: Mapping[str, Any], stream: bool) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise bad_request("stream_options is only allowed with stream: true", "stream_options")
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise bad_request("stream_options.include_usage must be a boolean", "stream_options")
    return bool(options.get("include_usage", False))


def _text(body: Mapping[str, Any]) -> Prompt:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise bad_request("prompt must be a string (one prompt per request)", "prompt")
    return Prompt(text=prompt)


def parse_request(body: Any, chat: bool, max_tokens_limit: int) -> GenerationRequest:
    """Validate a chat or text completion request; raise ApiError(400) naming the bad field."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    _check_parameters(body, chat)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("model is required", "model")
    if body.get("n", 1) not in (1, None):
        raise bad_request("only n=1 is supported: send parallel requests instead", "n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("stream must be a boolean", "stream")
    tools, output = None, OutputFormat()
    if chat:
        tools = parse_tools(body)
        output = parse_output_format(body.get("response_format"))
        if tools is not None and output.kind != "text":
            raise bad_request(
                "response_format cannot be combined with tools the model may call",
                "response_format",
            )
        messages = _messages(body)
        if tools is not None:
            messages = _with_system(messages, tools.instructions())
        prompt = Prompt(messages=tuple(messages))
    else:
        prompt = _text(body)
    logprobs, top_logprobs = _logprobs(body, chat)
    params = SamplingParams(
        max_tokens=_max_tokens(body, chat, max_tokens_limit),
        temperature=_number(body, "temperature", 0.8, 0.0, 2.0),
        top_p=_number(body, "top_p", 0.95, 0.0, 1.0),
        stop=_stop(body),
        seed=_integer(body, "seed"),
        presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        logit_bias=_logit_bias(body),
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        grammar=_grammar(tools, output, "response_format"),
    )
    return GenerationRequest(
        model, prompt, params, stream, _stream_options(body, stream), tools, output
    )


def tool_calls_of(answer: Any) -> list[dict[str, Any]] | None:
    """OpenAI ``tool_calls`` from the model's answer under a tool grammar; None if it
    answered directly."""
    if not isinstance(answer, dict) or "tool_calls" not in answer:
        return None
    return [
        {
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {
                "name": call["name"],
                "arguments": json.dumps(call["arguments"], ensure_ascii=False),
            },
        }
        for call in answer["tool_calls"]
    ]
