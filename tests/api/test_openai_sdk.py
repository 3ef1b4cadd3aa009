"""The official `openai` SDK against a real agent API serving SmolLM2: every feature of
docs/api.md, streamed and not, and every way it must fail closed."""

from __future__ import annotations

import base64
import json
import struct
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import openai
import pytest
from openai.types.chat import (
    ChatCompletionMessageParam,
    ChatCompletionSystemMessageParam,
    ChatCompletionToolParam,
)
from openai.types.responses import FunctionToolParam
from pydantic import BaseModel, Field

from edgefleet.bundled import bundled_model_path
from tests.api.conftest import MODEL, LocalApi

pytestmark = pytest.mark.model

QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the capital of France? Answer in one word."}
]
WEATHER: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The local time in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture
def client(local_api: LocalApi) -> openai.OpenAI:
    return openai.OpenAI(base_url=local_api.base_url, api_key=local_api.token, max_retries=0)


def _stream_text(stream: Any) -> tuple[str, list[Any]]:
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


# --- models ----------------------------------------------------------------------------


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [MODEL]
    model = client.models.retrieve(MODEL)
    assert model.id == MODEL and model.object == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


# --- chat: usage, stop, seed, logprobs ----------------------------------------------------


def test_stream_with_include_usage_ends_with_a_usage_chunk(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, chunks = _stream_text(stream)
    whole = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        max_tokens=12,
        temperature=0,
    )
    assert text == whole.choices[0].message.content
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == whole.usage.completion_tokens
    assert last.usage.prompt_tokens == whole.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_prompt_tokens_do_not_depend_on_other_parameters(client: openai.OpenAI) -> None:
    counts = set()
    for extra in ({}, {"stop": ["\n"]}, {"logprobs": True}, {"seed": 3, "temperature": 1.0}):
        answer = client.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            max_tokens=4,
            **extra,
        )
        counts.add(answer.usage.prompt_tokens)
    assert len(counts) == 1


def test_a_stop_string_never_leaks_streamed_or_not(client: openai.OpenAI) -> None:
    plain = (
        client.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            max_tokens=24,
            temperature=0,
        )
        .choices[0]
        .message.content
    )
    assert plain is not None and "Paris" in plain
    stop = "aris"  # begins inside a token ("Paris" is one or two tokens): cut mid-token
    whole = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        max_tokens=24,
        temperature=0,
        stop=stop,
    )
    streamed, _ = _stream_text(
        client.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            max_tokens=24,
            temperature=0,
            stop=[stop, "never appears"],
            stream=True,
        )
    )
    expected = plain[: plain.index(stop)]
    assert whole.choices[0].message.content == expected == streamed
    assert whole.choices[0].finish_reason == "stop"


def test_the_same_seed_gives_the_same_output(client: openai.OpenAI) -> None:
    def sample(seed: int) -> str | None:
        return (
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Write a short poem about the sea."}],
                max_tokens=24,
                temperature=1.2,
                seed=seed,
            )
            .choices[0]
            .message.content
        )

    assert sample(7) == sample(7)
    assert len({sample(s) for s in (1, 2, 3)}) > 1  # and the seed matters


def test_logit_bias_bans_a_token_and_penalties_are_accepted(client: openai.OpenAI) -> None:
    import llama_cpp

    vocab = llama_cpp.Llama(model_path=str(bundled_model_path()), vocab_only=True, verbose=False)
    banned = {str(t): -100 for t in vocab.tokenize(b" Paris", add_bos=False, special=False)}
    answer = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        max_tokens=12,
        temperature=0,
        logit_bias=banned,
        presence_penalty=1.0,
        frequency_penalty=0.5,
    )
    assert " Paris" not in (answer.choices[0].message.content or "")
    with pytest.raises(openai.BadRequestError, match="logit_bias names token"):
        client.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            max_tokens=2,
            logit_bias={"999999999": -100},
        )


