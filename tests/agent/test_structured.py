"""Constrained output fails closed: schemas the grammar cannot enforce are 400s naming
the keyword; tool setups parse and describe themselves; validation names the fault."""

from __future__ import annotations

import pytest

from edgefleet.agent.inference.api_errors import ApiError
from edgefleet.agent.inference.requests import parse_request
from edgefleet.agent.inference.structured import (
    check_schema,
    compile_grammar,
    parse_tools,
    validate,
)

PERSON = {
    "type": "object",
    "title": "Person",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def test_an_enforceable_schema_compiles() -> None:
    check_schema(PERSON, "response_format")
    grammar = compile_grammar(PERSON, "response_format")
    assert "root ::=" in grammar


@pytest.mark.parametrize(
    ("schema", "keyword"),
    [
        ({"type": "integer", "minimum": 0}, "minimum"),
        (
            {"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}},
            "uniqueItems",
        ),
        ({"not": {"type": "string"}}, "not"),
        ({"type": "object", "patternProperties": {"^x": {}}}, "patternProperties"),
        ({"type": "string", "format": "email"}, "email"),
        ({"anyOf": [{"type": "number", "multipleOf": 2}]}, "multipleOf"),
    ],
)
def test_a_keyword_the_grammar_cannot_enforce_is_a_400_naming_it(
    schema: object, keyword: str
) -> None:
    with pytest.raises(ApiError) as refused:
        check_schema(schema, "response_format")
    assert refused.value.status == 400 and keyword in refused.value.message
    assert refused.value.param == "response_format"


def test_a_malformed_schema_is_a_400() -> None:
    with pytest.raises(ApiError, match="invalid JSON schema"):
        check_schema({"type": "strin"}, "response_format")
    with pytest.raises(ApiError, match="must be a JSON schema object"):
        check_schema({"properties": {"a": 3}}, "response_format")


def test_validation_names_the_path_at_fault() -> None:
    assert validate({"name": "a", "age": 3}, PERSON) is None
    why = validate({"name": "a", "age": "three"}, PERSON)
    assert why is not None and why.startswith("age:")


def _body(**extra: object) -> dict[str, object]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather now",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def test_tool_choice_forms() -> None:
    assert parse_tools(_body(tools=[WEATHER])).choice == "auto"
    assert parse_tools(_body(tools=[WEATHER], tool_choice="none")) is None
    named = parse_tools(
        _body(
            tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}}
        )
    )
    assert named is not None and named.choice == "get_weather"
    for wrong in ("sometimes", {"type": "function", "function": {"name": "nope"}}):
        with pytest.raises(ApiError) as refused:
            parse_tools(_body(tools=[WEATHER], tool_choice=wrong))
        assert refused.value.param == "tool_choice"


def test_tools_go_to_the_model_as_a_system_message_and_a_grammar() -> None:
    req = parse_request(
        _body(tools=[WEATHER], parallel_tool_calls=False), chat=True, max_tokens_limit=64
    )
    assert req.prompt.messages[0]["role"] == "system"
    assert "get_weather" in req.prompt.messages[0]["content"]
    assert req.params.grammar is not None and req.constrained
    schema = req.tools.answer_schema()
    calls = schema["anyOf"][0]["properties"]["tool_calls"]
    assert calls["maxItems"] == 1  # parallel_tool_calls: false


def test_a_tool_conversation_renders_for_any_template() -> None:
    """Assistant tool calls and tool results become ordinary turns in the answer format."""
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
    ]
    req = parse_request(
        {"model": "m", "messages": messages, "tools": [WEATHER]}, chat=True, max_tokens_limit=64
    )
    roles = [m["role"] for m in req.prompt.messages]
    assert roles == ["system", "user", "assistant", "user"]
    assert '"tool_calls"' in req.prompt.messages[2]["content"]
    assert '"tool_response"' in req.prompt.messages[3]["content"]
