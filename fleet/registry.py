"""Writes to the fleet registry: labels and group membership."""

from collections.abc import Iterable

from django.db import transaction

from device_agent.protocol.errors import ErrorCode
from fleet.errors import ServiceError
from fleet.models import Device, Group, Tag


@transaction.atomic
def device_labels_set(
    *, device: Device, tags: Iterable[str] | None = None, groups: Iterable[str] | None = None
) -> Device:
    """Replace a device's tags and/or static groups (unknown tags are created)."""
    if tags is not None:
        wanted = sorted(set(tags))
        existing = {t.name: t for t in Tag.objects.filter(name__in=wanted)}
        created = Tag.objects.bulk_create(
            [Tag(name=n) for n in wanted if n not in existing], ignore_conflicts=True
        )
        del created  # ignore_conflicts gives no ids: read them back
        device.tags.set(Tag.objects.filter(name__in=wanted))
    if groups is not None:
        wanted_groups = list(Group.objects.filter(name__in=set(groups)))
        missing = set(groups) - {g.name for g in wanted_groups}
        if missing:
            raise ServiceError(
                ErrorCode.NOT_FOUND, f"no such group(s): {', '.join(sorted(missing))}"
            )
        device.groups.set(wanted_groups)
    return device


@transaction.atomic
def group_members_change(*, group: Group, add: Iterable[str], remove: Iterable[str]) -> int:
    """Add and remove devices (by id) from a static group; returns the new member count."""
    add, remove = set(add), set(remove)
    found = list(Device.objects.filter(device_id__in=add | remove))
    missing = (add | remove) - {d.device_id for d in found}
    if missing:
        raise ServiceError(ErrorCode.NOT_FOUND, f"no such device(s): {', '.join(sorted(missing))}")
    group.devices.add(*[d for d in found if d.device_id in add])
    group.devices.remove(*[d for d in found if d.device_id in remove])
    return group.devices.count()
