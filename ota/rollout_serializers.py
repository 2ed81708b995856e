"""Request and response shapes of the rollout API (validation of the JSON documents
themselves is ``ota/rollout_config.py``'s, called by the service)."""

from typing import Any

from django.core.validators import MaxLengthValidator
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from device_agent.protocol.identifiers import ARM_NAME, MODEL_NAME, VERSION
from fleet.identifiers import IdentifierField
from fleet.serializers import BoundedDateTimeField
from ota import rollout_config as limits
from ota.models import (
    Rollout,
    RolloutAuditEvent,
    RolloutDevice,
    RolloutDeviceState,
    RolloutStatus,
    RolloutStrategy,
)
from ota.rollout_config import MAX_DESCRIPTION_LENGTH
from ota.rollout_selectors import rollout_progress

# --- the JSON documents' shapes, for the schema (ota/rollout_config.py validates them,
# with the same bounds) ---------------------------------------------------------------

_Doc = serializers.Serializer[dict[str, Any]]


def _names(what: str, **kwargs: Any) -> serializers.ListField:
    return serializers.ListField(
        child=serializers.CharField(max_length=limits.MAX_SELECTION_ITEM_LENGTH, min_length=1),
        max_length=limits.MAX_SELECTION_ITEMS,
        required=False,
        help_text=what,
        **kwargs,
    )


class StageDoc(_Doc):
    percent = serializers.FloatField(
        min_value=0, max_value=100, help_text="devices with bucket < percent/100; above 0"
    )
    bake_minutes = serializers.FloatField(
        min_value=0, max_value=limits.MAX_BAKE_MINUTES, required=False, default=0
    )


class ArmDoc(_Doc):
    name = serializers.CharField(max_length=64)
    version = serializers.CharField(max_length=64)
    weight = serializers.FloatField(
        min_value=0, max_value=limits.MAX_ARM_WEIGHT, required=False, help_text="above 0"
    )
    baseline = serializers.BooleanField(required=False)


class SelectionDoc(_Doc):
    groups = _names("static group names")
    dynamic_groups = _names("dynamic group names")
    devices = _names("device ids")
    tags = _names("tags a device must all have")
    hardware = _names("hardware targets, any of")
    all = serializers.BooleanField(required=False, help_text="the whole fleet")


class WindowDoc(_Doc):
    days = serializers.ListField(
        child=serializers.ChoiceField(choices=limits.DAYS), max_length=7, required=False
    )
    start = serializers.CharField(max_length=5, help_text="HH:MM")
    end = serializers.CharField(max_length=5, help_text="HH:MM")
    timezone = serializers.CharField(max_length=limits.MAX_TIMEZONE_LENGTH, required=False)


class TelemetryGateDoc(_Doc):
    metric = serializers.CharField(max_length=64)
    statistic = serializers.ChoiceField(choices=limits.STATISTICS, required=False)
    better = serializers.ChoiceField(choices=("lower", "higher"), required=False)
    max_relative_change = serializers.FloatField(
        min_value=0, max_value=limits.MAX_RELATIVE_CHANGE, required=False
    )
    alpha = serializers.FloatField(min_value=0, max_value=0.5, required=False)
    min_devices = serializers.IntegerField(
        min_value=3, max_value=limits.MAX_MIN_DEVICES, required=False
    )
    required = serializers.BooleanField(required=False)  # type: ignore[assignment]


class PromotionDoc(_Doc):
    mode = serializers.ChoiceField(choices=("operator", "auto"), required=False)
    metric = serializers.CharField(max_length=64, required=False, allow_blank=True)
    statistic = serializers.ChoiceField(choices=limits.STATISTICS, required=False)
    better = serializers.ChoiceField(choices=("lower", "higher"), required=False)
    min_relative_change = serializers.FloatField(
        min_value=0, max_value=limits.MAX_RELATIVE_CHANGE, required=False
    )
    alpha = serializers.FloatField(min_value=0, max_value=0.5, required=False)
    min_devices = serializers.IntegerField(
        min_value=3, max_value=limits.MAX_MIN_DEVICES, required=False
    )
    on_inconclusive = serializers.ChoiceField(choices=("wait", "baseline"), required=False)


