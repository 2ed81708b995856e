"""Small helpers of the operator dashboard's templates."""

from collections.abc import Iterable
from datetime import UTC, datetime
from html import escape as _escape
from typing import Any
from urllib.parse import quote

from django import template
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext as _

from ota.models import RolloutDeviceState, RolloutStatus

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
    return SafeString(_time(value))


def _time(value: datetime) -> str:
    # Only digits and separators: nothing to escape.
    moment = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return (
        f'<time class="dash-time" datetime="{moment.isoformat()}">'
        f"{moment:%Y-%m-%d %H:%M} UTC</time>"
    )


# --- table bodies of the detail pages -------------------------------------------------------
# Written here rather than looped over in the templates: the rows are plain values read
# with values_list, and a page of them costs one string join instead of a template loop
# with a URL reversal and a tag per cell.

_STATE_LABELS = dict(RolloutDeviceState.choices)
_STATUS_LABELS = dict(RolloutStatus.choices)


def _admin_url(name: str) -> str:
    """The admin change page's URL of primary key 0, as a prefix to add others to."""
    return reverse(name, args=[0]).removesuffix("0/change/")


def escape(value: object) -> str:
    """HTML-escaped text of a plain value read from the database (the standard library's
    escape, as Django's own: without its lazy-string wrapper, costly row after row)."""
    return _escape(str(value))


def _or_dash(value: object) -> str:
    return escape(value) if value not in (None, "") else "-"


@register.simple_tag
def devices_rows(rows: Iterable[tuple[Any, ...]]) -> SafeString:
    """The rollout page's devices table body (``DEVICE_ROW_COLUMNS`` of each row)."""
    devices = _admin_url("admin:fleet_device_change")
    out = [
        f'<tr><td><a href="{devices}{pk}/change/">{escape(device_id)}</a></td>'
        f"<td>{escape(hardware)}</td><td>{escape(arm)}</td>"
        f"<td>{escape(_STATE_LABELS.get(state, state))}</td><td>{_or_dash(phase)}</td>"
        f"<td>{_or_dash(code)}</td><td>{attempts}</td>"
        f"<td>{_time(notified) if notified else '-'}</td></tr>"
        for pk, device_id, hardware, arm, state, phase, code, attempts, notified in rows
    ]
    if not out:
        return SafeString('<tr><td colspan="8">No device matches.</td></tr>')
    return SafeString("".join(out))


@register.simple_tag
def history_rows(history: Iterable[Any]) -> SafeString:
    """The device page's update history (``HistoryRow``s), newest first."""
    rollouts = _admin_url("admin:ota_rollout_change")
    out = []
    for e in history:
        code = f' <span class="dash-code">{escape(e.code)}</span>' if e.code else ""
        if e.rollout_pk:
            where = f'in <a href="{rollouts}{e.rollout_pk}/change/">{escape(e.rollout_id)}</a>'
        else:
            where = f"in {escape(e.rollout_id)}" if e.rollout_id else ""
        detail = f'<span class="dash-note">{escape(e.detail)}</span>' if e.detail else ""
        out.append(
            f'<li class="{"dash-event-failed" if e.failed else ""}" '
            f'data-phase="{escape(e.phase)}"><span class="dash-when">{_time(e.at)}</span>\n'
            f"    <strong>{_or_dash(e.model)}</strong> {escape(e.phase)}{code}\n"
            f"    {where}\n    {detail}</li>\n"
        )
    return SafeString("".join(out) or "<li>No update event yet.</li>")


@register.simple_tag
def touched_rows(rows: Iterable[tuple[Any, ...]]) -> SafeString:
    """The device page's rollouts (``fleet_pages.TOUCHED_COLUMNS`` of each row)."""
    rollouts = _admin_url("admin:ota_rollout_change")
    out = [
        f'<tr><td><a href="{rollouts}{pk}/change/">r-{pk}</a> '
        f'<span class="dash-badge dash-badge-{escape(status)}">'
        f"{escape(_STATUS_LABELS.get(status, status))}</span></td>"
        f"<td>{escape(model)}</td><td>{escape(arm)}</td><td>{_or_dash(version)}</td>"
        f"<td>{escape(_STATE_LABELS.get(state, state))}</td><td>{_or_dash(code)}</td>"
        f"<td>{attempts}</td></tr>"
        for pk, status, model, arm, version, state, code, attempts in rows
    ]
    return SafeString("".join(out) or '<tr><td colspan="7">No rollout has targeted it.</td></tr>')


