from datetime import UTC, datetime
from typing import Any

from rest_framework import serializers
from rest_framework.validators import UniqueValidator

from device_agent.protocol.identifiers import (
    DEVICE_ID,
    GROUP_NAME,
    HARDWARE,
    MODEL_NAME,
    TAG_NAME,
    VERSION,
)
from fleet.identifiers import IdentifierField
from fleet.models import Device, DynamicGroup, Group, Tag

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
    """The device list's filters, for the schema (the view checks each identifier)."""

    hardware = IdentifierField(HARDWARE, required=False)
    tag = serializers.ListField(
        child=IdentifierField(TAG_NAME),
        required=False,
        max_length=MAX_LABELS,
        help_text="all of these tags",
    )
    group = IdentifierField(GROUP_NAME, required=False)
    online = serializers.BooleanField(required=False, allow_null=True)
    revoked = serializers.BooleanField(required=False, allow_null=True)
    q = IdentifierField(DEVICE_ID, required=False, help_text="device id prefix")


class DeviceLabelsSerializer(serializers.Serializer[dict[str, object]]):
    tags = serializers.ListField(
        child=IdentifierField(TAG_NAME), required=False, max_length=MAX_LABELS
    )
    groups = serializers.ListField(
        child=IdentifierField(GROUP_NAME), required=False, max_length=MAX_LABELS
    )


class GroupSerializer(serializers.ModelSerializer[Group]):
    # Declaring the field drops the model's unique check: a second "canary" was a 500.
    name = IdentifierField(GROUP_NAME, validators=[UniqueValidator(Group.objects.all())])
    description = serializers.CharField(
        max_length=MAX_DESCRIPTION_LENGTH, required=False, allow_blank=True
    )

    class Meta:
        model = Group
        fields = ["name", "description", "created_at"]


class GroupMembersSerializer(serializers.Serializer[dict[str, object]]):
    add = serializers.ListField(
        child=IdentifierField(DEVICE_ID), default=list, max_length=MAX_MEMBERS_CHANGE
    )
    remove = serializers.ListField(
        child=IdentifierField(DEVICE_ID), default=list, max_length=MAX_MEMBERS_CHANGE
    )


class DynamicGroupSerializer(serializers.ModelSerializer[DynamicGroup]):
    name = IdentifierField(GROUP_NAME, validators=[UniqueValidator(DynamicGroup.objects.all())])
    description = serializers.CharField(
        max_length=MAX_DESCRIPTION_LENGTH, required=False, allow_blank=True
    )
    hardware = serializers.ListField(
        child=IdentifierField(HARDWARE), default=list, max_length=MAX_LABELS
    )
    tags = serializers.ListField(
        child=IdentifierField(TAG_NAME), default=list, max_length=MAX_LABELS
    )

    class Meta:
        model = DynamicGroup
        fields = ["name", "description", "hardware", "tags", "created_at"]


class RevokeDeviceSerializer(serializers.Serializer[dict[str, object]]):
    reason = serializers.CharField(max_length=200)


class EnrollmentTokenRequestSerializer(serializers.Serializer[dict[str, object]]):
    hours = serializers.IntegerField(min_value=1, max_value=24 * 30, required=False)
    hardware = IdentifierField(HARDWARE, required=False, default="", allow_blank=True)
    group = IdentifierField(
        GROUP_NAME, required=False, allow_null=True, allow_blank=True, default=None
    )


class EnrollRequestSerializer(serializers.Serializer[dict[str, object]]):
    token = serializers.CharField(max_length=200)
    device_id = IdentifierField(DEVICE_ID)
    hardware = IdentifierField(HARDWARE)
    csr = serializers.CharField(max_length=16 * 1024)
    agent_version = serializers.CharField(max_length=32, required=False, default="")


class AssignmentSerializer(serializers.Serializer[dict[str, object]]):
    model = IdentifierField(MODEL_NAME)
    version = IdentifierField(VERSION)


class DesiredRequestSerializer(serializers.Serializer[dict[str, object]]):
    models = serializers.ListField(child=AssignmentSerializer(), allow_empty=False, max_length=32)
