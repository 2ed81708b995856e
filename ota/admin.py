from collections.abc import Callable

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from fleet.errors import ServiceError
from ota import rollouts
from ota.models import (
    Artifact,
    Model,
    ReleaseKey,
    Rollout,
    RolloutAuditEvent,
    RolloutDevice,
    TufMetadata,
)
from ota.rollout_selectors import rollout_progress


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


# --- rollouts -----------------------------------------------------------------------------------
# Rollouts are created through the API (or `fleetctl`), which validates the whole document;
# here operators watch them and pause, resume, abort or start them. Every action goes through
# ota/rollouts.py, so it is audited like an API call.


class RolloutAuditInline(admin.TabularInline[RolloutAuditEvent, Rollout]):
    model = RolloutAuditEvent
    extra = 0
    can_delete = False
    fields = ["at", "from_status", "to_status", "actor_name", "reason", "figures"]
    readonly_fields = ["at", "from_status", "to_status", "actor_name", "reason", "figures"]
    ordering = ["at", "pk"]

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Rollout)
class RolloutAdmin(admin.ModelAdmin[Rollout]):
    list_display = [
        "public_id",
        "model",
        "strategy",
        "version",
        "status",
        "stage",
        "progress",
        "created_by",
        "created_at",
    ]
    list_filter = ["status", "strategy", "model"]
    search_fields = ["model__name", "version", "description"]
    readonly_fields = [*(str(f.name) for f in Rollout._meta.fields), "progress"]
    inlines = [RolloutAuditInline]
    actions = ["start", "pause", "resume", "abort"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    @admin.display(description="id", ordering="pk")
    def public_id(self, obj: Rollout) -> str:
        return obj.public_id

    @admin.display(description="stage")
    def stage(self, obj: Rollout) -> str:
        stages = obj.stages if isinstance(obj.stages, list) else []
        if obj.promoted_arm:
            return f"promoted {obj.promoted_arm}"
        if obj.current_stage >= len(stages):
            return "-"
        percent = stages[obj.current_stage]["percent"]
        return f"{obj.current_stage + 1}/{len(stages)} ({percent:g} %)"

    @admin.display(description="devices by state")
    def progress(self, obj: Rollout) -> str:
        total = rollout_progress(obj)["total"]
        return ", ".join(f"{state} {n}" for state, n in sorted(total.items())) or "-"

    def _act(
        self,
        request: HttpRequest,
        queryset: QuerySet[Rollout],
        perm: str,
        verb: str,
        change: Callable[[Rollout], Rollout],
    ) -> None:
        if not request.user.has_perm(perm):
            self.message_user(request, f"{verb} needs the {perm} permission", messages.ERROR)
            return
        done = 0
        for rollout in queryset:
            try:
                change(rollout)
                done += 1
            except ServiceError as exc:
                self.message_user(request, f"{rollout.public_id}: {exc.detail}", messages.WARNING)
        self.message_user(request, f"{verb}: {done} rollout(s).")

    @admin.action(description="Start the selected rollouts now")
    def start(self, request: HttpRequest, queryset: QuerySet[Rollout]) -> None:
        reason = f"started from the admin by {request.user}"
        self._act(
            request,
            queryset,
            "ota.start_rollout",
            "Started",
            lambda r: rollouts.rollout_start(rollout=r, by=request.user, reason=reason),
        )

    @admin.action(description="Pause the selected rollouts")
    def pause(self, request: HttpRequest, queryset: QuerySet[Rollout]) -> None:
        reason = f"paused from the admin by {request.user}"
        self._act(
            request,
            queryset,
            "ota.control_rollout",
            "Paused",
            lambda r: rollouts.rollout_pause(rollout=r, by=request.user, reason=reason),
        )

    @admin.action(description="Resume the selected rollouts")
    def resume(self, request: HttpRequest, queryset: QuerySet[Rollout]) -> None:
        reason = f"resumed from the admin by {request.user}"
        self._act(
            request,
            queryset,
            "ota.control_rollout",
            "Resumed",
            lambda r: rollouts.rollout_resume(rollout=r, by=request.user, reason=reason),
        )

    @admin.action(description="Abort the selected rollouts and roll their devices back")
    def abort(self, request: HttpRequest, queryset: QuerySet[Rollout]) -> None:
        reason = f"aborted from the admin by {request.user}"
        self._act(
            request,
            queryset,
            "ota.control_rollout",
            "Aborted",
            lambda r: rollouts.rollout_abort(rollout=r, by=request.user, reason=reason),
        )


@admin.register(RolloutDevice)
class RolloutDeviceAdmin(admin.ModelAdmin[RolloutDevice]):
    list_display = [
        "rollout",
        "device",
        "arm",
        "state",
        "attempts",
        "last_phase",
        "last_code",
        "notified_at",
        "updated_at",
    ]
    list_filter = ["state", "arm", "last_code"]
    search_fields = ["device__device_id"]
    list_select_related = ["rollout__model", "device"]
    show_full_result_count = False
    list_per_page = 100
    readonly_fields = [f.name for f in RolloutDevice._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
