from typing import Any
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.contrib.admin.options import IS_POPUP_VAR, TO_FIELD_VAR
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.core.paginator import Page, Paginator
from django.db import transaction
from django.db.models import Model as DjangoModel
from django.db.models import QuerySet
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
    JsonResponse,
)
from django.template.response import TemplateResponse
from django.templatetags.static import static
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import gettext
from rest_framework.exceptions import ValidationError

from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.identifiers import GROUP_NAME, TAG_NAME
from fleet import enrollment
from fleet.admin import DeviceAdmin as RegistryDeviceAdmin
from fleet.errors import ServiceError, code_for_status, flatten_detail
from fleet.identifiers import identifiers_check
from fleet.models import Device, Group, Tag
from ota import device_list, fleet_pages, rollout_form, rollouts
from ota import rollout_dashboard as dash
from ota.models import (
    Artifact,
    Model,
    ReleaseKey,
    Rollout,
    RolloutDevice,
    RolloutStatus,
    RolloutStrategy,
    TufMetadata,
)
from ota.rollout_selectors import rollout_audit
from ota.rollout_views import rollout_create_checked


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

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False  # read-only page: no Save buttons


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

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
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

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


# --- rollouts -----------------------------------------------------------------------------------
# The New rollout form builds the API's create document and goes through the API's own
# validation and service (ota/rollout_form.py). Operators watch rollouts on a read-only
# page (the change view is replaced) and pause, resume, abort, promote or start them, each
# with a reason; every action goes through ota/rollouts.py, so it is audited like an API
# call.

# action -> (permission, what the button says)
ROLLOUT_ACTIONS: dict[str, tuple[str, str]] = {
    "start": ("ota.start_rollout", "Start now"),
    "pause": ("ota.control_rollout", "Pause"),
    "resume": ("ota.control_rollout", "Resume"),
    "promote": ("ota.control_rollout", "Promote arm"),
    "abort": ("ota.control_rollout", "Abort and roll back"),
}
MAX_REASON = 500
DEVICES_PER_PAGE = 50


def available_actions(rollout: Rollout) -> list[str]:
    """What the rollout's status allows now (the services refuse the rest anyway)."""
    status = rollout.status
    allowed = []
    if status in (RolloutStatus.DRAFT, RolloutStatus.SCHEDULED):
        allowed.append("start")
    if status == RolloutStatus.RUNNING:
        allowed.append("pause")
    if status == RolloutStatus.PAUSED:
        allowed.append("resume")
    if (
        rollout.strategy == RolloutStrategy.AB
        and status in (RolloutStatus.RUNNING, RolloutStatus.PAUSED)
        and not rollout.promoted_arm
    ):
        allowed.append("promote")
    if status in (
        RolloutStatus.DRAFT,
        RolloutStatus.SCHEDULED,
        RolloutStatus.RUNNING,
        RolloutStatus.PAUSED,
    ):
        allowed.append("abort")
    return allowed


def detail_pk(object_id: str, what: str) -> int:
    """The primary key in a detail page's URL; anything but ASCII digits is a 404."""
    if not object_id.isascii() or not object_id.isdigit():
        raise Http404(f"no such {what}")
    return int(object_id)


def viewable[M: DjangoModel](
    model_admin: admin.ModelAdmin[Any],
    request: HttpRequest,
    rows: QuerySet[M],
    pk: int,
    missing: str,
) -> M:
    """Row `pk` of `rows` for a detail page: 404 (`missing`) when there is none, 403 when the
    user may not view it."""
    row = rows.filter(pk=pk).first()
    if row is None:
        raise Http404(missing)
    if not model_admin.has_view_permission(request, row):
        raise PermissionDenied
    return row


def detail_context(
    model_admin: admin.ModelAdmin[Any], request: HttpRequest, title: str
) -> dict[str, Any]:
    """What the admin's base template needs around a read-only detail page."""
    return {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": title,
        "subtitle": None,
        "has_view_permission": True,
    }


