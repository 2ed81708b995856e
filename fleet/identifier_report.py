"""Stored rows from before the identifier rules that break them (a read-only report).

The rules are enforced on every write since fleet/0010 and ota/0008; rows written
before may hold a group name with ``/`` or a version with a trailing newline, which no
URL can address. Nothing is changed here: ``manage.py identifiers_check`` lists them
for an operator to rename.
"""

from collections.abc import Iterator
from dataclasses import dataclass

from django.db.models import Model as DjangoModel

from device_agent.protocol import identifiers
from device_agent.protocol.identifiers import IdentifierKind
from fleet.models import Device, DynamicGroup, EnrollmentToken, Group, Tag
from ota.models import Artifact, Model


@dataclass(frozen=True)
class Violation:
    table: str
    pk: object
    field: str
    value: object
    kind: IdentifierKind


_COLUMNS: tuple[tuple[type[DjangoModel], str, IdentifierKind], ...] = (
    (Device, "device_id", identifiers.DEVICE_ID),
    (Device, "hardware", identifiers.HARDWARE),
    (Tag, "name", identifiers.TAG_NAME),
    (Group, "name", identifiers.GROUP_NAME),
    (DynamicGroup, "name", identifiers.GROUP_NAME),
    (Model, "name", identifiers.MODEL_NAME),
    (Artifact, "version", identifiers.VERSION),
    (Artifact, "hardware", identifiers.HARDWARE),
    (Artifact, "format", identifiers.ARTIFACT_FORMAT),
)


def identifier_violations() -> Iterator[Violation]:
    """Every stored identifier outside its kind's alphabet, table by table."""
    for model, field, kind in _COLUMNS:
        rows = model._default_manager.order_by("pk").values_list("pk", field)
        for pk, value in rows.iterator(chunk_size=2000):
            if not kind.is_valid(value):
                yield Violation(model._meta.db_table, pk, field, value, kind)
    tokens = EnrollmentToken.objects.exclude(hardware="").order_by("pk")
    for pk, value in tokens.values_list("pk", "hardware").iterator(chunk_size=2000):
        if not identifiers.HARDWARE.is_valid(value):
            yield Violation(
                EnrollmentToken._meta.db_table, pk, "hardware", value, identifiers.HARDWARE
            )
    for group in DynamicGroup.objects.order_by("pk").only("pk", "hardware", "tags"):
        for field, kind in (("hardware", identifiers.HARDWARE), ("tags", identifiers.TAG_NAME)):
            for item in getattr(group, field) or []:
                if not kind.is_valid(item):
                    yield Violation(DynamicGroup._meta.db_table, group.pk, field, item, kind)
