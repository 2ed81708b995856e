from django.urls import path

from ota import rollout_views, views

urlpatterns = [
    path("models/", views.ModelListView.as_view(), name="model-list"),
    path("models/<model_name:name>/", views.ModelDetailView.as_view(), name="model-detail"),
    path(
        "models/<model_name:name>/metadata",
        views.ModelMetadataView.as_view(),
        name="model-metadata",
    ),
    path("models/<model_name:name>/publish", views.PublishView.as_view(), name="model-publish"),
    path(
        "models/<model_name:name>/versions/", views.VersionListView.as_view(), name="version-list"
    ),
    path(
        "models/<model_name:name>/versions/<version:version>/",
        views.VersionDetailView.as_view(),
        name="version-detail",
    ),
    path(
        "artifacts/<int:pk>/download",
        views.ArtifactDownloadView.as_view(),
        name="artifact-download",
    ),
    path(
        "release-keys/<release_key_id:keyid>/revoke",
        views.ReleaseKeyRevokeView.as_view(),
        name="release-key-revoke",
    ),
    # rollouts (docs/rollouts.md)
    path("rollouts/", rollout_views.RolloutListView.as_view(), name="rollout-list"),
    path(
        "rollouts/<rollout_id:rollout_id>/",
        rollout_views.RolloutDetailView.as_view(),
        name="rollout-detail",
    ),
    *[
        path(f"rollouts/<rollout_id:rollout_id>/{action}", view.as_view(), name=f"rollout-{action}")
        for action, view in (
            ("schedule", rollout_views.RolloutScheduleView),
            ("unschedule", rollout_views.RolloutUnscheduleView),
            ("start", rollout_views.RolloutStartView),
            ("pause", rollout_views.RolloutPauseView),
            ("resume", rollout_views.RolloutResumeView),
            ("abort", rollout_views.RolloutAbortView),
            ("promote", rollout_views.RolloutPromoteView),
        )
    ],
    path(
        "rollouts/<rollout_id:rollout_id>/devices",
        rollout_views.RolloutDevicesView.as_view(),
        name="rollout-devices",
    ),
    path(
        "rollouts/<rollout_id:rollout_id>/audit",
        rollout_views.RolloutAuditView.as_view(),
        name="rollout-audit",
    ),
]
