from django.contrib import admin

from ota.models import Artifact, Model, ReleaseKey, TufMetadata


class ReleaseKeyInline(admin.TabularInline[ReleaseKey, Model]):
    model = ReleaseKey
    extra = 0
    can_delete = False
    readonly_fields = ["keyid", "created_at", "revoked_at", "revoked_reason"]
    fields = ["keyid", "created_at", "revoked_at", "revoked_reason"]


@admin.register(Model)
class ModelAdmin(admin.ModelAdmin[Model]):
    list_display = ["name", "threshold", "created_at"]
    search_fields = ["name"]
    readonly_fields = ["name", "threshold", "created_at"]
    inlines = [ReleaseKeyInline]

    def has_add_permission(self, request: object) -> bool:
        # Registration signs top-level targets: `manage.py model_register`.
        return False


@admin.register(Artifact)
class ArtifactAdmin(admin.ModelAdmin[Artifact]):
    list_display = [
        "model",
        "version",
        "hardware",
        "format",
        "release_counter",
        "length",
        "published_by",
        "published_at",
    ]
    list_filter = ["model", "hardware", "format"]
    search_fields = ["model__name", "version", "sha256"]
    readonly_fields = [f.name for f in Artifact._meta.fields]

    def has_add_permission(self, request: object) -> bool:
        return False

    def has_delete_permission(self, request: object, obj: object = None) -> bool:
        return False


@admin.register(TufMetadata)
class TufMetadataAdmin(admin.ModelAdmin[TufMetadata]):
    list_display = ["role", "version", "expires", "created_at"]
    list_filter = ["role"]
    readonly_fields = ["role", "version", "expires", "created_at"]
    exclude = ["data"]

    def has_add_permission(self, request: object) -> bool:
        return False
