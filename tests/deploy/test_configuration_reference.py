"""docs/configuration.md names every setting of both services with its real default."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from edgefleet.agent.app.config import AgentConfig
from edgefleet.controller.app.config import ControllerConfig

DOC = (Path(__file__).resolve().parents[2] / "docs/configuration.md").read_text()
ROW = re.compile(r"^\| `(?P<key>[a-z_]+)` \| (?P<default>[^|]+) \|", re.MULTILINE)


def documented(heading: str) -> dict[str, str]:
    section = DOC.split(heading, 1)[1].split("\n## ", 1)[0]
    return {m["key"]: m["default"].strip() for m in ROW.finditer(section)}


def rendered(value: object) -> str:
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    return f"`{value}`"


@pytest.mark.parametrize(
    ("heading", "config", "computed"),
    [
        ("## Agent", AgentConfig, {"n_threads"}),
        ("## Controller", ControllerConfig, set()),
    ],
)
def test_every_setting_is_documented_with_its_default(
    heading: str, config: type, computed: set[str]
) -> None:
    rows = documented(heading)
    fields = {f.name: f for f in dataclasses.fields(config) if f.name != "data_dir"}
    assert set(rows) == set(fields), set(rows) ^ set(fields)
    for name, field in fields.items():
        if name not in computed:
            assert rows[name] == rendered(field.default), name
