"""The pipeline's report as a terminal table and a PNG chart (JSON is the report's own form)."""

from __future__ import annotations

from pathlib import Path

from edgefleet.controller.catalog.quantization.pipeline import Measurement, QuantizationReport
from edgefleet.errors import ConfigError

MIB = 1024 * 1024
CHART_FILE = "report.png"
COLUMNS = (
    ("variant", "<"), ("type", "<"), ("size MiB", ">"), ("smaller", ">"), ("RAM MiB", ">"),
    ("pp t/s", ">"), ("tg t/s", ">"), ("PPL", ">"), ("PPL +%", ">"), ("top-1", ">"),
    ("KL", ">"), ("gate", "<"),
)  # fmt: skip


def _row(m: Measurement, smaller: str, increase: str, verdict: str) -> list[str]:
    return [
        m.variant,
        m.quantization,
        f"{m.size_bytes / MIB:.1f}",
        smaller,
        f"{m.loaded_memory_bytes / MIB:.0f}",
        f"{m.prompt_tokens_per_second:.0f}",
        f"{m.generation_tokens_per_second:.1f}",
        f"{m.perplexity:.3f}",
        increase,
        "-" if m.top1_agreement is None else f"{m.top1_agreement * 100:.1f}%",
        "-" if m.kl_divergence is None else f"{m.kl_divergence:.4f}",
        verdict,
    ]


def format_table(report: QuantizationReport) -> str:
    """One line per file: the source first, then each variant with the gate's verdict."""
    rows = [_row(report.source, "-", "-", "source")]
    for v in report.variants:
        rows.append(
            _row(
                v.measurement,
                f"{v.size_reduction_percent:.1f}%",
                f"{v.perplexity_increase_percent:+.2f}",
                "pass" if v.passed else "REFUSED",
            )
        )
    header = [name for name, _ in COLUMNS]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(COLUMNS))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            f"{cell:{align}{width}}"
            for cell, (_, align), width in zip(cells, COLUMNS, widths, strict=True)
        ).rstrip()

    title = (
        f"{report.name} {report.version}: perplexity over {report.evaluated_tokens} of "
        f"{report.text_tokens} text tokens (windows of {report.context}), "
        f"{report.threads} threads on {report.machine}; "
        f"gate +{report.max_perplexity_increase_percent:g}% perplexity"
    )
    return "\n".join([title, line(header), *(line(r) for r in rows)])


def write_chart(report: QuantizationReport, out_dir: Path) -> Path:
    """Size against perplexity and against generation speed, one point per file."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ConfigError("the chart needs matplotlib: pip install 'edgefleet[quantize]'") from e
    points = [(report.source, None), *((v.measurement, v.passed) for v in report.variants)]
    figure, (quality, speed) = plt.subplots(1, 2, figsize=(11, 4.5))
    for m, passed in points:
        color = "black" if passed is None else ("tab:green" if passed else "tab:red")
        size = m.size_bytes / MIB
        for axis, value in ((quality, m.perplexity), (speed, m.generation_tokens_per_second)):
            axis.scatter(size, value, color=color, s=40)
            axis.annotate(m.variant, (size, value), textcoords="offset points", xytext=(5, 5))
    quality.set_xlabel("file size (MiB)")
    quality.set_ylabel(f"perplexity ({report.evaluated_tokens} tokens, lower is better)")
    speed.set_xlabel("file size (MiB)")
    speed.set_ylabel("generation tokens/s (higher is better)")
    for axis in (quality, speed):
        axis.grid(alpha=0.3)
        axis.margins(x=0.08, y=0.12)
    figure.suptitle(
        f"{report.name} {report.version}: size against quality and speed "
        f"(green passed the +{report.max_perplexity_increase_percent:g}% gate, red refused)"
    )
    figure.tight_layout()
    path = out_dir / CHART_FILE
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
