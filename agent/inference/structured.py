"""Constrained output: JSON schemas compiled to llama.cpp grammars, tool calls under a
grammar, and every result checked against its schema before it is returned.

Failing closed is the point: a schema keyword the grammar compiler would silently ignore
(``minimum``, ``uniqueItems``, ``not`` …) is refused with a 400 naming it, never answered
with output the schema does not hold; output that still fails validation is an error,
never a 200.

Tool calls use one model-independent format, llama-server's "generic" one: the model
answers a JSON object, either ``{"tool_calls": [{"name": …, "arguments": {…}}]}`` or
``{"response": "…"}``, described to it in a system message and enforced by a grammar
built from the tools' parameter schemas, so arguments always parse and validate.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from edgefleet.agent.inference.api_errors import bad_request

MAX_SCHEMA_BYTES = 64 * 1024
MAX_TOOLS = 64

# Keywords the grammar enforces (llama.cpp's json-schema-to-grammar converter, the one
# shipped in llama-cpp-python 0.3.36), and annotations that constrain nothing.
ENFORCED = frozenset(
    {
        "type", "properties", "required", "additionalProperties", "items", "prefixItems",
        "minItems", "maxItems", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs",
        "definitions", "pattern", "format", "minLength", "maxLength",
    }
)  # fmt: skip
ANNOTATIONS = frozenset(
    {
        "title", "description", "default", "examples", "$schema", "$id", "$comment",
        "deprecated", "readOnly", "writeOnly", "strict",
    }
)  # fmt: skip
# string formats the converter has a rule for; any other is refused
FORMATS = frozenset(
    {"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"}
)
# keys whose values are maps from names to subschemas
SCHEMA_MAPS = ("properties", "$defs", "definitions")
SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")


def _walk(schema: Any, where: str) -> Iterator[tuple[str, str]]:
    """(keyword, location) of every keyword in ``schema`` and its subschemas."""
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise bad_request(f"{where} must be a JSON schema object", "response_format")
    for key, value in schema.items():
        yield key, where
        if key in SCHEMA_MAPS and isinstance(value, dict):
            for name, sub in value.items():
                yield from _walk(sub, f"{where}.{key}.{name}")
        elif key in SCHEMA_LISTS and isinstance(value, list):
            for i, sub in enumerate(value):
                yield from _walk(sub, f"{where}.{key}[{i}]")
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            yield from _walk(value, f"{where}.{key}")


def check_schema(schema: Any, param: str) -> None:
    """400 naming the first keyword the grammar cannot enforce (or a malformed schema)."""
    if len(json.dumps(schema)) > MAX_SCHEMA_BYTES:
        raise bad_request(f"the schema exceeds {MAX_SCHEMA_BYTES} bytes", param)
    for key, where in _walk(schema, "schema"):
        if key in ANNOTATIONS or key in ENFORCED:
            continue
        raise bad_request(
            f"unsupported JSON schema keyword {key!r} at {where}: the grammar cannot "
            "enforce it, and output it does not constrain is never returned",
            param,
        )
    for key, where in _walk(schema, "schema"):
        if key == "format":
            fmt = _at(schema, where).get("format")
            if fmt not in FORMATS:
                raise bad_request(
                    f"unsupported string format {str(fmt)[:40]!r} at {where} "
                    f"(supported: {', '.join(sorted(FORMATS))})",
                    param,
                )
    try:
        import jsonschema

        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        raise bad_request(f"invalid JSON schema: {e.message[:200]}", param) from e


def _at(schema: dict[str, Any], where: str) -> dict[str, Any]:
    """The subschema at a location produced by :func:`_walk`."""
    node: Any = schema
    for part in where.split(".")[1:]:
        name, _, index = part.partition("[")
        node = node[name]
        if index:
            node = node[int(index.rstrip("]"))]
    return dict(node)


def compile_grammar(schema: Mapping[str, Any], param: str) -> str:
    """GBNF for ``schema`` (already checked); 400 if the converter still refuses it."""
    from edgefleet.agent.inference.llama_library import llama_module

    # the converter alone (pure Python): not llama.cpp, numpy and the rest (+33 MiB)
    converter = llama_module("llama_grammar").json_schema_to_gbnf
    try:
        return str(converter(json.dumps(schema)))
    except (ValueError, AssertionError, KeyError, TypeError, RecursionError) as e:
        raise bad_request(f"the schema cannot be compiled to a grammar: {e}", param) from e


def validate(value: Any, schema: Mapping[str, Any]) -> str | None:
    """None if ``value`` holds ``schema``, else why not (one line)."""
    import jsonschema

    error = jsonschema.exceptions.best_match(
        jsonschema.validators.validator_for(schema)(schema).iter_errors(value)
    )
    if error is None:
        return None
    path = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"{path}: {error.message[:200]}"


# --- tools ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Tool:
    """One function the model may call."""

    name: str
    description: str
    parameters: Mapping[str, Any]


@dataclass(frozen=True)
class ToolSetup:
    """Tools offered to one request and how the model must answer."""

    tools: tuple[Tool, ...]
    choice: str  # "auto" | "required" | a function's name
    parallel: bool

    @property
    def offered(self) -> tuple[Tool, ...]:
        if self.choice in ("auto", "required"):
            return self.tools
        return tuple(t for t in self.tools if t.name == self.choice)

    def answer_schema(self) -> dict[str, Any]:
        """The JSON schema of the model's whole answer."""
        call = {
            "anyOf": [
                {
                    "type": "object",
                    "properties": {"name": {"const": t.name}, "arguments": t.parameters},
                    "required": ["name", "arguments"],
                    "additionalProperties": False,
                }
                for t in self.offered
            ]
        }
        calls: dict[str, Any] = {"type": "array", "items": call, "minItems": 1}
        if not self.parallel or self.choice not in ("auto", "required"):
            calls["maxItems"] = 1  # a named tool_choice asks for that one call
        with_calls = {
            "type": "object",
            "properties": {"tool_calls": calls},
            "required": ["tool_calls"],
            "additionalProperties": False,
        }
        if self.choice != "auto":
            return with_calls
        reply = {
            "type": "object",
            "properties": {"response": {"type": "string"}},
            "required": ["response"],
            "additionalProperties": False,
        }
        return {"anyOf": [with_calls, reply]}

    def instructions(self) -> str:
        """The system message that tells the model the tools and the answer format."""
        described = json.dumps(
            [
                {"name": t.name, "description": t.description, "parameters": t.parameters}
                for t in self.offered
            ],
            ensure_ascii=False,
        )
        if self.choice == "auto":
            how = (
                'To call tools, answer {"tool_calls": [{"name": <tool name>, "arguments": '
                '<arguments object>}]}; to answer directly, answer {"response": <your answer>}.'
            )
        else:
            how = 'Answer {"tool_calls": [{"name": <tool name>, "arguments": <arguments object>}]}.'
        many = "" if self.parallel and self.choice in ("auto", "required") else " Call one tool."
        return (
            f"You can call these tools: {described}\nAnswer with one JSON object only. {how}{many}"
        )