class RolloutChangeList(ChangeList):
    """Reads the progress of a page of rollouts in one query, not one per row."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        rows = list(self.result_list)  # fills the queryset's cache: the rows shown
        progress = dash.arms_progress(rows)
        for rollout in rows:
            rollout.dash_arms = progress[rollout.pk]


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
    list_select_related = ["model", "created_by"]
    search_fields = ["model__name", "version", "description"]
    actions = None

    def has_add_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("ota.add_rollout")  # the API's permission to create

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False  # read-only page; actions have their own permissions

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

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return RolloutChangeList

    @admin.display(description="devices by state")
    def progress(self, obj: Rollout) -> str:
        arms = getattr(obj, "dash_arms", None)
        if arms is None:
            arms = dash.arm_progress(obj)
        total: dict[str, int] = {}
        for arm in arms:
            for segment in arm.segments:
                total[segment.label] = total.get(segment.label, 0) + segment.count
        return ", ".join(f"{label} {n}" for label, n in total.items()) or "-"

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            path("<int:pk>/act/", view(self.act_view), name="ota_rollout_act"),
            path("<int:pk>/progress/", view(self.progress_view), name="ota_rollout_progress"),
            path("add/preview/", view(self.preview_view), name="ota_rollout_preview"),
            *super().get_urls(),
        ]

    def _rollout(self, request: HttpRequest, pk: int) -> Rollout:
        rows = Rollout.objects.select_related("model", "created_by")
        return viewable(self, request, rows, pk, f"no rollout r-{pk}")

    def _live(
        self, request: HttpRequest, rollout: Rollout, counts: dash.DeviceCounts
    ) -> dict[str, Any]:
        """What changes while the page is open: status, actions, progress, gates, stages."""
        arms = counts.arms(rollout)
        devices_total = sum(a.devices for a in arms)
        return {
            "rollout": rollout,
            "arms": arms,
            "gates": dash.gate_rows(rollout),
            "comparisons": dash.comparison_charts(rollout),
            "failures": counts.failures(),
            "actions": [
                (name, ROLLOUT_ACTIONS[name][1])
                for name in available_actions(rollout)
                if request.user.has_perm(ROLLOUT_ACTIONS[name][0])
            ],
            "arm_names": [a["name"] for a in dash.arms_table(rollout)],
            "stages": dash.stage_timeline(rollout, devices_total),
            "devices_total": devices_total,
            "max_reason": MAX_REASON,
        }

    def _devices(
        self, request: HttpRequest, rollout: Rollout, counts: dash.DeviceCounts
    ) -> dict[str, Any]:
        """The devices table's page, by the page's filters (refreshed live too)."""
        filters = {
            "state": request.GET.get("state", "")[:32],
            "arm": request.GET.get("arm", "")[:64],
            "code": request.GET.get("code", "")[:32],
        }
        rows = dash.DeviceRows(rollout, counts, **filters)
        devices: Page[dash.DeviceRow] = Paginator(rows, DEVICES_PER_PAGE).get_page(
            request.GET.get("page")
        )
        query = {k: v for k, v in filters.items() if v}
        return {
            "rollout": rollout,
            "devices": devices,
            "filters": filters,
            "filter_query": urlencode(query),
            "devices_live_query": urlencode({**query, "part": "devices", "page": devices.number}),
        }

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        rollout = self._rollout(request, detail_pk(object_id, "rollout"))
        counts = dash.DeviceCounts.of(rollout)
        context = {
            **detail_context(self, request, f"Rollout {rollout.public_id}: {rollout.model.name}"),
            **self._live(request, rollout, counts),
            **self._devices(request, rollout, counts),
            "arms_table": dash.arms_table(rollout),
            "selection": dash.selection_sentences(rollout),
            "policy": dash.policy_sentences(rollout),
            "audit": rollout_audit(rollout).values(
                "at", "actor_name", "from_status", "to_status", "reason"
            ),
            "state_choices": dash.DISPLAY_STATES,
        }
        return TemplateResponse(request, "admin/ota/rollout/detail.html", context)

    def add_view(
        self,
        request: HttpRequest,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = request.POST if request.method == "POST" else None
        error = ""
        if form is not None:
            then = form.get("then", "draft")
            try:
                if then == "start" and not request.user.has_perm("ota.start_rollout"):
                    raise ServiceError(
                        ErrorCode.FORBIDDEN,
                        "starting a rollout needs the ota.start_rollout permission",
                    )
                rollout = rollout_create_checked(rollout_form.create_document(form), request.user)
            except ValidationError as exc:
                error = f"{code_for_status(400)}: {flatten_detail(exc.detail)}"
            except ServiceError as exc:
                error = f"{exc.code}: {exc.detail}"
            else:
                return self._created(request, rollout, start=then == "start")
        values = form if form is not None else request.GET
        context = {
            **self.admin_site.each_context(request),
            **rollout_form.form_rows(form),
            "opts": self.opts,
            "title": "New rollout",
            "subtitle": None,
            "has_view_permission": True,
            "form": values,
            "error": error,
            "models": list(Model.objects.values_list("name", flat=True)),
            "versions": list(
                Artifact.objects.values_list("model__name", "version")
                .distinct()
                .order_by("model__name", "-version")
            ),
            "may_start": request.user.has_perm("ota.start_rollout"),
        }
        # 200 with the refusal on the form, as the admin's own forms answer.
        return TemplateResponse(request, "admin/ota/rollout/add.html", context)

    def _created(self, request: HttpRequest, rollout: Rollout, *, start: bool) -> HttpResponse:
        page = HttpResponseRedirect(reverse("admin:ota_rollout_change", args=[rollout.pk]))
        if start:
            # Created (and scheduled) already: a refused start is said on its page, so that
            # submitting the form again does not make a second rollout.
            try:
                rollout = rollouts.rollout_start(
                    rollout=rollout, by=request.user, reason="started on creation"
                )
            except ServiceError as exc:
                self.message_user(
                    request,
                    f"Rollout {rollout.public_id} created but not started: {exc.detail}",
                    messages.ERROR,
                )
                return page
        self.message_user(request, f"Rollout {rollout.public_id} created ({rollout.status}).")
        return page

    def preview_view(self, request: HttpRequest) -> HttpResponse:
        """What the New rollout form's selection targets now (ota/dashboard.js asks)."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        return JsonResponse(rollout_form.selection_preview(request.GET).as_json())

    def progress_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        """The live part of the rollout page, fetched by ota/dashboard.js every few seconds."""
        rollout = self._rollout(request, pk)
        counts = dash.DeviceCounts.of(rollout)
        if request.GET.get("part") == "devices":
            return TemplateResponse(
                request,
                "admin/ota/rollout/_devices.html",
                self._devices(request, rollout, counts),
            )
        return TemplateResponse(
            request, "admin/ota/rollout/_live.html", self._live(request, rollout, counts)
        )

    def act_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        rollout = self._rollout(request, pk)
        action = request.POST.get("action", "")
        if action not in ROLLOUT_ACTIONS:
            return HttpResponseBadRequest("unknown action")
        if not request.user.has_perm(ROLLOUT_ACTIONS[action][0]):
            raise PermissionDenied
        page = reverse("admin:ota_rollout_change", args=[rollout.pk])
        reason = " ".join(request.POST.get("reason", "").split())
        if not reason:
            self.message_user(
                request, "Give a reason: it goes into the audit trail.", messages.ERROR
            )
            return HttpResponseRedirect(page)
        if len(reason) > MAX_REASON:
            self.message_user(
                request, f"The reason is longer than {MAX_REASON} characters.", messages.ERROR
            )
            return HttpResponseRedirect(page)
        user = request.user
        try:
            if action == "start":
                rollouts.rollout_start(rollout=rollout, by=user, reason=reason)
            elif action == "pause":
                rollouts.rollout_pause(rollout=rollout, by=user, reason=reason)
            elif action == "resume":
                rollouts.rollout_resume(rollout=rollout, by=user, reason=reason)
            elif action == "abort":
                rollouts.rollout_abort(rollout=rollout, by=user, reason=reason)
            else:
                arm = request.POST.get("arm", "")[:64]
                rollouts.rollout_promote(rollout=rollout, arm=arm, by=user, reason=reason)
        except ServiceError as exc:
            self.message_user(request, f"Rollout {rollout.public_id}: {exc.detail}", messages.ERROR)
        else:
            self.message_user(request, f"Rollout {rollout.public_id}: {action} done.")
        return HttpResponseRedirect(page)


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

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