def test_logprobs_tokens_concatenate_to_the_content(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say «déjà vu» and an emoji 🌊."}],
        max_tokens=16,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    choice = answer.choices[0]
    entries = choice.logprobs.content
    assert entries and "".join(e.token for e in entries) == choice.message.content
    for e in entries:
        assert e.logprob <= 0 and len(e.top_logprobs) == 3
        assert e.top_logprobs[0].logprob >= e.top_logprobs[-1].logprob
    assert entries[0].logprob == pytest.approx(entries[0].top_logprobs[0].logprob)  # greedy
    streamed = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say «déjà vu» and an emoji 🌊."}],
        max_tokens=16,
        temperature=0,
        logprobs=True,
        stream=True,
    )
    chunks = [c for c in streamed if c.choices and c.choices[0].logprobs]
    tokens = [e.token for c in chunks for e in c.choices[0].logprobs.content]
    assert "".join(tokens) == choice.message.content


def test_text_completion_logprobs(client: openai.OpenAI) -> None:
    answer = client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=0, logprobs=2
    )
    logprobs = answer.choices[0].logprobs
    assert logprobs is not None and "".join(logprobs.tokens) == answer.choices[0].text  # type: ignore[arg-type]
    assert all(len(t) == 2 for t in logprobs.top_logprobs)


def test_a_repeated_system_prompt_is_served_from_the_cache(client: openai.OpenAI) -> None:
    system: ChatCompletionSystemMessageParam = {
        "role": "system",
        "content": "You are a terse assistant. " * 40,
    }
    first = client.chat.completions.create(
        model=MODEL,
        messages=[system, {"role": "user", "content": "Hello"}],
        max_tokens=2,
    )
    second = client.chat.completions.create(
        model=MODEL,
        messages=[system, {"role": "user", "content": "What is 2+2?"}],
        max_tokens=2,
    )
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached > 200 and cached < second.usage.prompt_tokens
    assert first.usage.prompt_tokens_details.cached_tokens < cached


# --- structured output ---------------------------------------------------------------------


class City(BaseModel):
    name: str
    country: str
    population_millions: float
    # maxItems, enforced by the grammar: a 135M model at temperature 0 would list forever
    landmarks: list[str] = Field(max_length=3)


def test_json_schema_output_parses_into_the_model(client: openai.OpenAI) -> None:
    parsed = client.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe Paris."}],
        response_format=City,
        max_tokens=200,
        temperature=0,
    )
    city = parsed.choices[0].message.parsed
    assert isinstance(city, City) and city.name and len(city.landmarks) <= 3


def test_a_schema_violating_request_still_gets_valid_output(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"age": {"type": "integer"}, "ok": {"type": "boolean"}},
        "required": ["age", "ok"],
        "additionalProperties": False,
    }
    for stream in (False, True):
        kwargs: dict[str, Any] = {
            "model": MODEL,
            "messages": [
                {"role": "user", "content": 'Reply with {"age": "forty", "extra": [1,2]} exactly.'}
            ],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "a", "schema": schema, "strict": True},
            },
            "max_tokens": 60,
            "temperature": 0,
        }
        if stream:
            content, _ = _stream_text(client.chat.completions.create(stream=True, **kwargs))
        else:
            content = client.chat.completions.create(**kwargs).choices[0].message.content
        value = json.loads(content or "")
        assert set(value) == {"age", "ok"} and isinstance(value["age"], int)


def test_json_object_mode_returns_an_object(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Give the colours of the French flag as JSON."}],
        response_format={"type": "json_object"},
        max_tokens=60,
        temperature=0,
    )
    if answer.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(answer.choices[0].message.content or ""), dict)


