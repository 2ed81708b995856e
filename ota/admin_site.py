"""The admin site with the fleet overview as its landing page (``/admin/``)."""

from typing import Any
from urllib.parse import urlencode

from django.contrib.admin import AdminSite
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import reverse
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
            overview = fleet_overview(timezone.now())
            since = overview.failures_since.strftime("%Y-%m-%d %H:%M:%S%z")
            context["overview"] = overview
            # Each failure bar links to those events: the same day, the same code.
            context["failures_link"] = (
                reverse("admin:fleet_deviceevent_changelist")
                + "?"
                + urlencode({"received_at__gte": since})
                + "&code={}"
            )
        return super().index(request, extra_context=context)