# --- devices and models -------------------------------------------------------------------------
# The device page shows what a device runs, what it was asked to run, its update history and
# the rollouts that touched it (ota/fleet_pages.py); so it is registered here, over the
# registry's own DeviceAdmin, which stays the list and its filters.

admin.site.unregister(Device)
MAX_LABELS = 64


class FailingFilter(admin.SimpleListFilter):
    title = "updates"
    parameter_name = "failing"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return list(device_list.FAILING_CHOICES)

    def queryset(self, request: HttpRequest, queryset: QuerySet[Device]) -> QuerySet[Device]:
        return device_list.failing(queryset, self.value() or "")


@admin.register(Device)
class DeviceAdmin(RegistryDeviceAdmin):
    list_filter = ["online", FailingFilter, "hardware", "groups", "tags"]

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            path("<int:pk>/revoke/", view(self.revoke_view), name="fleet_device_revoke"),
            path("<int:pk>/labels/", view(self.labels_view), name="fleet_device_labels"),
            *super().get_urls(),
        ]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """The list (ota/device_list.py). Posts (the actions) and the admin's pop-ups stay
        with the admin's ChangeList, which reads the same query string."""
        if request.method != "GET" or IS_POPUP_VAR in request.GET or TO_FIELD_VAR in request.GET:
            return super().changelist_view(request, extra_context)
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        actions = self.get_action_choices(request, default_choices=[("", "- Select an option -")])
        filters, number, problems = device_list.DeviceFilters.parse(
            request.GET, first=1 if len(actions) > 1 else 0
        )
        selected = device_list.devices(filters)
        count = selected.count()
        pages = max(1, -(-count // device_list.PER_PAGE))
        number = min(number, pages)
        start = (number - 1) * device_list.PER_PAGE
        rows = list(
            selected.values_list(*device_list.COLUMNS)[start : start + device_list.PER_PAGE]
        )
        changelist = reverse("admin:fleet_device_changelist")
        icons = {
            flag: format_html('<img src="{}" alt="{}">', static(f"admin/img/icon-{name}.svg"), flag)
            for flag, name in ((True, "yes"), (False, "no"))
        }
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Select device to change"
            if self.has_change_permission(request)
            else "Select device to view",
            "subtitle": None,
            "filters": filters,
            "sidebar": device_list.filter_choices(filters),
            "problems": problems,
            "headers": filters.headers(),
            "rows": device_list.rows_html(
                rows,
                change_prefix=changelist,
                checkbox_label=(
                    gettext("Select this object for an action - {}") if len(actions) > 1 else None
                ),
                icons=icons,
            ),
            "shown": len(rows),
            "count": count,
            "page": number,
            "pages": pages,
            "previous": filters.link(p=number - 1) if number > 1 else "",
            "next": filters.link(p=number + 1) if number < pages else "",
            "clear": filters.link(
                online__exact=None,
                failing=None,
                hardware=None,
                groups__id__exact=None,
                tags__id__exact=None,
            ),
            "hidden": [(k, v) for k, v in filters.as_query().items() if k != "q"],
            "actions": actions if len(actions) > 1 else [],
        }
        return TemplateResponse(request, "admin/fleet/device/list.html", context)

    def _device(
        self, request: HttpRequest, pk: int, devices: QuerySet[Device] | None = None
    ) -> Device:
        rows = devices if devices is not None else Device.objects.all()
        return viewable(self, request, rows, pk, f"no device {pk}")

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        device = self._device(request, detail_pk(object_id, "device"), fleet_pages.page_devices())
        may_change = self.has_change_permission(request, device)
        context = {
            **detail_context(self, request, f"Device {device.device_id}"),
            **fleet_pages.device_page(device, label_choices=may_change),
            "device": device,
            "may_change": may_change,
            "stale": device.last_seen_at is None
            or device.last_seen_at < timezone.now() - dash.STALE_AFTER,
            "max_reason": MAX_REASON,
        }
        return TemplateResponse(request, "admin/fleet/device/detail.html", context)

    def revoke_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        device = self._device(request, pk)
        if not self.has_change_permission(request, device):
            raise PermissionDenied
        page = reverse("admin:fleet_device_change", args=[device.pk])
        reason = " ".join(request.POST.get("reason", "").split())
        if not reason or len(reason) > MAX_REASON:
            self.message_user(
                request,
                f"Give a reason of at most {MAX_REASON} characters: it goes into the audit log.",
                messages.ERROR,
            )
            return HttpResponseRedirect(page)
        try:
            enrollment.device_revoke(device=device, reason=reason, by=request.user)
        except ServiceError as exc:
            self.message_user(request, f"{device.device_id}: {exc.detail}", messages.ERROR)
        else:
            self.message_user(
                request, f"{device.device_id} is revoked: its certificates go into the CRL."
            )
        return HttpResponseRedirect(page)

    def labels_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        """Tags (created when new) and groups (which must exist), as typed names."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        device = self._device(request, pk)
        if not self.has_change_permission(request, device):
            raise PermissionDenied
        page = reverse("admin:fleet_device_change", args=[device.pk])
        tags = rollout_form.split_names(request.POST.get("tags", ""))
        groups = rollout_form.split_names(request.POST.get("groups", ""))
        try:
            if len(tags) > MAX_LABELS or len(groups) > MAX_LABELS:
                raise ServiceError(
                    ErrorCode.MALFORMED, f"at most {MAX_LABELS} tags and {MAX_LABELS} groups"
                )
            identifiers_check(TAG_NAME, tags, field="tags")
            identifiers_check(GROUP_NAME, groups, field="groups")
            found = list(Group.objects.filter(name__in=groups))
            missing = sorted(set(groups) - {g.name for g in found})
            if missing:
                raise ServiceError(ErrorCode.NOT_FOUND, f"no group {', '.join(missing)}")
            with transaction.atomic():
                for name in tags:
                    Tag.objects.get_or_create(name=name)
                device.tags.set(Tag.objects.filter(name__in=tags))
                device.groups.set(found)
        except ServiceError as exc:
            self.message_user(request, f"{device.device_id}: {exc.detail}", messages.ERROR)
        else:
            self.message_user(request, f"{device.device_id}: tags and groups saved.")
        return HttpResponseRedirect(page)


class ModelPageAdmin(ModelAdmin):
    """The model page: versions x hardware variants, devices per version, release keys."""

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        model = viewable(
            self, request, Model.objects.all(), detail_pk(object_id, "model"), "no such model"
        )
        context = {
            **detail_context(self, request, f"Model {model.name}"),
            **fleet_pages.model_page(model),
            "model": model,
        }
        return TemplateResponse(request, "admin/ota/model/detail.html", context)


admin.site.unregister(Model)
admin.site.register(Model, ModelPageAdmin)
