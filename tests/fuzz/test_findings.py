"""Every input the fuzzers found that broke a parser, kept as a test (tests/fuzz/findings/
holds the raw inputs, named TARGET-what). Each now ends in the parser's own refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.agent.inference.api_errors import ApiError
from edgefleet.agent.inference.requests import parse_request
from edgefleet.audit_export import verify_export
from edgefleet.errors import MalformedInputError
from edgefleet.rbac import Policy
from tests.fuzz.targets import TARGETS

FINDINGS = sorted((Path(__file__).parent / "findings").iterdir())


@pytest.mark.parametrize("path", FINDINGS, ids=[p.name for p in FINDINGS])
def test_each_finding_is_refused_by_its_parser(path: Path) -> None:
    """The saved input runs through its target without an unexpected exception."""
    TARGETS[path.name.split("-", 1)[0]](path.read_bytes())


def test_a_message_role_that_is_not_a_string_is_a_400() -> None:
    """atheris: {"role": {...}} raised TypeError (unhashable) in parse_request: a 500."""
    body = {"model": "m", "messages": [{"role": {"model": "m"}, "content": "x"}]}
    with pytest.raises(ApiError) as refused:
        parse_request(body, True, 1024)
    assert refused.value.status == 400 and refused.value.param == "messages"


def test_a_csv_export_that_is_not_utf8_is_refused() -> None:
    """hypothesis: a CSV export with a stray byte raised UnicodeDecodeError in verify."""
    with pytest.raises(MalformedInputError, match="CSV export cannot be read"):
        verify_export(b"#edgefleet_audit_export\x80,{}\n", "ab" * 32)


def test_a_role_permission_that_is_not_a_string_is_refused() -> None:
    """atheris: a policy role listing an object as a permission raised TypeError
    (unhashable) in Policy.from_payload: an internal error for `policy apply`."""
    doc = b'{"_type": "policy", "version": 1, "roles": {"r": [{"x": 1}]}}'
    with pytest.raises(MalformedInputError, match="role r names permissions outside"):
        Policy.from_payload(doc)