def _tool(entry: Any) -> Tool:
    if not isinstance(entry, dict) or entry.get("type") != "function":
        raise bad_request('each tool must be {"type": "function", "function": {...}}', "tools")
    function = entry.get("function", entry)  # the Responses API puts the fields at the top
    if not isinstance(function, dict):
        raise bad_request("tools[].function must be an object", "tools")
    name = function.get("name")
    if not isinstance(name, str) or not name or len(name) > 64:
        raise bad_request("each tool needs a name of 1 to 64 characters", "tools")
    if not all(c.isalnum() or c in "_-" for c in name):
        raise bad_request(f"tool name {name!r} may hold only letters, digits, _ and -", "tools")
    description = function.get("description") or ""
    if not isinstance(description, str):
        raise bad_request(f"tool {name}: description must be a string", "tools")
    parameters = function.get("parameters") or {"type": "object", "properties": {}}
    if not isinstance(parameters, dict):
        raise bad_request(f"tool {name}: parameters must be a JSON schema object", "tools")
    check_schema(parameters, "tools")
    return Tool(name, description, parameters)


def parse_tools(body: Mapping[str, Any]) -> ToolSetup | None:
    """The request's tools and tool_choice; None when no tool may be called."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if tools is None or tools == []:
        if choice not in (None, "none", "auto"):
            raise bad_request("tool_choice names a tool but no tools were given", "tool_choice")
        return None
    if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
        raise bad_request(f"tools must be a list of at most {MAX_TOOLS} tools", "tools")
    parsed = tuple(_tool(t) for t in tools)
    names = [t.name for t in parsed]
    if len(set(names)) != len(names):
        raise bad_request("tool names must be unique", "tools")
    if choice is None:
        choice = "auto"
    if isinstance(choice, dict):
        function = choice.get("function", choice)
        named = function.get("name") if isinstance(function, dict) else None
        if choice.get("type") != "function" or not isinstance(named, str):
            raise bad_request(
                'tool_choice must be "none", "auto", "required" or '
                '{"type": "function", "function": {"name": ...}}',
                "tool_choice",
            )
        if named not in names:
            raise bad_request(
                f"tool_choice names {named[:64]!r}, which is not in tools", "tool_choice"
            )
        choice = named
    elif choice not in ("none", "auto", "required"):
        raise bad_request(
            'tool_choice must be "none", "auto", "required" or a function', "tool_choice"
        )
    if choice == "none":
        return None
    parallel = body.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise bad_request("parallel_tool_calls must be a boolean", "parallel_tool_calls")
    return ToolSetup(parsed, choice, parallel)
