"""SVG drawings of the console, rendered on the server (no script, no inline style: the
page's Content-Security-Policy allows neither)."""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

from edgefleet.controller.catalog.quantization.views import VersionView

WIDTH, HEIGHT, MARGIN = 560, 300, 48
MIB = 1024 * 1024


def quantization_chart(versions: Sequence[VersionView]) -> Markup:
    """Size against perplexity increase, one point per evaluated variant (the source at 0);
    empty when no version of the family was evaluated."""
    points = [
        (v.length / MIB, float(v.evaluation.get("perplexity_increase_percent") or 0.0), v)
        for v in versions
        if v.evaluation
    ]
    if not points:
        return Markup("")
    sizes = [p[0] for p in points]
    increases = [p[1] for p in points] + [0.0]
    x_low, x_high = 0.0, max(sizes) * 1.1 or 1.0
    y_low, y_high = min(increases), max(increases) * 1.15 or 1.0

    def x(size: float) -> float:
        return MARGIN + (size - x_low) / (x_high - x_low) * (WIDTH - 2 * MARGIN)

    def y(increase: float) -> float:
        span = (y_high - y_low) or 1.0
        return HEIGHT - MARGIN - (increase - y_low) / span * (HEIGHT - 2 * MARGIN)

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        'aria-labelledby="chart-title chart-desc" xmlns="http://www.w3.org/2000/svg">',
        '<title id="chart-title">Size and quality of each variant</title>',
        '<desc id="chart-desc">Each point is a published variant: its file size in MiB '
        "(across) and how much its perplexity rose over the source model's, in percent "
        "(up). Lower and further left is better.</desc>",
        f'<line class="axis" x1="{MARGIN}" y1="{HEIGHT - MARGIN}" x2="{WIDTH - MARGIN}" '
        f'y2="{HEIGHT - MARGIN}"/>',
        f'<line class="axis" x1="{MARGIN}" y1="{MARGIN}" x2="{MARGIN}" y2="{HEIGHT - MARGIN}"/>',
        f'<text class="axis-label" x="{WIDTH / 2}" y="{HEIGHT - 10}" text-anchor="middle">'
        "size (MiB)</text>",
        f'<text class="axis-label" x="14" y="{HEIGHT / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {HEIGHT / 2})">perplexity increase (%)</text>',
    ]
    for tick in _ticks(x_low, x_high):
        parts.append(
            f'<text class="tick" x="{x(tick):.1f}" y="{HEIGHT - MARGIN + 16}" '
            f'text-anchor="middle">{tick:g}</text>'
        )
    for tick in _ticks(y_low, y_high):
        parts.append(
            f'<text class="tick" x="{MARGIN - 6}" y="{y(tick) + 4:.1f}" '
            f'text-anchor="end">{tick:g}</text>'
        )
    for size, increase, version in points:
        passed = (version.evaluation or {}).get("passed", True)
        label = escape(version.quantization or version.version)
        parts.append(
            f'<circle class="point {"passed" if passed else "failed"}" cx="{x(size):.1f}" '
            f'cy="{y(increase):.1f}" r="6"><title>{escape(version.version)}: '
            f"{size:.1f} MiB, {increase:+.2f} %</title></circle>"
            f'<text class="point-label" x="{x(size) + 9:.1f}" y="{y(increase) - 8:.1f}">'
            f"{label}</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every text above is escaped or a number


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    span = high - low
    if span <= 0:
        return [low]
    raw = span / count
    magnitude = 10 ** len(str(int(raw))) / 10 if raw >= 1 else 0.1
    step = max(round(raw / magnitude) * magnitude, magnitude)
    first = (low // step) * step
    return [round(first + i * step, 6) for i in range(count + 2) if low <= first + i * step <= high]
