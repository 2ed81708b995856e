"""The admin's devices list (``/admin/fleet/device/``): filters from the query string, the
page's rows as plain values and their HTML written in one pass. The admin's ChangeList
rendered each of the 100 rows cell by cell through its templates; this page costs a fixed
number of queries (count, rows, the filters' choices) and a few string joins.

The query string is the admin's own (``q``, ``p``, ``o``, ``online__exact``, ``hardware``,
``groups__id__exact``, ``tags__id__exact``, ``failing``), so links made for the admin's
list (the overview's, bookmarks) keep working; the list's actions still post to the
admin's ChangeList (ota/admin.py).

``o`` sorts as the admin's does: column numbers joined by dots, ``-`` for descending
(``o=6`` oldest last seen first, ``o=-6.2``), counted as the admin's ChangeList counts
them, so the action checkbox is column 0 for those who may run actions. Every sort ends
with the device id, so pages neither repeat nor skip a device."""

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple
from urllib.parse import urlencode

from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db.models import F, OrderBy, QuerySet, Value
from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from fleet.models import Device, DeviceEvent, Group, Tag
from fleet.selectors import installed_models
from ota import rollout_dashboard as dash
from ota.models import RolloutDevice, RolloutStatus

PER_PAGE = 100
MAX_SEARCH = 150
FAILING_CHOICES: tuple[tuple[str, str], ...] = (
    ("rollout", "failed in a live rollout"),
    ("day", "reported a failure in the last 24 h"),
)
_BOOLEAN = {"1": True, "true": True, "0": False, "false": False}
# The admin's own parameters, which mean nothing here: left alone without a word.
_ADMIN_PARAMETERS = frozenset({"e", "all", "_facets", "_changelist_filters"})


class Column(NamedTuple):
    name: str
    label: str
    sortable: bool


# The registry admin's list_display (fleet/admin.py), in its order: what ``o`` counts.
# "installed" is read from each device's JSON report: sorting by it would read them all.
COLUMNS_SHOWN = (
    Column("device_id", "Device id", True),
    Column("hardware", "Hardware", True),
    Column("installed", "Installed models", False),
    Column("online", "Online", True),
    Column("agent_version", "Agent version", True),
    Column("last_seen_at", "Last seen", True),
    Column("revoked_at", "Revoked", True),
)
_ORDER = re.compile(r"-?[0-9]{1,3}(?:\.-?[0-9]{1,3}){0,7}", re.ASCII)


def failing(queryset: QuerySet[Device], which: str) -> QuerySet[Device]:
    """The devices failing in a live rollout (``rollout``) or that reported a failure in
    the last day (``day``, through the events' partial failure index)."""
    if which == "rollout":
        return queryset.filter(
            pk__in=RolloutDevice.objects.filter(
                state__in=dash.FAILURE_STATES,
                rollout__status__in=[RolloutStatus.RUNNING, RolloutStatus.PAUSED],
            ).values("device_id")
        )
    if which == "day":
        return queryset.filter(
            pk__in=DeviceEvent.objects.filter(
                received_at__gte=timezone.now() - dash.FAILURE_WINDOW,
                phase__in=list(dash.FAILURE_PHASES),
            ).values("device_id")
        )
    return queryset


