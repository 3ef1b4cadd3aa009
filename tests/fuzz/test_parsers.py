"""Bounded fuzzing of every parser of untrusted bytes (hypothesis): random bytes, and
valid documents with bytes flipped, cut, inserted and repeated. A parser may answer or
refuse with the error it documents; nothing else. `make fuzz` runs the same targets
coverage-guided (atheris) for longer."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet.agent.inference.api_errors import ApiError
from edgefleet.agent.inference.requests import parse_request
from tests.fuzz import seeds
from tests.fuzz.targets import TARGETS

EXAMPLES = int(os.environ.get("EDGEFLEET_FUZZ_EXAMPLES", "300"))
SEEDS = seeds.build()
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=os.environ.get("EDGEFLEET_FUZZ_RANDOM") is None,  # CI: the same inputs
)


@st.composite
def mutated(draw: st.DrawFn, valid: list[bytes]) -> bytes:
    """A valid document with a few bytes flipped, cut, inserted or repeated."""
    data = bytearray(draw(st.sampled_from(valid)))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "cut", "insert", "repeat", "truncate"]))
        if kind == "flip":
            data[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[at : at + draw(st.integers(1, 16))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 64))] * draw(st.integers(1, 8))
        else:
            del data[at:]
    return bytes(data)


def _cases(name: str) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=2048), mutated(SEEDS[name]))


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_a_parser_answers_or_refuses_with_its_own_error(name: str) -> None:
    target: Callable[[bytes], None] = TARGETS[name]
    for seed in SEEDS[name]:
        target(seed)  # each seed is valid input the target accepts without a finding

    @FUZZ
    @given(_cases(name))
    def fuzz(data: bytes) -> None:
        target(data)

    fuzz()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=30,
)
KEYS = [
    "model",
    "messages",
    "prompt",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "seed",
    "temperature",
    "top_p",
    "n",
    "stream",
    "role",
    "content",
    "suffix",
    "echo",
    "logprobs",
]


@FUZZ
@given(st.dictionaries(st.sampled_from(KEYS), JSON, max_size=8), st.booleans())
def test_request_bodies_are_validated_or_refused_with_a_400(
    body: dict[str, object], chat: bool
) -> None:
    """Any JSON object under the API's own keys: a request, or a 400 naming a field."""
    try:
        parse_request(body, chat, 1024)
    except ApiError as e:
        assert e.status == 400 and e.message
