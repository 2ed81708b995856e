from django.contrib import admin

from fleet.models import ApiToken


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin[ApiToken]):
    list_display = ["name", "user", "lookup", "created_at", "last_used_at", "revoked_at"]
    readonly_fields = ["lookup", "secret_hash", "created_at", "last_used_at"]
