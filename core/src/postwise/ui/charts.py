"""Charts drawn on the server as inline SVG: no script, no external library, and every chart
comes with the same numbers as a table (the page shows it under the chart)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

__all__ = ["Interval", "Series", "bar_chart", "forest_plot", "line_chart"]

_PALETTE = ("#0b5cad", "#a4161a", "#1d6b2f", "#7a4b00", "#5b2a86", "#00636b", "#5a5a5a")


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    values: Sequence[float]


@dataclass(frozen=True, slots=True)
class Interval:
    """One estimate with its interval (a variant's lift against control)."""

    label: str
    estimate: float
    low: float
    high: float


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.3g}"


def line_chart(
    labels: Sequence[str],
    series: Sequence[Series],
    *,
    title: str,
    threshold: tuple[str, float] | None = None,
    width: int = 720,
    height: int = 240,
) -> Markup:
    """Lines over ``labels``; ``threshold`` (name, value) draws a dashed reference line."""
    pad_l, pad_b, pad_t, pad_r = 56, 28, 12, 12
    values = [v for s in series for v in s.values]
    top = max([*values, threshold[1] if threshold else 0.0, 1e-9])
    plot_w, plot_h = width - pad_l - pad_r, height - pad_t - pad_b
    step = plot_w / max(len(labels) - 1, 1)

    def xy(i: int, v: float) -> tuple[float, float]:
        return pad_l + i * step, pad_t + plot_h * (1 - v / top)

    parts = [
        f'<svg viewBox="0 0 {width} {height}" width="100%" role="img" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>',
        f'<line x1="{pad_l}" y1="{pad_t + plot_h}" x2="{width - pad_r}" y2="{pad_t + plot_h}" '
        'stroke="#6b7683"/>',
        f'<text x="4" y="{pad_t + 10}">{escape(_fmt(top))}</text>',
        f'<text x="4" y="{pad_t + plot_h}">0</text>',
    ]
    for index in sorted({0, len(labels) // 2, len(labels) - 1}):
        if 0 <= index < len(labels):
            x, _ = xy(index, 0)
            parts.append(
                f'<text x="{x:.1f}" y="{height - 8}" text-anchor="middle">'
                f"{escape(labels[index])}</text>"
            )
    if threshold is not None:
        _, y = xy(0, threshold[1])
        parts.append(
            f'<line x1="{pad_l}" y1="{y:.1f}" x2="{width - pad_r}" y2="{y:.1f}" '
            'stroke="#a4161a" stroke-dasharray="6 4"/>'
            f'<text x="{width - pad_r}" y="{y - 4:.1f}" text-anchor="end">'
            f"{escape(threshold[0])}</text>"
        )
    for n, one in enumerate(series):
        colour = _PALETTE[n % len(_PALETTE)]
        points = " ".join(
            f"{x:.1f},{y:.1f}" for x, y in (xy(i, v) for i, v in enumerate(one.values))
        )
        parts.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>'
        )
        parts.append(
            f'<text x="{pad_l + 8 + 130 * n}" y="{pad_t + 12}" fill="{colour}">'
            f"■ {escape(one.name)}</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every value above is escaped or numeric


def bar_chart(items: Sequence[tuple[str, float]], *, title: str, width: int = 720) -> Markup:
    """Horizontal bars, one per (label, value)."""
    row, pad_l = 26, 200
    height = row * max(len(items), 1) + 10
    top = max([v for _, v in items] + [1e-9])
    parts = [
        f'<svg viewBox="0 0 {width} {height}" width="100%" role="img" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>'
    ]
    for i, (label, value) in enumerate(items):
        y = 5 + i * row
        w = (width - pad_l - 80) * value / top
        parts.append(
            f'<text x="4" y="{y + 15}">{escape(label[:30])}</text>'
            f'<rect x="{pad_l}" y="{y}" width="{w:.1f}" height="{row - 8}" fill="#0b5cad"/>'
            f'<text x="{pad_l + w + 6:.1f}" y="{y + 15}">{escape(_fmt(value))}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - escaped


def forest_plot(intervals: Sequence[Interval], *, title: str, width: int = 720) -> Markup:
    """Each estimate as a dot with its interval as a line, against a dashed zero line."""
    row, pad_l, pad_r = 34, 160, 20
    height = row * max(len(intervals), 1) + 30
    bound = max([abs(x) for i in intervals for x in (i.low, i.high, i.estimate)] + [1e-9])
    plot_w = width - pad_l - pad_r

    def x(v: float) -> float:
        return pad_l + plot_w * (v + bound) / (2 * bound)

    parts = [
        f'<svg viewBox="0 0 {width} {height}" width="100%" role="img" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>',
        f'<line x1="{x(0):.1f}" y1="4" x2="{x(0):.1f}" y2="{height - 22}" stroke="#6b7683" '
        'stroke-dasharray="4 4"/>',
        f'<text x="{x(-bound):.1f}" y="{height - 6}">{-bound:+.1%}</text>',
        f'<text x="{x(0):.1f}" y="{height - 6}" text-anchor="middle">0</text>',
        f'<text x="{x(bound):.1f}" y="{height - 6}" text-anchor="end">{bound:+.1%}</text>',
    ]
    for n, item in enumerate(intervals):
        y = 16 + n * row
        colour = "#1d6b2f" if item.low > 0 else "#a4161a" if item.high < 0 else "#0b5cad"
        parts.append(
            f'<text x="4" y="{y + 4}">{escape(item.label[:22])}</text>'
            f'<line x1="{x(item.low):.1f}" y1="{y}" x2="{x(item.high):.1f}" y2="{y}" '
            f'stroke="{colour}" stroke-width="3"/>'
            f'<circle cx="{x(item.estimate):.1f}" cy="{y}" r="5" fill="{colour}"/>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - escaped
