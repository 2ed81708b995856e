from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from telemetry.models import Rollup, Sample


class _ReadOnly(admin.ModelAdmin[Any]):
    # Written by the bridge and the rollup job only; counting millions of rows per page
    # view would be the slowest query of the admin.
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Sample)
class SampleAdmin(_ReadOnly):
    list_display = ["ts", "device", "model", "version", "rollout_id", "arm", "metric", "value"]
    list_select_related = ["device"]
    search_fields = ["device__device_id"]
    ordering = ["-id"]
    show_facets = admin.ShowFacets.NEVER


@admin.register(Rollup)
class RollupAdmin(_ReadOnly):
    list_display = [
        "bucket_start",
        "bucket_seconds",
        "model",
        "version",
        "rollout_id",
        "arm",
        "metric",
        "count",
        "mean",
        "p95",
    ]
    list_filter = ["bucket_seconds", "metric"]
    search_fields = ["rollout_id", "model", "version"]
    ordering = ["-bucket_start"]
