from django.urls import path

from telemetry import views

urlpatterns = [
    path("metrics", views.metrics_view, name="metrics"),
    path(
        "api/v1/telemetry/devices/<device_id:device_id>/samples",
        views.DeviceSamplesView.as_view(),
        name="telemetry-device-samples",
    ),
    path(
        "api/v1/telemetry/rollouts/<reported_rollout_id:rollout_id>/rollups",
        views.RolloutRollupsView.as_view(),
        name="telemetry-rollout-rollups",
    ),
    path(
        "api/v1/telemetry/rollouts/<reported_rollout_id:rollout_id>/summary",
        views.RolloutSummaryView.as_view(),
        name="telemetry-rollout-summary",
    ),
]
