"""Reads of the fleet registry."""

from collections import Counter
from collections.abc import Iterable

from django.db import connection
from django.db.models import QuerySet

from device_agent.protocol.messages import stored_models
from fleet.models import Device, DynamicGroup


def device_list(
    *,
    hardware: str | None = None,
    tags: Iterable[str] = (),
    group: str | None = None,
    online: bool | None = None,
    revoked: bool | None = None,
    prefix: str | None = None,
) -> QuerySet[Device]:
    """Devices matching every filter given; each filter is one indexed condition."""
    qs = Device.objects.all()
    if hardware:
        qs = qs.filter(hardware=hardware)
    for tag in tags:
        qs = qs.filter(tags__name=tag)
    if group:
        qs = qs.filter(groups__name=group)
    if online is not None:
        qs = qs.filter(online=online)
    if revoked is not None:
        qs = qs.filter(revoked_at__isnull=not revoked)
    if prefix:
        qs = qs.filter(device_id__startswith=prefix)
    return qs


def dynamic_group_devices(group: DynamicGroup) -> QuerySet[Device]:
    """The devices a dynamic group selects now: any of its hardware, all of its tags."""
    qs = Device.objects.enabled()
    if group.hardware:
        qs = qs.filter(hardware__in=list(group.hardware))
    for tag in group.tags:
        qs = qs.filter(tags__name=tag)
    return qs


def installed_models(reported: object) -> list[tuple[str, str]]:
    """(model, version) pairs from a device's last reported state, in its order; odd
    entries of an old or hostile report are left out, never raised on."""
    return [(m.name, m.version) for m in stored_models(reported) if m.version is not None]


# Each enabled device's (model, version) entries as installed_models reads them (an
# entry with a string name and a string version), or one row of NULLs when it has none.
_INSTALLED_COUNTS_SQL = """
SELECT e.entry->>'name', e.entry->>'version', count(*)
FROM {table} d
LEFT JOIN LATERAL (
    SELECT entry FROM jsonb_array_elements(
        CASE WHEN jsonb_typeof(d.reported->'models') = 'array'
        THEN d.reported->'models' ELSE '[]'::jsonb END
    ) AS entry
    WHERE jsonb_typeof(entry->'name') = 'string' AND jsonb_typeof(entry->'version') = 'string'
) e ON true
WHERE d.revoked_at IS NULL
GROUP BY 1, 2
"""


def installed_counts() -> tuple[Counter[tuple[str, str]], int]:
    """Over the enabled devices: how many report each (model, version) installed, and how
    many report none. Counted in PostgreSQL where the fleet lives (one grouped query, no
    document sent to Python); elsewhere by ``installed_counts_scan``, which it matches."""
    if connection.vendor != "postgresql":
        return installed_counts_scan()
    counts: Counter[tuple[str, str]] = Counter()
    none = 0
    with connection.cursor() as cursor:
        cursor.execute(_INSTALLED_COUNTS_SQL.format(table=Device._meta.db_table))
        for name, version, n in cursor.fetchall():
            if name is None:
                none += n
            else:
                counts[(name, version)] += n
    return counts, none


def installed_counts_scan() -> tuple[Counter[tuple[str, str]], int]:
    """``installed_counts`` read device by device with ``installed_models``."""
    counts: Counter[tuple[str, str]] = Counter()
    none = 0
    for reported in (
        Device.objects.enabled().values_list("reported", flat=True).order_by().iterator(2000)
    ):
        installed = installed_models(reported)
        counts.update(installed)
        if not installed:
            none += 1
    return counts, none
