from rest_framework import serializers

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


class DeviceLabelsSerializer(serializers.Serializer[dict[str, object]]):
    tags = serializers.ListField(child=IdentifierField(TAG_NAME), required=False, max_length=64)
    groups = serializers.ListField(child=IdentifierField(GROUP_NAME), required=False, max_length=64)


class GroupSerializer(serializers.ModelSerializer[Group]):
    name = IdentifierField(GROUP_NAME)

    class Meta:
        model = Group
        fields = ["name", "description", "created_at"]


class GroupMembersSerializer(serializers.Serializer[dict[str, object]]):
    add = serializers.ListField(child=IdentifierField(DEVICE_ID), default=list, max_length=10000)
    remove = serializers.ListField(child=IdentifierField(DEVICE_ID), default=list, max_length=10000)


class DynamicGroupSerializer(serializers.ModelSerializer[DynamicGroup]):
    name = IdentifierField(GROUP_NAME)
    hardware = serializers.ListField(child=IdentifierField(HARDWARE), default=list)
    tags = serializers.ListField(child=IdentifierField(TAG_NAME), default=list)

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
