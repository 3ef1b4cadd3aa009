"""docs/api.md's parameter table is the code's: every row of PARAMETERS, with the same
status per endpoint, and nothing else — and each status does what it says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edgefleet.agent.inference.api_errors import ApiError
from edgefleet.agent.inference.requests import (
    HARMLESS_VALUES,
    IGNORED,
    PARAMETERS,
    REFUSED,
    parse_request,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
TABLE = re.compile(r"<!-- parameter table: chat, completions -->\n(.*?)<!-- end", re.DOTALL)


def documented() -> dict[str, tuple[str | None, str | None]]:
    rows = {}
    for line in TABLE.search(DOC.read_text()).group(1).splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        name = cells[0].strip("`")
        rows[name] = tuple(None if c == "—" else c for c in cells[1:3])
    return rows  # type: ignore[return-value]


def test_the_documented_table_is_the_code() -> None:
    assert documented() == PARAMETERS


def _body(chat: bool, **extra: object) -> dict[str, object]:
    base: dict[str, object] = {"model": "m"}
    base.update({"messages": [{"role": "user", "content": "hi"}]} if chat else {"prompt": "hi"})
    return {**base, **extra}


# a value that asks for something, per refused parameter
ASKING = {
    "echo": True,
    "suffix": "end",
    "best_of": 3,
    "functions": [{"name": "f"}],
    "function_call": "auto",
    "audio": {"voice": "alloy"},
    "modalities": ["text", "audio"],
    "prediction": {"type": "content", "content": "x"},
    "web_search_options": {},
}


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "completions"])
def test_each_status_does_what_it_says(chat: bool) -> None:
    for name, statuses in PARAMETERS.items():
        status = statuses[0 if chat else 1]
        if status == IGNORED:
            parse_request(_body(chat, **{name: "x" if name != "store" else False}), chat, 64)
        elif status == REFUSED:
            with pytest.raises(ApiError) as refused:
                parse_request(_body(chat, **{name: ASKING[name]}), chat, 64)
            assert refused.value.status == 400 and refused.value.param == name
            for harmless in HARMLESS_VALUES.get(name, ()):
                parse_request(_body(chat, **{name: harmless}), chat, 64)
        elif status is None:
            with pytest.raises(ApiError, match="unrecognized request argument"):
                parse_request(_body(chat, **{name: 1}), chat, 64)


def test_an_unknown_parameter_is_refused_by_name() -> None:
    with pytest.raises(ApiError) as refused:
        parse_request(_body(True, respnse_format={"type": "json_object"}), True, 64)
    assert refused.value.param == "respnse_format"