@dataclass(frozen=True)
class DeviceFilters:
    search: str = ""
    online: bool | None = None
    failing: str = ""
    hardware: str = ""
    group: int | None = None
    tag: int | None = None
    # The admin's ``o``: (column number, descending), first key first; () is by device id.
    sort: tuple[tuple[int, bool], ...] = ()
    # The number ``o`` gives the first column shown: 1 when the action checkbox is column 0.
    first: int = 0

    @classmethod
    def parse(cls, query: Any, *, first: int = 0) -> tuple["DeviceFilters", int, list[str]]:
        """The filters and the page number from the query string, and what was ignored
        (said on the page): a bad value never fails the page. ``first`` is the number the
        admin's ``o`` gives the device id column."""
        problems: list[str] = []

        def number(name: str) -> int | None:
            raw = query.get(name, "").strip()
            if not raw:
                return None
            if raw.isascii() and raw.isdigit() and len(raw) <= 18:
                return int(raw)
            problems.append(f"{name} must be a number: {raw[:20]!r} ignored")
            return None

        online_raw = query.get("online__exact", "").strip()
        online = _BOOLEAN.get(online_raw.lower())
        if online_raw and online is None:
            problems.append(f"online__exact must be 1 or 0: {online_raw[:20]!r} ignored")
        which = query.get("failing", "").strip()
        if which and which not in dict(FAILING_CHOICES):
            problems.append(f"unknown failing filter {which[:40]!r} ignored")
            which = ""
        known = {"q", "p", "o", "online__exact", "failing", "hardware", "hardware__exact"}
        known |= {"groups__id__exact", "tags__id__exact"}
        for name in sorted(set(query) - known - _ADMIN_PARAMETERS):
            problems.append(f"unknown parameter {name[:40]!r} ignored")
        hardware = query.get("hardware", "") or query.get("hardware__exact", "")
        filters = cls(
            search=query.get("q", "").strip()[:MAX_SEARCH],
            online=online,
            failing=which,
            hardware=hardware.strip()[:MAX_SEARCH],
            group=number("groups__id__exact"),
            tag=number("tags__id__exact"),
            sort=_sort(query.get("o", ""), first, problems),
            first=first,
        )
        return filters, number("p") or 1, problems

    def as_query(self, **change: object) -> dict[str, str]:
        """The filters as the query string's parameters, with ``change`` applied (a value
        of None drops that filter)."""
        values: dict[str, object] = {
            "q": self.search,
            "online__exact": None if self.online is None else int(self.online),
            "failing": self.failing,
            "hardware": self.hardware,
            "groups__id__exact": self.group,
            "tags__id__exact": self.tag,
            "o": _order_value(self.sort),
        }
        values.update(change)
        return {k: str(v) for k, v in values.items() if v is not None and v != ""}

    def link(self, **change: object) -> str:
        return "?" + urlencode(self.as_query(**change))

    def active(self) -> bool:
        return self.as_query(q=None, o=None) != {}

    def ordering(self) -> list[OrderBy]:
        """The rows' order: the sorted columns, then the device id (unique)."""
        out: list[OrderBy] = []
        for number, descending in self.sort:
            name = COLUMNS_SHOWN[number - self.first].name
            if name == "device_id":
                break  # unique: any key after it changes nothing
            # Never-seen (or never-revoked) devices after the others ascending, before them
            # descending, on every database (PostgreSQL's own default).
            out.append(
                F(name).desc(nulls_first=True) if descending else F(name).asc(nulls_last=True)
            )
        device_id = dict(self.sort).get(self.first)
        out.append(F("device_id").desc() if device_id else F("device_id").asc())
        return out

    def headers(self) -> list["Header"]:
        """The table's column headers, with the admin's sorting links: a click puts that
        column first (or turns it around when it is first already); the small links
        turn a sorted column around or take it out of the sort."""
        current = dict(self.sort or ((self.first, False),))  # unsorted is by device id
        out = []
        for index, column in enumerate(COLUMNS_SHOWN):
            number = self.first + index
            if not column.sortable:
                out.append(Header(column, "", "", "", "", 0))
                continue
            flipped = number in current and not current[number]
            primary = [(number, flipped)] + [(n, d) for n, d in current.items() if n != number]
            toggle = [(n, (not d) if n == number else d) for n, d in current.items()]
            rest = [(n, d) for n, d in current.items() if n != number]
            state = ""
            if number in current:
                state = "descending" if current[number] else "ascending"
            out.append(
                Header(
                    column,
                    state,
                    self.link(o=_order_value(primary)),
                    self.link(o=_order_value(toggle)) if state else "",
                    self.link(o=_order_value(rest) or None) if state else "",
                    list(current).index(number) + 1 if state and len(current) > 1 else 0,
                )
            )
        return out


class Header(NamedTuple):
    column: Column
    sorted: str  # "ascending", "descending" or "" (the admin's CSS classes)
    link: str  # to sort by this column first
    toggle: str
    remove: str
    priority: int  # its place in a sort by several columns, else 0


def _order_value(sort: Iterable[tuple[int, bool]]) -> str:
    return ".".join(f"-{n}" if descending else str(n) for n, descending in sort)


def _sort(raw: str, first: int, problems: list[str]) -> tuple[tuple[int, bool], ...]:
    """The admin's ``o`` (``6``, ``-6.2``): each sortable column once, or nothing at all
    when any part is not one (said in ``problems``)."""
    if raw == "":
        return ()
    if not _ORDER.fullmatch(raw):
        problems.append(f"o must be column numbers such as 6 or -6.2: {raw[:20]!r} ignored")
        return ()
    sort: dict[int, bool] = {}
    for part in raw.split("."):
        number = int(part.lstrip("-"))
        index = number - first
        if not 0 <= index < len(COLUMNS_SHOWN) or not COLUMNS_SHOWN[index].sortable:
            problems.append(f"o: no sortable column {number}: {raw[:20]!r} ignored")
            return ()
        sort.setdefault(number, part.startswith("-"))
    return tuple(sort.items())


