"""The admin site with the fleet overview as its landing page (``/admin/``)."""

from typing import Any
from urllib.parse import urlencode

from django.contrib.admin import AdminSite
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import URLPattern, URLResolver, path, reverse
from django.utils import timezone

from ota import audit_log
from ota.rollout_dashboard import fleet_overview

AUDIT_PER_PAGE = 50


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

    def get_urls(self) -> list[URLResolver | URLPattern]:
        return [
            path("audit/", self.admin_view(self.audit_view), name="audit_log"),
            *super().get_urls(),
        ]

    def audit_view(self, request: HttpRequest) -> TemplateResponse:
        """The fleet-wide audit log (rollouts only for those without fleet.view_auditevent)."""
        fleet_wide = request.user.has_perm("fleet.view_auditevent")
        if not (fleet_wide or request.user.has_perm("ota.view_rollout")):
            raise PermissionDenied
        filters, problems = audit_log.AuditFilters.parse(request.GET)
        page = Paginator(
            audit_log.audit_rows(filters, fleet_wide=fleet_wide), AUDIT_PER_PAGE
        ).get_page(request.GET.get("page"))
        context = {
            **self.each_context(request),
            "title": "Audit log",
            "subtitle": None,
            "page": page,
            "rows": audit_log.rows_html(
                list(page), rollout_prefix=reverse("admin:ota_rollout_changelist")
            ),
            "filters": filters,
            "filter_query": urlencode(filters.as_query()),
            "problems": problems,
            "what_choices": audit_log.WHAT_CHOICES if fleet_wide else audit_log.WHAT_CHOICES[:1],
            "fleet_wide": fleet_wide,
        }
        return TemplateResponse(request, "admin/audit_log.html", context)