@pytest.mark.parametrize(
    ("schema", "keyword"),
    [
        ({"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}}, "minimum"),
        ({"type": "object", "properties": {"e": {"type": "string", "format": "email"}}}, "email"),
        ({"type": "object", "not": {"required": ["x"]}}, "not"),
    ],
)
def test_a_schema_the_grammar_cannot_enforce_is_a_400(
    client: openai.OpenAI, schema: dict[str, Any], keyword: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        )
    assert keyword in str(refused.value) and refused.value.body["param"] == "response_format"


# --- tools --------------------------------------------------------------------------------


def _check_call(call: Any, name: str) -> dict[str, Any]:
    assert call.type == "function" and call.function.name == name and call.id.startswith("call_")
    arguments = json.loads(call.function.arguments)
    if name == "get_weather":
        assert set(arguments) == {"city", "unit"} and arguments["unit"] in ("celsius", "fahrenheit")
    return dict(arguments)


def test_required_tool_call_arguments_validate(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the weather in Lyon?"}],
        tools=[WEATHER, TIME],
        tool_choice="required",
        max_tokens=80,
        temperature=0,
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert choice.message.tool_calls
    for call in choice.message.tool_calls:
        _check_call(call, call.function.name)


def test_a_named_tool_and_no_parallel_calls(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Time and weather in Oslo and Rome, please."}],
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        parallel_tool_calls=False,
        max_tokens=80,
        temperature=0,
    )
    calls = answer.choices[0].message.tool_calls
    assert calls is not None and len(calls) == 1
    _check_call(calls[0], "get_time")


def test_tool_choice_none_answers_in_text(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        tools=[WEATHER],
        tool_choice="none",
        max_tokens=12,
        temperature=0,
    )
    assert answer.choices[0].message.tool_calls is None
    assert "Paris" in (answer.choices[0].message.content or "")


def test_auto_tool_choice_answers_either_way_and_both_parse(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the weather in Berlin?"}],
        tools=[WEATHER],
        max_tokens=80,
        temperature=0,
    )
    choice = answer.choices[0]
    if choice.finish_reason == "tool_calls":
        _check_call(choice.message.tool_calls[0], "get_weather")
    else:
        assert choice.finish_reason == "stop" and isinstance(choice.message.content, str)


def test_streamed_tool_calls_assemble_in_the_sdk(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the weather in Lyon?"}],
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=80,
        temperature=0,
    ) as stream:
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    _check_call(choice.message.tool_calls[0], "get_weather")


def test_a_multi_turn_tool_conversation(client: openai.OpenAI) -> None:
    """Call, tool result, answer: the SDK's own message objects go back as they came."""
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Lyon?"}]
    first = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=120,
        temperature=0,
    )
    assert first.choices[0].finish_reason == "tool_calls", first.choices[0]
    call = first.choices[0].message.tool_calls[0]
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "21 degrees, sunny"})
    second = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        tools=[WEATHER],
        max_tokens=120,
        temperature=0,
    )
    choice = second.choices[0]
    if choice.finish_reason == "tool_calls":
        _check_call(choice.message.tool_calls[0], "get_weather")
    else:
        assert choice.finish_reason in ("stop", "length") and choice.message.content
    usage, before = second.usage, first.usage
    assert usage.prompt_tokens > before.prompt_tokens
    # the conversation grew: its start was still in the slot's cache
    assert usage.prompt_tokens_details.cached_tokens > before.prompt_tokens // 2


# --- embeddings ------------------------------------------------------------------------------


def _norm(vector: list[float]) -> float:
    return float(sum(x * x for x in vector) ** 0.5)


def test_embeddings_every_input_form(client: openai.OpenAI) -> None:
    one = client.embeddings.create(model=MODEL, input="hello world")  # SDK default: base64
    assert len(one.data) == 1 and _norm(one.data[0].embedding) == pytest.approx(1.0, abs=1e-5)
    dims = len(one.data[0].embedding)
    many = client.embeddings.create(
        model=MODEL, input=["hello world", "the capital of France"], encoding_format="float"
    )
    assert [d.index for d in many.data] == [0, 1]
    assert many.data[0].embedding == pytest.approx(one.data[0].embedding, abs=1e-6)
    assert many.usage.prompt_tokens > one.usage.prompt_tokens
    tokens = client.embeddings.create(model=MODEL, input=[[1, 2, 3], [4, 5]])
    assert len(tokens.data) == 2 and len(tokens.data[1].embedding) == dims
    same_dims = client.embeddings.create(model=MODEL, input="x", dimensions=dims)
    assert len(same_dims.data[0].embedding) == dims