@register.simple_tag
def certificate_rows(rows: Iterable[tuple[Any, ...]]) -> SafeString:
    """The device page's certificates (``fleet_pages.CERTIFICATE_COLUMNS`` of each row)."""
    out = [
        f"<tr><td><code>{escape(serial)}</code></td><td>{_when_or_dash(issued)}</td>"
        f"<td>{_when_or_dash(not_after)}</td><td>{_when_or_dash(revoked)}</td></tr>"
        for serial, issued, not_after, revoked in rows
    ]
    return SafeString("".join(out) or '<tr><td colspan="4">No certificate issued.</td></tr>')


def _when_or_dash(value: object) -> str:
    return _time(value) if isinstance(value, datetime) else "-"


@register.simple_tag(takes_context=True)
def nav_sidebar(context: template.Context) -> SafeString:
    """The admin's navigation sidebar (admin/nav_sidebar.html with admin/app_list.html),
    the same markup written in one pass: the two templates cost a detail page more than
    its own rows."""
    request = context.get("request")
    path = quote(request.path, safe="/") if request is not None else ""
    apps = []
    for app in context.get("available_apps") or ():
        rows = []
        for model in app["models"]:
            name = escape(model["object_name"].lower())
            label = f"{escape(app['app_label'])}-{name}"
            url = model.get("admin_url")
            current = bool(url) and url in path
            aria = ' aria-current="page"' if current else ""
            link = (
                f'<a href="{escape(url)}"{aria}>{escape(model["name"])}</a>'
                if url
                else escape(model["name"])
            )
            add = (
                f'<td><a href="{escape(model["add_url"])}" class="addlink" '
                f'aria-describedby="{label}">{escape(_("Add"))}</a></td>'
                if model.get("add_url")
                else "<td></td>"
            )
            rows.append(
                f'<tr class="model-{name}{" current-model" if current else ""}">'
                f'<th scope="row" id="{label}">{link}</th>{add}</tr>'
            )
        current_app = " current-app" if app["app_url"] in path else ""
        apps.append(
            f'<div class="app-{escape(app["app_label"])} module{current_app}"><table>'
            f'<caption><a href="{escape(app["app_url"])}" class="section">'
            f"{escape(app['name'])}</a></caption>"
            f'<thead class="visually-hidden"><tr><th scope="col">{escape(_("Model name"))}</th>'
            f'<th scope="col">{escape(_("Add link"))}</th>'
            f'<th scope="col">{escape(_("Change or view list link"))}</th></tr></thead>'
            f"{''.join(rows)}</table></div>"
        )
    listed = "".join(apps) or (
        f"<p>{escape(_('You don’t have permission to view or edit anything.'))}</p>"
    )
    return SafeString(
        f'<button class="sticky toggle-nav-sidebar" id="toggle-nav-sidebar" '
        f'aria-label="{escape(_("Toggle navigation"))}"></button>'
        f'<nav class="sticky" id="nav-sidebar" aria-label="{escape(_("Sidebar"))}">'
        f'<input type="search" id="nav-filter" '
        f'placeholder="{escape(_("Start typing to filter…"))}" '
        f'aria-label="{escape(_("Filter navigation items"))}">{listed}</nav>'
    )


BAR_HEIGHT = 18
LABEL_WIDTH = 190
CHART_WIDTH = 520


@register.simple_tag
def svg_bars(rows: list[tuple[str, int]], title: str, link: str = "") -> SafeString:
    """A horizontal bar chart as inline SVG: one labelled bar per (label, count).

    ``link`` with ``{}`` makes each label a link (the value URL-quoted into it).
    """
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
