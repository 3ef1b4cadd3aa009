"""The signed agent release: validated before signing and on parse; the llama.cpp build
picked for a CPU from /proc/cpuinfo."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from edgefleet.errors import MalformedInputError
from edgefleet.release_check import cpu_features
from edgefleet.trust.release import AgentRelease, LlamaBuild

WHEELS = {
    "llama/armv8.2-a+dotprod/llama.whl": "a" * 64,
    "llama/armv8-a/llama.whl": "b" * 64,
    "install.py": "c" * 64,
}
BUILDS = (
    LlamaBuild("armv8.2-a+dotprod", "llama/armv8.2-a+dotprod/llama.whl", ("asimddp",)),
    LlamaBuild("armv8-a", "llama/armv8-a/llama.whl", ()),
)
NOW = datetime(2026, 11, 29, tzinfo=UTC)

PI4 = "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
PI5 = (
    "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp "
    "asimdhp cpuid asimdrdm lrcpc dcpop asimddp\n"
)


def test_a_release_round_trips_and_picks_the_build_a_cpu_runs() -> None:
    release = AgentRelease("0.1.0", "aarch64", "3.11", NOW, WHEELS, BUILDS)
    assert AgentRelease.from_payload(release.to_payload()) == release
    assert release.build_for(cpu_features(PI5)).name == "armv8.2-a+dotprod"
    assert release.build_for(cpu_features(PI4)).name == "armv8-a"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"arch": "armv7l"}, "arch must be one of"),
        ({"files": {"../etc/passwd": "a" * 64, **WHEELS}}, "is not allowed"),
        ({"files": {"/abs": "a" * 64, **WHEELS}}, "is not allowed"),
        ({"files": {**WHEELS, "x": "nothex"}}, "no hex SHA-256"),
        ({"llama": (LlamaBuild("armv8-a", "llama/missing.whl", ()),)}, "not in the bundle"),
        ({"llama": ()}, "no llama.cpp build"),
        ({"python": "three"}, "python must be like"),
    ],
)
def test_a_malformed_release_is_refused_before_it_is_signed(
    change: dict[str, object], reason: str
) -> None:
    fields: dict[str, object] = {
        "version": "0.1.0", "arch": "aarch64", "python": "3.11", "created": NOW,
        "files": WHEELS, "llama": BUILDS,
    }  # fmt: skip
    with pytest.raises(MalformedInputError, match=reason):
        AgentRelease(**{**fields, **change})  # type: ignore[arg-type]
