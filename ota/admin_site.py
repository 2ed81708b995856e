"""The admin site with the fleet overview as its landing page (``/admin/``)."""

from typing import Any

from django.contrib.admin import AdminSite
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils import timezone

from ota.rollout_dashboard import fleet_overview


class FleetAdminSite(AdminSite):
    site_header = "Fleet OTA"
    site_title = "Fleet OTA"
    index_title = "Fleet overview"
    index_template = "admin/fleet_overview.html"

    def index(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> TemplateResponse:
        context = dict(extra_context or {})
        # Figures for those who may see devices; the app list stays for everyone.
        if request.user.has_perm("fleet.view_device"):
            context["overview"] = fleet_overview(timezone.now())
        return super().index(request, extra_context=context)
