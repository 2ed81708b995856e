"""Query parameters and responses of the telemetry API."""

import math
from typing import Any

from rest_framework import serializers

from device_agent.protocol.messages import METRIC_RE, TOKEN_RE
from fleet.serializers import BoundedDateTimeField
from telemetry.models import Granularity, Rollup, Sample

# Django's RegexValidator searches: anchor the protocol's patterns.
METRIC = rf"\A{METRIC_RE.pattern}\Z"
TOKEN = rf"\A{TOKEN_RE.pattern}\Z"


def _finite(value: float) -> float | None:
    # Strict JSON has no NaN: an empty summary's figures are null.
    return value if math.isfinite(value) else None


class DeviceSamplesQuery(serializers.Serializer[dict[str, Any]]):
    since = BoundedDateTimeField(required=False)
    metric = serializers.RegexField(METRIC, required=False)
    limit = serializers.IntegerField(required=False, min_value=1, max_value=5000, default=500)


class RollupsQuery(serializers.Serializer[dict[str, Any]]):
    metric = serializers.RegexField(METRIC)
    arm = serializers.RegexField(TOKEN, required=False)
    granularity = serializers.ChoiceField(
        choices=Granularity.values, required=False, default=Granularity.MINUTE
    )
    since = BoundedDateTimeField(required=False)
    until = BoundedDateTimeField(required=False)


class SummaryQuery(serializers.Serializer[dict[str, Any]]):
    metric = serializers.RegexField(METRIC)
    arm = serializers.ListField(child=serializers.RegexField(TOKEN), required=False, max_length=16)
    since = BoundedDateTimeField(required=False)
    until = BoundedDateTimeField(required=False)
    samples = serializers.IntegerField(required=False, min_value=0, max_value=10000, default=0)


class SampleSerializer(serializers.ModelSerializer[Sample]):
    rollout_id = serializers.SerializerMethodField()
    arm = serializers.SerializerMethodField()

    class Meta:
        model = Sample
        fields = ["ts", "model", "version", "rollout_id", "arm", "metric", "value"]

    def get_rollout_id(self, obj: Sample) -> str | None:
        return obj.rollout_id or None

    def get_arm(self, obj: Sample) -> str | None:
        return obj.arm or None


class RollupSerializer(serializers.ModelSerializer[Rollup]):
    class Meta:
        model = Rollup
        fields = [
            "bucket_start",
            "bucket_seconds",
            "model",
            "version",
            "arm",
            "metric",
            "count",
            "mean",
            "min",
            "max",
            "p50",
            "p95",
            "p99",
            "sum",
            "sum_squares",
        ]


class MetricSummarySerializer(serializers.Serializer[Any]):
    count = serializers.IntegerField()
    mean = serializers.SerializerMethodField()
    stddev = serializers.SerializerMethodField()
    min = serializers.SerializerMethodField()
    max = serializers.SerializerMethodField()
    p50 = serializers.SerializerMethodField()
    p95 = serializers.SerializerMethodField()
    p99 = serializers.SerializerMethodField()
    samples = serializers.ListField(child=serializers.FloatField())

    def get_mean(self, obj: Any) -> float | None:
        return _finite(obj.mean)

    def get_stddev(self, obj: Any) -> float | None:
        return _finite(obj.stddev)

    def get_min(self, obj: Any) -> float | None:
        return _finite(obj.min)

    def get_max(self, obj: Any) -> float | None:
        return _finite(obj.max)

    def get_p50(self, obj: Any) -> float | None:
        return _finite(obj.p50)

    def get_p95(self, obj: Any) -> float | None:
        return _finite(obj.p95)

    def get_p99(self, obj: Any) -> float | None:
        return _finite(obj.p99)


# --- response envelopes (as the views answer them) -----------------------------------


class DeviceSamplesResponse(serializers.Serializer[Any]):
    device_id = serializers.CharField()
    samples = SampleSerializer(many=True)


class RollupsResponse(serializers.Serializer[Any]):
    rollout_id = serializers.CharField()
    metric = serializers.CharField()
    granularity = serializers.IntegerField()
    buckets = RollupSerializer(many=True)


class SummaryResponse(serializers.Serializer[Any]):
    rollout_id = serializers.CharField()
    metric = serializers.CharField()
    since = serializers.DateTimeField()
    until = serializers.DateTimeField(allow_null=True)
    arms = serializers.DictField(child=MetricSummarySerializer(), help_text="by arm name")
