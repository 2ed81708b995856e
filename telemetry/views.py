"""Telemetry API (thin views over telemetry.selectors) and the web process's /metrics."""

import hmac
import ipaddress
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from drf_spectacular.utils import extend_schema
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.identifiers import REPORTED_ROLLOUT_ID
from fleet.errors import ServiceError
from fleet.identifiers import identifier_check
from fleet.models import Device
from fleet.views import ModelPermissions
from telemetry import selectors
from telemetry.exposition import web_exposition
from telemetry.models import Granularity, Rollup, Sample
from telemetry.serializers import (
    DeviceSamplesQuery,
    DeviceSamplesResponse,
    MetricSummarySerializer,
    RollupSerializer,
    RollupsQuery,
    RollupsResponse,
    SampleSerializer,
    SummaryQuery,
    SummaryResponse,
)

DEFAULT_WINDOW = timedelta(hours=1)
MAX_BUCKETS = 10_000


def _query(serializer_class: type[serializers.Serializer[Any]], request: Request) -> Any:
    query = serializer_class(data=request.query_params)  # a QueryDict: repeated `arm` works
    query.is_valid(raise_exception=True)
    return query.validated_data


def _rollout_id(value: str) -> str:
    return identifier_check(REPORTED_ROLLOUT_ID, value, field="rollout_id")


def _window(query: dict[str, Any]) -> tuple[datetime, datetime | None]:
    until = query.get("until")
    since = query.get("since") or (until or timezone.now()) - DEFAULT_WINDOW
    if until is not None and until <= since:
        raise ServiceError(ErrorCode.MALFORMED, "until must be after since")
    return since, until


class DeviceSamplesView(APIView):
    """A device's recent telemetry, one row per metric value, newest first."""

    permission_classes = [ModelPermissions]
    queryset = Sample.objects.none()

    @extend_schema(
        parameters=[DeviceSamplesQuery],
        responses=DeviceSamplesResponse,
    )
    def get(self, request: Request, device_id: str) -> Response:
        query = _query(DeviceSamplesQuery, request)
        device = Device.objects.filter(device_id=device_id).only("pk").first()
        if device is None:
            raise ServiceError(ErrorCode.NOT_FOUND, f"no device {device_id}")
        rows = selectors.device_recent_samples(
            device_pk=device.pk,
            since=query.get("since"),
            metric=query.get("metric"),
            limit=query["limit"],
        )
        return Response({"device_id": device_id, "samples": SampleSerializer(rows, many=True).data})


class RolloutRollupsView(APIView):
    """Rollup buckets of one metric of a rollout's arms, oldest first."""

    permission_classes = [ModelPermissions]
    queryset = Rollup.objects.none()

    @extend_schema(
        parameters=[RollupsQuery],
        responses=RollupsResponse,
    )
    def get(self, request: Request, rollout_id: str) -> Response:
        rollout_id = _rollout_id(rollout_id)
        query = _query(RollupsQuery, request)
        since, until = _window(query)
        buckets = selectors.metric_buckets(
            metric=query["metric"],
            since=since,
            until=until,
            granularity=Granularity(int(query["granularity"])),
            rollout_id=rollout_id,
            arm=query.get("arm"),
        )[:MAX_BUCKETS]
        return Response(
            {
                "rollout_id": rollout_id,
                "metric": query["metric"],
                "granularity": int(query["granularity"]),
                "buckets": RollupSerializer(buckets, many=True).data,
            }
        )


class RolloutSummaryView(APIView):
    """Per arm: count, mean, stddev, min, max, p50/p95/p99 of one metric, from raw samples."""

    permission_classes = [ModelPermissions]
    queryset = Rollup.objects.none()

    @extend_schema(
        parameters=[SummaryQuery],
        responses=SummaryResponse,
    )
    def get(self, request: Request, rollout_id: str) -> Response:
        rollout_id = _rollout_id(rollout_id)
        query = _query(SummaryQuery, request)
        since, until = _window(query)
        arms = query.get("arm") or selectors.rollout_arms(rollout_id=rollout_id, since=since)
        summaries = {
            arm: MetricSummarySerializer(
                selectors.arm_metric_summary(
                    rollout_id=rollout_id,
                    arm=arm,
                    metric=query["metric"],
                    since=since,
                    until=until,
                    max_samples=query["samples"],
                )
            ).data
            for arm in arms
        }
        return Response(
            {
                "rollout_id": rollout_id,
                "metric": query["metric"],
                "since": since,
                "until": until,
                "arms": summaries,
            }
        )


def _client_allowed(request: HttpRequest) -> bool:
    address = request.META.get("REMOTE_ADDR", "")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(
        ip in ipaddress.ip_network(cidr, strict=False) for cidr in settings.FLEET_METRICS_ALLOW
    )


def _bearer_ok(request: HttpRequest) -> bool | None:
    """True/False for a right/wrong bearer token, None when none was sent or none is set."""
    token = settings.FLEET_METRICS_TOKEN
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if not token or not header:
        return None
    scheme, _, credentials = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        credentials.strip().encode(), token.encode()
    )


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus metrics of the web process: with the bearer token, or from an allowed
    address. Answers 404 when FLEET_METRICS_WEB is off."""
    if not settings.FLEET_METRICS_WEB:
        return HttpResponse(status=404)
    bearer = _bearer_ok(request)
    if bearer is False:
        return HttpResponse("wrong metrics token\n", status=401, content_type="text/plain")
    if not bearer and not _client_allowed(request):
        response = HttpResponse("metrics need a bearer token\n", status=401)
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    # The classic text format every Prometheus 2.x reads (our names need no 1.0 escaping).
    return HttpResponse(web_exposition(), content_type=CONTENT_TYPE_PLAIN_0_0_4)
