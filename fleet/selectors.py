"""Reads of the fleet registry."""

from collections import Counter
from collections.abc import Iterable

from django.db.models import QuerySet

from device_agent.protocol.messages import stored_models
from fleet.aggregates import json_array_counts
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


def installed_counts() -> tuple[Counter[tuple[str, str]], int]:
    """Over the enabled devices: how many report each (model, version) installed, and how
    many report none. Counted in PostgreSQL where the fleet lives (one grouped query, no
    document sent to Python; ``fleet.aggregates.json_array_counts``), matching
    ``installed_counts_scan``."""
    counts: Counter[tuple[str, str]] = Counter()
    none = 0
    for (name, version), n in json_array_counts(
        Device.objects.enabled(),
        "reported",
        array="models",
        members=("name", "version"),
        empty=True,
    ):
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
