"""Small helpers of the operator dashboard's templates."""

from datetime import UTC, datetime
from typing import Any

from django import template
from django.utils.html import format_html
from django.utils.safestring import SafeString

register = template.Library()


@register.filter
def css_percent(value: object) -> str:
    """A width for a style attribute: a plain number, never localised (no decimal comma)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "0"
    return f"{min(100.0, max(0.0, number)):.3f}"


@register.simple_tag
def when(value: object) -> SafeString | str:
    """A moment in UTC, which ota/dashboard.js rewrites into the operator's own time zone."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return "-"
    if not isinstance(value, datetime):
        return "-"
    moment = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return format_html(
        '<time class="dash-time" datetime="{}">{}</time>',
        moment.isoformat(),
        moment.strftime("%Y-%m-%d %H:%M UTC"),
    )


BAR_HEIGHT = 18
LABEL_WIDTH = 190
CHART_WIDTH = 520


@register.simple_tag
def svg_bars(rows: list[tuple[str, int]], title: str, link: str = "") -> SafeString:
    """A horizontal bar chart as inline SVG: one labelled bar per (label, count).

    ``link`` with ``{}`` makes each label a link (the value URL-quoted into it).
    """
    from urllib.parse import quote

    top = max((n for _, n in rows), default=0) or 1
    span = CHART_WIDTH - LABEL_WIDTH - 50
    parts = []
    for i, (label, n) in enumerate(rows):
        y = i * (BAR_HEIGHT + 6)
        width = max(1.0, span * n / top) if n else 0.0
        text = format_html(
            '<text x="{}" y="{}" text-anchor="end">{}</text>', LABEL_WIDTH - 6, y + 13, label
        )
        if link:
            text = format_html('<a href="{}">{}</a>', link.format(quote(str(label))), text)
        parts.append(
            format_html(
                '<g class="dash-chart-row">{}<rect x="{}" y="{}" width="{}" height="{}" '
                'fill="#2b7bb9"><title>{}: {}</title></rect>'
                '<text x="{}" y="{}">{}</text></g>',
                text,
                LABEL_WIDTH,
                y,
                f"{width:.1f}",
                BAR_HEIGHT,
                label,
                n,
                f"{LABEL_WIDTH + width + 4:.1f}",
                y + 13,
                n,
            )
        )
    height = max(1, len(rows)) * (BAR_HEIGHT + 6)
    return format_html(
        '<svg class="dash-chart" role="img" aria-label="{}" width="{}" height="{}" '
        'viewBox="0 0 {} {}" xmlns="http://www.w3.org/2000/svg"><title>{}</title>{}</svg>',
        title,
        CHART_WIDTH,
        height,
        CHART_WIDTH,
        height,
        title,
        SafeString("".join(parts)),
    )


@register.simple_tag
def svg_comparison(chart: Any) -> SafeString:
    """Per arm, the median (a tick) inside its interquartile range (a box), on one scale:
    the engine's ``ComparisonChart`` figures drawn as inline SVG."""
    arms = [a for a in chart.arms if a.median is not None]
    if not arms:
        return SafeString("")
    points = [v for a in arms for v in (a.q1, a.median, a.q3) if v is not None]
    low, high = min(points), max(points)
    pad = (high - low) * 0.1 or abs(high) * 0.1 or 1.0
    low, high = low - pad, high + pad
    span = CHART_WIDTH - LABEL_WIDTH - 60

    def x(value: float) -> float:
        return LABEL_WIDTH + span * (value - low) / (high - low)

    rows = []
    row = BAR_HEIGHT + 14
    for i, arm in enumerate(arms):
        y = i * row + 4
        q1 = arm.q1 if arm.q1 is not None else arm.median
        q3 = arm.q3 if arm.q3 is not None else arm.median
        fill = "#90a4ae" if arm.baseline else "#2b7bb9"
        rows.append(
            format_html(
                '<g class="dash-arm-figure" data-arm="{}" data-median="{}">'
                '<text x="{}" y="{}" text-anchor="end">{}{} ({} devices)</text>'
                '<rect x="{}" y="{}" width="{}" height="{}" fill="{}" opacity="0.6">'
                "<title>{}: quartiles {} to {}</title></rect>"
                '<line x1="{}" x2="{}" y1="{}" y2="{}" stroke="#000" stroke-width="2">'
                "<title>{}: median {}</title></line>"
                '<text x="{}" y="{}">{}</text></g>',
                arm.arm,
                f"{arm.median:g}",
                LABEL_WIDTH - 6,
                y + 13,
                arm.arm,
                " (baseline)" if arm.baseline else "",
                arm.devices,
                f"{x(q1):.1f}",
                y,
                f"{max(1.0, x(q3) - x(q1)):.1f}",
                BAR_HEIGHT,
                fill,
                arm.arm,
                f"{q1:.4g}",
                f"{q3:.4g}",
                f"{x(arm.median):.1f}",
                f"{x(arm.median):.1f}",
                y - 2,
                y + BAR_HEIGHT + 2,
                arm.arm,
                f"{arm.median:.4g}",
                f"{x(q3) + 6:.1f}",
                y + 13,
                f"{arm.median:.4g}",
            )
        )
    axis_y = len(arms) * row + 6
    height = axis_y + 16
    axis = format_html(
        '<line x1="{}" x2="{}" y1="{}" y2="{}" stroke="currentColor" stroke-width="0.5"/>'
        '<text x="{}" y="{}" text-anchor="start">{}</text>'
        '<text x="{}" y="{}" text-anchor="end">{}</text>',
        LABEL_WIDTH,
        LABEL_WIDTH + span,
        axis_y,
        axis_y,
        LABEL_WIDTH,
        axis_y + 12,
        f"{low:.4g}",
        LABEL_WIDTH + span,
        axis_y + 12,
        f"{high:.4g} {chart.metric}",
    )
    return format_html(
        '<svg class="dash-chart dash-comparison" role="img" aria-label="{}" width="{}" '
        'height="{}" viewBox="0 0 {} {}" xmlns="http://www.w3.org/2000/svg">'
        "<title>{}</title>{}{}</svg>",
        chart.sentence,
        CHART_WIDTH,
        height,
        CHART_WIDTH,
        height,
        chart.title,
        SafeString("".join(rows)),
        axis,
    )
