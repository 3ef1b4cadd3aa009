"""Clients this project did not write, installed from the package index, against a real
agent: LangChain (ChatOpenAI with bind_tools and with_structured_output, OpenAIEmbeddings)
and instructor. docs/api.md lists what each exercises."""

from __future__ import annotations

import json
from typing import Annotated

import pytest
from pydantic import BaseModel, Field

from tests.api.conftest import MODEL, LocalApi

pytestmark = pytest.mark.model


class Weather(BaseModel):
    """Get the current weather in a city."""

    city: str = Field(description="The city")
    unit: str = Field(description="celsius or fahrenheit", pattern="^(celsius|fahrenheit)$")


class Capital(BaseModel):
    country: str
    capital: str
    # bounded (maxItems, maxLength: both enforced by the grammar): at temperature 0 a
    # 135M model can repeat itself until max_tokens inside an unbounded string or list
    facts: list[Annotated[str, Field(max_length=80)]] = Field(max_length=2)


def _chat(local_api: LocalApi, **kwargs: object):  # type: ignore[no-untyped-def]
    langchain_openai = pytest.importorskip("langchain_openai")
    return langchain_openai.ChatOpenAI(
        model=MODEL,
        base_url=local_api.base_url,
        api_key=local_api.token,
        temperature=0,
        max_retries=0,
        **kwargs,
    )


def test_langchain_chat_invoke_and_stream(local_api: LocalApi) -> None:
    chat = _chat(local_api, max_tokens=16)
    answer = chat.invoke("What is the capital of France? Answer in one word.")
    assert "Paris" in answer.content
    assert answer.usage_metadata["input_tokens"] > 5
    streamed = "".join(
        c.content for c in chat.stream("What is the capital of France? Answer in one word.")
    )
    assert streamed == answer.content


def test_langchain_bind_tools(local_api: LocalApi) -> None:
    chat = _chat(local_api, max_tokens=120).bind_tools([Weather], tool_choice="Weather")
    answer = chat.invoke("What is the weather in Lyon?")
    assert answer.tool_calls and answer.tool_calls[0]["name"] == "Weather"
    args = answer.tool_calls[0]["args"]
    assert Weather.model_validate(args).unit in ("celsius", "fahrenheit")


def test_langchain_with_structured_output(local_api: LocalApi) -> None:
    for method in ("json_schema", "function_calling"):
        structured = _chat(local_api, max_tokens=200).with_structured_output(Capital, method=method)
        result = structured.invoke("Tell me about France.")
        assert isinstance(result, Capital) and len(result.facts) <= 2, method


def test_langchain_embeddings(local_api: LocalApi) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    embeddings = langchain_openai.OpenAIEmbeddings(
        model=MODEL,
        base_url=local_api.base_url,
        api_key=local_api.token,
        # LangChain counts tokens with tiktoken (OpenAI's vocabularies, downloaded on
        # first use) unless told not to; the agent counts with the model's own tokenizer.
        check_embedding_ctx_length=False,
        max_retries=0,
    )
    documents = embeddings.embed_documents(["the sea", "the ocean", "a tax form"])
    query = embeddings.embed_query("the sea")
    assert len(documents) == 3 and len(query) == len(documents[0])
    assert query == pytest.approx(documents[0], abs=1e-5)


def test_instructor_in_tools_and_json_schema_modes(local_api: LocalApi) -> None:
    instructor = pytest.importorskip("instructor")
    import openai

    raw = openai.OpenAI(base_url=local_api.base_url, api_key=local_api.token, max_retries=0)
    for mode in (instructor.Mode.TOOLS, instructor.Mode.JSON_SCHEMA):
        client = instructor.from_openai(raw, mode=mode)
        capital = client.chat.completions.create(
            model=MODEL,
            response_model=Capital,
            messages=[{"role": "user", "content": "Tell me about France."}],
            max_tokens=200,
            temperature=0,
            max_retries=0,
        )
        assert isinstance(capital, Capital), mode
        assert json.loads(capital.model_dump_json())["capital"] == capital.capital
