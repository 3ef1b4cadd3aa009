"""The quantization pipeline on real weights: an F16 file made from the bundled SmolLM2,
quantized to q4_0, q5_1 and q8_0, measured, gated and reported."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from edgefleet.bundled import bundled_model_path
from edgefleet.controller.catalog.quantization.pipeline import (
    EVALUATION_TEXT,
    QuantizationReport,
    gate,
    run_pipeline,
)
from edgefleet.controller.catalog.quantization.report import format_table, write_chart
from edgefleet.controller.ctl.main import main as edgefleetctl
from edgefleet.errors import MalformedInputError

pytestmark = pytest.mark.model

# Perplexity may come out a hair better for a coarser type on ~1,000 scored tokens; allow
# this much (relative) disorder between neighbours. Measured gaps are far larger.
PERPLEXITY_TOLERANCE = 0.005


@pytest.fixture(scope="module")
def f16(smollm2_f16: Path) -> Path:
    return smollm2_f16


@pytest.fixture(scope="module")
def report(f16: Path, tmp_path_factory: pytest.TempPathFactory) -> QuantizationReport:
    out = tmp_path_factory.mktemp("variants")
    return run_pipeline(
        f16,
        out,
        "smollm2",
        "1.0.0",
        ["q4_0", "q5_1", "q8_0"],
        max_perplexity_increase=1000,
        repetitions=1,
    )


def test_sizes_shrink_with_fewer_bits(report: QuantizationReport) -> None:
    sizes = {v.variant: v.measurement.size_bytes for v in report.variants}
    assert sizes["q4_0"] < sizes["q5_1"] < sizes["q8_0"] < report.source.size_bytes
    assert report.source.quantization == "F16"
    assert [v.measurement.quantization for v in report.variants] == ["Q4_0", "Q5_1", "Q8_0"]


def test_perplexity_rises_as_bits_fall(report: QuantizationReport) -> None:
    ppl = {v.variant: v.measurement.perplexity for v in report.variants}
    ordered = [report.source.perplexity, ppl["q8_0"], ppl["q5_1"], ppl["q4_0"]]
    for better, worse in zip(ordered, ordered[1:], strict=False):
        assert better <= worse * (1 + PERPLEXITY_TOLERANCE), ordered
    assert report.text_tokens >= 2000 and report.evaluated_tokens >= 1000
    assert 1 < report.source.perplexity < 1000


def test_variants_agree_with_the_source_as_their_bits_allow(report: QuantizationReport) -> None:
    by = {v.variant: v.measurement for v in report.variants}
    assert by["q8_0"].top1_agreement is not None and by["q8_0"].top1_agreement > 0.9
    assert by["q8_0"].kl_divergence is not None and by["q4_0"].kl_divergence is not None
    assert by["q8_0"].kl_divergence < by["q4_0"].kl_divergence
    assert report.source.top1_agreement is None


def test_every_file_is_measured(report: QuantizationReport) -> None:
    for m in [report.source, *(v.measurement for v in report.variants)]:
        assert m.loaded_memory_bytes > 0
        assert m.prompt_tokens_per_second > 0 and m.generation_tokens_per_second > 0
        assert len(m.sha256) == 64


def test_a_tight_gate_refuses_a_variant_with_the_numbers(report: QuantizationReport) -> None:
    q4_0 = next(v for v in report.variants if v.variant == "q4_0")
    tight = gate(report.source, q4_0.measurement, q4_0.perplexity_increase_percent / 2)
    assert not tight.passed
    assert (
        "beyond the gate" in tight.reason and f"{q4_0.measurement.perplexity:.3f}" in tight.reason
    )
    assert gate(report.source, q4_0.measurement, q4_0.perplexity_increase_percent + 1).passed


def test_the_report_round_trips_and_draws(report: QuantizationReport, tmp_path: Path) -> None:
    path = report.write(tmp_path)
    assert QuantizationReport.from_dict(json.loads(path.read_text())) == report
    table = format_table(report)
    assert all(name in table for name in ("source", "q4_0", "q5_1", "q8_0", "PPL"))
    assert write_chart(report, tmp_path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_file_that_is_not_gguf_is_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.gguf"
    text.write_text("not a model\n" * 100)
    with pytest.raises(MalformedInputError, match="not a GGUF file"):
        run_pipeline(text, tmp_path / "out", "m", "1.0.0", ["q4_0"])
    assert not (tmp_path / "out").exists()


def test_a_truncated_model_is_refused_cleanly(f16: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(f16.read_bytes()[: f16.stat().st_size // 2])
    out = tmp_path / "out"
    with pytest.raises(MalformedInputError, match="GGUF file is truncated"):
        run_pipeline(cut, out, "m", "1.0.0", ["q4_0"])
    assert not out.exists()  # refused before any child ran or any file was made


def test_a_quantized_source_is_refused_unless_allowed(tmp_path: Path) -> None:
    """ "F16 or better": a Q4_1 source compounds its loss into every variant."""
    out = tmp_path / "out"
    with pytest.raises(
        MalformedInputError, match=r"already quantized \(Q4_1\).*--allow-requantize"
    ):
        run_pipeline(bundled_model_path(), out, "m", "1.0.0", ["q4_0"])
    assert not out.exists()


def test_a_variant_no_smaller_than_its_source_is_refused(report: QuantizationReport) -> None:
    """A q8_0 of a 4-bit source is larger than it: it costs quality and saves nothing."""
    q4_0 = next(v for v in report.variants if v.variant == "q4_0")
    bloated = replace(q4_0.measurement, size_bytes=report.source.size_bytes + 1)
    verdict = gate(report.source, bloated, 1000)
    assert not verdict.passed
    assert verdict.reason.startswith("1.00x the source's size: a variant must be smaller")


def test_the_cli_refuses_what_the_gate_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`models quantize --no-publish` with a gate no 4-bit variant meets: exit 1, one line.
    (The bundled Q4_1 file is the source here: quicker to measure than F16.)"""
    out, text = tmp_path / "out", tmp_path / "short.txt"
    text.write_text(EVALUATION_TEXT.read_text()[:1500])  # a few 64-token windows: quick
    source = str(bundled_model_path())
    argv = ["models", "quantize", source, "--name", "smollm2", "--version", "1.0.0"]
    argv += ["--variants", "q4_0", "--max-ppl-increase", "0.01", "--repetitions", "1"]
    argv += ["--allow-requantize"]
    argv += ["--context", "64", "--text", str(text)]
    argv += ["--no-publish", "--out", str(out)]
    assert edgefleetctl(argv) == 1
    captured = capsys.readouterr()
    assert "REFUSED" in captured.out
    assert "refused q4_0: perplexity" in captured.err
    assert (
        captured.err.strip()
        .splitlines()[-1]
        .startswith("edgefleetctl: error: no variant passed the +0.01% gate")
    )
    assert (out / "report.json").exists() and (out / "report.png").exists()
