from django.urls import path

from ota import views

urlpatterns = [
    path("models/", views.ModelListView.as_view(), name="model-list"),
    path("models/<str:name>/", views.ModelDetailView.as_view(), name="model-detail"),
    path("models/<str:name>/metadata", views.ModelMetadataView.as_view(), name="model-metadata"),
    path("models/<str:name>/publish", views.PublishView.as_view(), name="model-publish"),
    path("models/<str:name>/versions/", views.VersionListView.as_view(), name="version-list"),
    path(
        "models/<str:name>/versions/<str:version>/",
        views.VersionDetailView.as_view(),
        name="version-detail",
    ),
    path(
        "artifacts/<int:pk>/download",
        views.ArtifactDownloadView.as_view(),
        name="artifact-download",
    ),
    path(
        "release-keys/<str:keyid>/revoke",
        views.ReleaseKeyRevokeView.as_view(),
        name="release-key-revoke",
    ),
]
