from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext

from fleet import enrollment
from fleet.audit import audit_record
from fleet.errors import ServiceError
from fleet.models import (
    ApiToken,
    Device,
    DeviceCertificate,
    DeviceEvent,
    DynamicGroup,
    EnrollmentToken,
    Group,
    Tag,
)
from fleet.selectors import dynamic_group_devices, installed_models


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin[ApiToken]):
    """Scopes and models are fixed when a token is made (api_token_create); expiry and
    revocation can be changed here."""

    list_display = [
        "name",
        "user",
        "lookup",
        "scopes",
        "model_names",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
    ]
    list_filter = ["revoked_at", "expires_at"]
    readonly_fields = [
        "user",
        "lookup",
        "secret_hash",
        "scopes",
        "model_names",
        "created_at",
        "last_used_at",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # the clear token is shown once: create it with manage.py

    def save_model(self, request: HttpRequest, obj: ApiToken, form: Any, change: bool) -> None:
        with transaction.atomic():
            super().save_model(request, obj, form, change)
            changed = set(form.changed_data)
            if not changed:
                return
            target = f"API token {obj.name} ({obj.lookup}) of {obj.user.get_username()}"
            if "revoked_at" in changed and obj.revoked_at is not None:
                audit_record(action="api_token.revoke", target=target, by=request.user)
                changed.discard("revoked_at")
            if changed:
                audit_record(
                    action="api_token.change",
                    target=f"{target}: {', '.join(sorted(changed))}",
                    by=request.user,
                )


class CertificateInline(admin.TabularInline[DeviceCertificate, Device]):
    model = DeviceCertificate
    extra = 0
    can_delete = False
    readonly_fields = ["serial", "issued_at", "not_after", "revoked_at"]
    fields = ["serial", "issued_at", "not_after", "revoked_at"]


@admin.register(Device)
class DeviceAdmin(admin.ModelAdmin[Device]):
    list_display = [
        "device_id",
        "hardware",
        "installed",
        "online",
        "agent_version",
        "last_seen_at",
        "revoked_at",
    ]
    list_filter = ["online", "hardware", "groups", "tags"]
    search_fields = ["device_id"]
    show_full_result_count = False  # COUNT(*) over 100 000 rows on every page is wasted work
    list_per_page = 100
    filter_horizontal = ["tags", "groups"]
    exclude = ["reported"]
    readonly_fields = [
        "device_id",
        "hardware",
        "installed",
        "agent_version",
        "reported_seq",
        "online",
        "last_seen_at",
        "enrolled_at",
        "revoked_at",
    ]
    inlines = [CertificateInline]
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # devices enroll themselves with a token

    def action_checkbox(self, obj: Device) -> SafeString:
        """The same input as the admin's, written directly: rendering a form widget's
        template for each of the 100 rows was most of the list's time."""
        return format_html(
            '<input type="checkbox" name="{}" value="{}" class="action-select" aria-label="{}">',
            ACTION_CHECKBOX_NAME,
            obj.pk,
            gettext("Select this object for an action - {}").format(obj),
        )

    @admin.display(description="installed models")
    def installed(self, obj: Device) -> str:
        """Each model's version from the device's last report (``kws 2.0.0``)."""
        return (
            ", ".join(f"{name} {version}" for name, version in installed_models(obj.reported))
            or "-"
        )

    @admin.action(
        description="Revoke the selected devices (certificates go into the CRL)",
        permissions=["change"],
    )
    def revoke(self, request: HttpRequest, queryset: QuerySet[Device]) -> None:
        done = 0
        for device in queryset:
            try:
                enrollment.device_revoke(
                    device=device, reason=f"admin action by {request.user}", by=request.user
                )
                done += 1
            except ServiceError as exc:
                self.message_user(request, f"{device}: {exc.detail}", messages.WARNING)
        self.message_user(request, f"Revoked {done} device(s).")


@admin.register(Group)
class GroupAdmin(admin.ModelAdmin[Group]):
    list_display = ["name", "description", "created_at"]
    search_fields = ["name"]


@admin.register(DynamicGroup)
class DynamicGroupAdmin(admin.ModelAdmin[DynamicGroup]):
    list_display = ["name", "hardware", "tags", "matching"]
    search_fields = ["name"]

    @admin.display(description="devices now")
    def matching(self, obj: DynamicGroup) -> int:
        return dynamic_group_devices(obj).count()


@admin.register(Tag)
class TagAdmin(admin.ModelAdmin[Tag]):
    search_fields = ["name"]


@admin.register(EnrollmentToken)
class EnrollmentTokenAdmin(admin.ModelAdmin[EnrollmentToken]):
    list_display = ["lookup", "hardware", "group", "expires_at", "used_at", "device"]
    readonly_fields = ["lookup", "secret_hash", "created_by", "created_at", "used_at", "device"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # the clear token is shown once: create with the API or manage.py


@admin.register(DeviceEvent)
class DeviceEventAdmin(admin.ModelAdmin[DeviceEvent]):
    """Devices write their events (through the bridge); operators only read them."""

    list_display = ["device", "phase", "model", "rollout_id", "code", "ts", "received_at"]
    list_filter = ["phase", "code", "received_at"]
    list_select_related = ["device"]
    search_fields = ["device__device_id", "rollout_id"]
    show_full_result_count = False
    readonly_fields = [f.name for f in DeviceEvent._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