def devices(f: DeviceFilters) -> QuerySet[Device]:
    """The devices the filters select, in the list's order (``o``, then the device id)."""
    qs = Device.objects.all()
    if f.search:
        qs = qs.filter(device_id__icontains=f.search)
    if f.online is not None:
        qs = qs.filter(online=f.online)
    if f.hardware:
        qs = qs.filter(hardware=f.hardware)
    if f.group is not None:
        qs = qs.filter(groups__id=f.group)
    if f.tag is not None:
        qs = qs.filter(tags__id=f.tag)
    return failing(qs, f.failing).order_by(*f.ordering())


COLUMNS = (
    "pk",
    "device_id",
    "hardware",
    "reported",
    "online",
    "agent_version",
    "last_seen_at",
    "revoked_at",
)


@dataclass(frozen=True)
class Choice:
    label: str
    link: str
    selected: bool


@dataclass(frozen=True)
class Filter:
    title: str
    choices: list[Choice]


def filter_choices(f: DeviceFilters) -> list[Filter]:
    """The sidebar's filters, each with its links (two queries: the hardware seen in the
    fleet; the groups and tags, in one)."""
    hardware = list(
        Device.objects.order_by("hardware").values_list("hardware", flat=True).distinct()
    )
    labels = Group.objects.values_list(Value("group"), "pk", "name").union(
        Tag.objects.values_list(Value("tag"), "pk", "name"), all=True
    )
    groups: list[tuple[int, str]] = []
    tags: list[tuple[int, str]] = []
    for kind, pk, name in sorted(labels, key=lambda row: row[2]):
        (groups if kind == "group" else tags).append((pk, name))

    def every(name: str, current: object) -> Choice:
        return Choice("All", f.link(**{name: None}), current in (None, ""))

    out = [
        Filter(
            "online",
            [
                every("online__exact", f.online),
                Choice("Yes", f.link(online__exact=1), f.online is True),
                Choice("No", f.link(online__exact=0), f.online is False),
            ],
        ),
        Filter(
            "updates",
            [every("failing", f.failing)]
            + [Choice(label, f.link(failing=v), f.failing == v) for v, label in FAILING_CHOICES],
        ),
        Filter(
            "hardware",
            [every("hardware", f.hardware)]
            + [Choice(h, f.link(hardware=h), f.hardware == h) for h in hardware],
        ),
    ]
    for title, name, current, rows in (
        ("groups", "groups__id__exact", f.group, groups),
        ("tags", "tags__id__exact", f.tag, tags),
    ):
        if rows:
            out.append(
                Filter(
                    title,
                    [every(name, current)]
                    + [Choice(label, f.link(**{name: pk}), current == pk) for pk, label in rows],
                )
            )
    return out


def _moment(value: datetime | None) -> str:
    """As the dashboard's ``when`` tag writes it: UTC, rewritten by ota/dashboard.js."""
    if value is None:
        return "-"
    moment = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return (
        f'<time class="dash-time" datetime="{moment.isoformat()}">'
        f"{moment.strftime('%Y-%m-%d %H:%M UTC')}</time>"
    )


def rows_html(
    rows: list[tuple[Any, ...]],
    *,
    change_prefix: str,
    checkbox_label: str | None,
    icons: Mapping[bool, str],
) -> SafeString:
    """The table's rows, every value escaped. ``checkbox_label`` is the admin's "Select
    this object for an action - {}" (its action script finds the boxes by class), or None
    for those who may run no action."""
    out = []
    for pk, device_id, hardware, reported, online, agent, seen, revoked in rows:
        name = escape(device_id)
        installed = ", ".join(f"{n} {v}" for n, v in installed_models(reported)) or "-"
        box = ""
        if checkbox_label is not None:
            label = escape(checkbox_label.format(device_id))
            box = (
                f'<td class="action-checkbox"><input type="checkbox" '
                f'name="{ACTION_CHECKBOX_NAME}" value="{pk}" class="action-select" '
                f'aria-label="{label}"></td>'
            )
        out.append(
            f"<tr>{box}"
            f'<th class="field-device_id"><a href="{change_prefix}{pk}/change/">{name}</a></th>'
            f'<td class="field-hardware">{escape(hardware)}</td>'
            f'<td class="field-installed">{escape(installed)}</td>'
            f'<td class="field-online">{icons[bool(online)]}</td>'
            f'<td class="field-agent_version">{escape(agent) or "-"}</td>'
            f'<td class="field-last_seen_at">{_moment(seen)}</td>'
            f'<td class="field-revoked_at">{_moment(revoked)}</td></tr>'
        )
    return mark_safe("\n".join(out))  # noqa: S308 - every value above is escaped