def test_base64_embeddings_are_little_endian_float32(local_api: LocalApi) -> None:
    body = {"model": MODEL, "input": "hello", "encoding_format": "base64"}
    request = urllib.request.Request(
        f"{local_api.base_url}/embeddings",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {local_api.token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        raw = json.loads(response.read())
    floats = base64.b64decode(raw["data"][0]["embedding"])
    vector = struct.unpack(f"<{len(floats) // 4}f", floats)
    assert _norm(list(vector)) == pytest.approx(1.0, abs=1e-5)


def test_embeddings_refuse_what_they_cannot_do(client: openai.OpenAI) -> None:
    for kwargs in (
        {"input": "x", "dimensions": 8},
        {"input": ""},
        {"input": [[10**9]]},
        {"input": "word " * 600},
    ):
        with pytest.raises(openai.BadRequestError):
            client.embeddings.create(model=MODEL, **kwargs)


def test_an_app_may_embed_without_generating(local_api: LocalApi) -> None:
    embedder = openai.OpenAI(
        base_url=local_api.base_url, api_key=local_api.embed_only, max_retries=0
    )
    assert embedder.embeddings.create(model=MODEL, input="hello").data
    with pytest.raises(openai.PermissionDeniedError):
        embedder.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=2)


# --- parameters, concurrency and audit ----------------------------------------------------


def test_parameters_it_cannot_honour_are_400s(client: openai.OpenAI) -> None:
    for extra in ({"n": 2}, {"extra_body": {"no_such_param": 1}}, {"modalities": ["audio"]}):
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(
                model=MODEL,
                messages=QUESTION,
                max_tokens=2,
                **extra,
            )
        assert refused.value.body["param"]
    harmless = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        max_tokens=2,
        user="u-1",
        metadata={"k": "v"},
        store=False,
    )
    assert harmless.choices[0].message.content is not None


def test_sixteen_racing_requests_all_complete(client: openai.OpenAI) -> None:
    def ask(i: int) -> tuple[str | None, int]:
        answer = client.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            max_tokens=8,
            temperature=0,
            logprobs=bool(i % 2),
        )
        return answer.choices[0].message.content, answer.usage.prompt_tokens

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(ask, range(16)))
    assert len(set(results)) == 1  # greedy: every racer got the same answer and count


def test_every_endpoint_is_audited_without_content(
    client: openai.OpenAI, local_api: LocalApi
) -> None:
    secret = "my secret prompt 1234"
    client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": secret}], max_tokens=2
    )
    client.embeddings.create(model=MODEL, input=secret)
    records = [json.loads(r) for r in local_api.records()[-2:]]
    assert [r["action"] for r in records] == ["inference.chat", "inference.embeddings"]
    assert records[0]["details"]["prompt_tokens"] > 0 and "cached_tokens" in records[0]["details"]
    assert records[1]["details"]["inputs"] == 1
    assert all(secret not in json.dumps(r) for r in records)


# --- Responses API ---------------------------------------------------------------------------


def test_responses_text_streamed_and_not(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL,
        instructions="Answer in one word.",
        input="What is the capital of France?",
        max_output_tokens=16,
        temperature=0,
    )
    assert response.status == "completed" and "Paris" in response.output_text
    assert response.usage is not None and response.usage.input_tokens > 5
    with client.responses.stream(
        model=MODEL,
        instructions="Answer in one word.",
        input="What is the capital of France?",
        max_output_tokens=16,
        temperature=0,
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == response.output_text


def test_responses_structured_output(client: openai.OpenAI) -> None:
    parsed = client.responses.parse(
        model=MODEL, input="Describe Paris.", text_format=City, max_output_tokens=200, temperature=0
    )
    assert isinstance(parsed.output_parsed, City)


def test_responses_function_calls_round_trip(client: openai.OpenAI) -> None:
    function = WEATHER["function"]
    tool: FunctionToolParam = {
        "type": "function",
        "name": function["name"],
        "description": function.get("description"),
        "parameters": function.get("parameters"),
        "strict": None,
    }
    first = client.responses.create(
        model=MODEL,
        input=[{"role": "user", "content": "What is the weather in Lyon?"}],
        tools=[tool],
        tool_choice="required",
        max_output_tokens=120,
        temperature=0,
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls and json.loads(calls[0].arguments)["unit"] in ("celsius", "fahrenheit")
    with client.responses.stream(
        model=MODEL,
        input=[
            {"role": "user", "content": "What is the weather in Lyon?"},
            *[cast(Any, c.model_dump(exclude_none=True)) for c in calls],
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": "21 C"},
        ],
        tools=[tool],
        max_output_tokens=120,
        temperature=0,
    ) as stream:
        final = stream.get_final_response()
    assert final.status in ("completed", "incomplete") and final.output


def test_responses_refuse_state_it_does_not_keep(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model=MODEL, input="hi", previous_response_id="resp_123")
    assert "send the whole conversation" in str(refused.value)
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=MODEL, input="hi", tools=[{"type": "web_search"}])
