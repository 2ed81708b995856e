import re
from datetime import UTC, datetime
from typing import Any

from rest_framework import serializers

from fleet.models import Device, DynamicGroup, Group, Tag

TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
# Bounds of what the API takes (docs/api.md).
MAX_DESCRIPTION_LENGTH = 2000
MAX_LABELS = 64  # tags or groups of a device; hardware or tags of a dynamic group
MAX_MEMBERS_CHANGE = 10_000
# Times the API takes: a far-off year overflows date arithmetic (until - 1 h at year 1).
MIN_DATETIME = datetime(2000, 1, 1, tzinfo=UTC)
MAX_DATETIME = datetime(2100, 1, 1, tzinfo=UTC)


class BoundedDateTimeField(serializers.DateTimeField):
    """An ISO 8601 time from 2000-01-01 to 2100-01-01 (UTC)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("help_text", "ISO 8601, from 2000-01-01 to 2100-01-01")
        super().__init__(**kwargs)

    def to_internal_value(self, value: Any) -> datetime:
        parsed = super().to_internal_value(value)
        if not MIN_DATETIME <= parsed <= MAX_DATETIME:
            raise serializers.ValidationError("must be from 2000-01-01 to 2100-01-01")
        return parsed


def _tag(value: str) -> None:
    if not TAG_RE.match(value):
        raise serializers.ValidationError(f"tag {value!r} must match {TAG_RE.pattern}")


class DeviceSerializer(serializers.ModelSerializer[Device]):
    tags: serializers.SlugRelatedField[Tag] = serializers.SlugRelatedField(
        many=True, read_only=True, slug_field="name"
    )
    groups: serializers.SlugRelatedField[Group] = serializers.SlugRelatedField(
        many=True, read_only=True, slug_field="name"
    )
    revoked = serializers.SerializerMethodField()

    class Meta:
        model = Device
        fields = [
            "device_id",
            "hardware",
            "tags",
            "groups",
            "agent_version",
            "reported",
            "reported_seq",
            "online",
            "last_seen_at",
            "enrolled_at",
            "revoked",
            "revoked_at",
        ]

    def get_revoked(self, obj: Device) -> bool:
        return obj.revoked_at is not None


class DeviceListQuery(serializers.Serializer[dict[str, object]]):
    hardware = serializers.CharField(max_length=64, required=False)
    tag = serializers.ListField(
        child=serializers.CharField(max_length=64),
        required=False,
        max_length=MAX_LABELS,
        help_text="all of these tags",
    )
    group = serializers.CharField(max_length=100, required=False)
    online = serializers.BooleanField(required=False, allow_null=True)
    revoked = serializers.BooleanField(required=False, allow_null=True)
    q = serializers.CharField(max_length=64, required=False, help_text="device id prefix")


class DeviceLabelsSerializer(serializers.Serializer[dict[str, object]]):
    tags = serializers.ListField(
        child=serializers.CharField(max_length=64, validators=[_tag]),
        required=False,
        max_length=MAX_LABELS,
    )
    groups = serializers.ListField(
        child=serializers.CharField(max_length=100), required=False, max_length=MAX_LABELS
    )


class GroupSerializer(serializers.ModelSerializer[Group]):
    description = serializers.CharField(
        max_length=MAX_DESCRIPTION_LENGTH, required=False, allow_blank=True
    )

    class Meta:
        model = Group
        fields = ["name", "description", "created_at"]


class GroupMembersSerializer(serializers.Serializer[dict[str, object]]):
    add = serializers.ListField(
        child=serializers.CharField(max_length=64), default=list, max_length=MAX_MEMBERS_CHANGE
    )
    remove = serializers.ListField(
        child=serializers.CharField(max_length=64), default=list, max_length=MAX_MEMBERS_CHANGE
    )


class DynamicGroupSerializer(serializers.ModelSerializer[DynamicGroup]):
    description = serializers.CharField(
        max_length=MAX_DESCRIPTION_LENGTH, required=False, allow_blank=True
    )
    hardware = serializers.ListField(
        child=serializers.CharField(max_length=64), default=list, max_length=MAX_LABELS
    )
    tags = serializers.ListField(
        child=serializers.CharField(max_length=64, validators=[_tag]),
        default=list,
        max_length=MAX_LABELS,
    )

    class Meta:
        model = DynamicGroup
        fields = ["name", "description", "hardware", "tags", "created_at"]


class RevokeDeviceSerializer(serializers.Serializer[dict[str, object]]):
    reason = serializers.CharField(max_length=200)


class EnrollmentTokenRequestSerializer(serializers.Serializer[dict[str, object]]):
    hours = serializers.IntegerField(min_value=1, max_value=24 * 30, required=False)
    hardware = serializers.CharField(max_length=64, required=False, default="")
    group = serializers.CharField(max_length=100, required=False, allow_null=True, default=None)


class EnrollRequestSerializer(serializers.Serializer[dict[str, object]]):
    token = serializers.CharField(max_length=200)
    device_id = serializers.CharField(max_length=64)
    hardware = serializers.RegexField(r"^[a-z0-9][a-z0-9_-]{0,63}$")
    csr = serializers.CharField(max_length=16 * 1024)
    agent_version = serializers.CharField(max_length=32, required=False, default="")


class AssignmentSerializer(serializers.Serializer[dict[str, object]]):
    model = serializers.CharField(max_length=64)
    version = serializers.CharField(max_length=64)


class DesiredRequestSerializer(serializers.Serializer[dict[str, object]]):
    models = serializers.ListField(child=AssignmentSerializer(), allow_empty=False, max_length=32)
