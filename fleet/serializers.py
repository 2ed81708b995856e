import re

from rest_framework import serializers

from fleet.models import Device, DynamicGroup, Group, Tag

TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")


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


class DeviceLabelsSerializer(serializers.Serializer[dict[str, object]]):
    tags = serializers.ListField(
        child=serializers.CharField(validators=[_tag]), required=False, max_length=64
    )
    groups = serializers.ListField(child=serializers.CharField(), required=False, max_length=64)


class GroupSerializer(serializers.ModelSerializer[Group]):
    class Meta:
        model = Group
        fields = ["name", "description", "created_at"]


class GroupMembersSerializer(serializers.Serializer[dict[str, object]]):
    add = serializers.ListField(child=serializers.CharField(), default=list, max_length=10000)
    remove = serializers.ListField(child=serializers.CharField(), default=list, max_length=10000)


class DynamicGroupSerializer(serializers.ModelSerializer[DynamicGroup]):
    hardware = serializers.ListField(child=serializers.CharField(max_length=64), default=list)
    tags = serializers.ListField(child=serializers.CharField(validators=[_tag]), default=list)

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
