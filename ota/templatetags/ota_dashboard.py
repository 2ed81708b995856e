"""Small helpers of the operator dashboard's templates."""

from datetime import UTC, datetime

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
