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
