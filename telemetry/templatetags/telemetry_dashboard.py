"""The device page's telemetry sparklines: per model metric, the device's recent values
as a small inline SVG line (one query: the device's newest samples)."""

from collections import defaultdict
from typing import Any

from django import template
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from telemetry.selectors import device_recent_samples

register = template.Library()
SAMPLES = 500
WIDTH = 180
HEIGHT = 32


def _line(values: list[float]) -> str:
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    step = WIDTH / max(1, len(values) - 1)
    return " ".join(
        f"{i * step:.1f},{HEIGHT - 2 - (v - low) / span * (HEIGHT - 4):.1f}"
        for i, v in enumerate(values)
    )


@register.simple_tag
def device_sparklines(device: Any) -> SafeString:
    """A table row per (model, version, metric) of the device's newest samples."""
    series: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for model, version, metric, value in reversed(
        list(
            device_recent_samples(device_pk=device.pk, limit=SAMPLES).values_list(
                "model", "version", "metric", "value"
            )
        )
    ):
        series[(model, version, metric)].append(value)
    if not series:
        return format_html('<p class="dash-note">{}</p>', "No telemetry from this device yet.")
    rows = format_html_join(
        "",
        '<tr data-metric="{}"><td>{}</td><td>{}</td><td>{}</td><td>'
        '<svg class="dash-spark" role="img" aria-label="{}" width="{}" height="{}" '
        'viewBox="0 0 {} {}" xmlns="http://www.w3.org/2000/svg"><polyline fill="none" '
        'stroke="#2b7bb9" stroke-width="1.5" points="{}"/></svg></td><td>{}</td><td>{} to {}</td>'
        "<td>{}</td></tr>",
        (
            (
                metric,
                model,
                version,
                metric,
                f"{metric} of {model} {version}, {len(values)} samples",
                WIDTH,
                HEIGHT,
                WIDTH,
                HEIGHT,
                _line(values),
                f"{values[-1]:.4g}",
                f"{min(values):.4g}",
                f"{max(values):.4g}",
                len(values),
            )
            for (model, version, metric), values in sorted(series.items())
        ),
    )
    return format_html(
        '<table class="dash-table" id="dash-telemetry"><thead><tr><th>Model</th><th>Version</th>'
        "<th>Metric</th><th>Recent values</th><th>Last</th><th>Range</th><th>Samples</th>"
        "</tr></thead><tbody>{}</tbody></table>",
        rows,
    )