class PolicyDoc(_Doc):
    on_breach = serializers.ChoiceField(choices=("pause", "abort"), required=False)
    max_failure_rate = serializers.FloatField(min_value=0, max_value=1, required=False)
    min_finished = serializers.IntegerField(min_value=1, max_value=limits.MAX_COUNT, required=False)
    device_timeout_minutes = serializers.FloatField(
        min_value=0, max_value=limits.MAX_DEVICE_TIMEOUT_MINUTES, required=False
    )
    retries = serializers.IntegerField(min_value=0, max_value=limits.MAX_RETRIES, required=False)
    rate_per_minute = serializers.FloatField(
        min_value=1, max_value=limits.MAX_RATE_PER_MINUTE, required=False
    )
    rate_growth_factor = serializers.FloatField(min_value=1, max_value=5, required=False)
    rate_growth_every = serializers.IntegerField(
        min_value=0, max_value=limits.MAX_COUNT, required=False
    )
    rate_growth_on = serializers.ChoiceField(choices=("succeeded", "notified"), required=False)
    rate_max_per_minute = serializers.FloatField(
        min_value=1, max_value=limits.MAX_RATE_PER_MINUTE, required=False
    )
    rate_burst = serializers.IntegerField(
        min_value=1, max_value=limits.MAX_COUNT, required=False, allow_null=True
    )
    jitter = serializers.FloatField(min_value=0, max_value=0.9, required=False)
    window = WindowDoc(required=False, allow_null=True)
    telemetry_gates = serializers.ListField(
        child=TelemetryGateDoc(), required=False, max_length=limits.MAX_TELEMETRY_GATES
    )
    promotion = PromotionDoc(required=False)


@extend_schema_field(serializers.ListField(child=StageDoc(), allow_null=True))
class StagesField(serializers.JSONField):
    pass


@extend_schema_field(serializers.ListField(child=ArmDoc(), allow_null=True))
class ArmsField(serializers.JSONField):
    pass


@extend_schema_field(SelectionDoc)
class SelectionField(serializers.JSONField):
    pass


@extend_schema_field(PolicyDoc(allow_null=True))
class PolicyField(serializers.JSONField):
    pass


class _MaxItems(MaxLengthValidator):
    """maxItems in the schema; ``rollout_config`` checks the document itself."""

    message = "Ensure this list has at most %(limit_value)d items (it has %(show_value)d)."

    def clean(self, x: Any) -> int:
        return len(x) if isinstance(x, list) else 0


class RolloutCreateSerializer(serializers.Serializer[dict[str, Any]]):
    model = IdentifierField(MODEL_NAME)
    strategy = serializers.ChoiceField(choices=RolloutStrategy.choices, default="phased")
    version = IdentifierField(VERSION, required=False, default="", allow_blank=True)
    arms = ArmsField(
        required=False,
        default=None,
        allow_null=True,
        help_text="A/B only: 2 or more arms",
        validators=[_MaxItems(limits.MAX_ARMS)],
    )
    stages = StagesField(
        required=False,
        default=None,
        allow_null=True,
        help_text="strictly increasing percents; default 100 %",
        validators=[_MaxItems(limits.MAX_STAGES)],
    )
    selection = SelectionField()
    policy = PolicyField(required=False, default=None, allow_null=True)
    description = serializers.CharField(
        required=False, default="", allow_blank=True, max_length=MAX_DESCRIPTION_LENGTH
    )
    schedule = serializers.BooleanField(
        required=False, default=False, help_text="create it scheduled rather than draft"
    )
    starts_at = BoundedDateTimeField(
        required=False,
        default=None,
        allow_null=True,
        help_text="with schedule: the engine starts it then (needs ota.start_rollout)",
    )


class RolloutListQuery(serializers.Serializer[dict[str, Any]]):
    model = IdentifierField(MODEL_NAME, required=False, allow_blank=True)
    status = serializers.ChoiceField(choices=RolloutStatus.choices, required=False)


class RolloutDevicesQuery(serializers.Serializer[dict[str, Any]]):
    state = serializers.ChoiceField(choices=RolloutDeviceState.choices, required=False)
    arm = IdentifierField(ARM_NAME, required=False, allow_blank=True)


class RolloutScheduleSerializer(serializers.Serializer[dict[str, Any]]):
    starts_at = BoundedDateTimeField(required=False, default=None, allow_null=True)
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
    version = serializers.CharField(
        source="artifact.version", read_only=True, default=None, allow_null=True
    )
    previous_version = serializers.CharField(
        source="previous_artifact.version", read_only=True, default=None, allow_null=True
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
