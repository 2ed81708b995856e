"""Request and response shapes of the rollout API (validation of the JSON documents
themselves is ``ota/rollout_config.py``'s, called by the service)."""

from typing import Any

from rest_framework import serializers

from device_agent.protocol.identifiers import ARM_NAME, MODEL_NAME, VERSION
from fleet.identifiers import IdentifierField
from ota.models import Rollout, RolloutAuditEvent, RolloutDevice, RolloutStrategy
from ota.rollout_selectors import rollout_progress


class RolloutCreateSerializer(serializers.Serializer[dict[str, Any]]):
    model = IdentifierField(MODEL_NAME)
    strategy = serializers.ChoiceField(choices=RolloutStrategy.choices, default="phased")
    version = IdentifierField(VERSION, required=False, default="", allow_blank=True)
    arms = serializers.JSONField(required=False, default=None)
    stages = serializers.JSONField(required=False, default=None)
    selection = serializers.JSONField()
    policy = serializers.JSONField(required=False, default=None)
    description = serializers.CharField(required=False, default="", allow_blank=True)
    schedule = serializers.BooleanField(
        required=False, default=False, help_text="create it scheduled rather than draft"
    )
    starts_at = serializers.DateTimeField(
        required=False,
        default=None,
        allow_null=True,
        help_text="with schedule: the engine starts it then (needs ota.start_rollout)",
    )


class RolloutScheduleSerializer(serializers.Serializer[dict[str, Any]]):
    starts_at = serializers.DateTimeField(required=False, default=None, allow_null=True)
    reason = serializers.CharField(required=False, default="", allow_blank=True, max_length=2000)


class RolloutActionSerializer(serializers.Serializer[dict[str, Any]]):
    reason = serializers.CharField(required=False, default="", allow_blank=True, max_length=2000)


class RolloutPromoteSerializer(RolloutActionSerializer):
    arm = IdentifierField(ARM_NAME)


class RolloutSerializer(serializers.ModelSerializer[Rollout]):
    id = serializers.CharField(source="public_id", read_only=True)
    model = serializers.CharField(source="model.name", read_only=True)
    created_by = serializers.SerializerMethodField()
    progress = serializers.SerializerMethodField()

    class Meta:
        model = Rollout
        fields = [
            "id",
            "model",
            "strategy",
            "version",
            "description",
            "status",
            "selection",
            "stages",
            "arms",
            "policy",
            "current_stage",
            "stage_started_at",
            "stage_settled_at",
            "promoted_arm",
            "starts_at",
            "created_by",
            "created_at",
            "started_at",
            "finished_at",
            "evaluated_at",
            "gate_figures",
            "progress",
        ]
        read_only_fields = fields

    def get_created_by(self, obj: Rollout) -> str | None:
        return obj.created_by.get_username() if obj.created_by else None

    def get_progress(self, obj: Rollout) -> dict[str, Any]:
        return rollout_progress(obj)


class RolloutListSerializer(RolloutSerializer):
    class Meta(RolloutSerializer.Meta):
        fields = [f for f in RolloutSerializer.Meta.fields if f not in {"gate_figures", "progress"}]
        read_only_fields = fields


class RolloutDeviceSerializer(serializers.ModelSerializer[RolloutDevice]):
    device = serializers.CharField(source="device.device_id", read_only=True)
    hardware = serializers.CharField(source="device.hardware", read_only=True)
    version = serializers.CharField(source="artifact.version", read_only=True, default=None)
    previous_version = serializers.CharField(
        source="previous_artifact.version", read_only=True, default=None
    )

    class Meta:
        model = RolloutDevice
        fields = [
            "device",
            "hardware",
            "arm",
            "bucket",
            "state",
            "version",
            "previous_version",
            "attempts",
            "rollback_attempts",
            "desired_seq",
            "notified_at",
            "phase_at",
            "last_phase",
            "last_code",
            "updated_at",
        ]
        read_only_fields = fields


class RolloutAuditEventSerializer(serializers.ModelSerializer[RolloutAuditEvent]):
    class Meta:
        model = RolloutAuditEvent
        fields = ["at", "from_status", "to_status", "actor_name", "reason", "figures"]
        read_only_fields = fields
