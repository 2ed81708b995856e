from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView

from fleet.api_docs import RedocView, SwaggerView
from fleet.health import healthz
from ota import tuf_views

# JSON errors under /api/ and /tuf/, including an identifier refused in the URL path.
handler400 = "fleet.identifiers.bad_request"
handler404 = "fleet.identifiers.page_not_found"
# The admin is the whole web UI: its "View site" link led to an unrouted "/".
admin.site.site_url = None

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
    path("api/v1/", include("ota.urls")),
    path("api/v1/", include("fleet.api_urls")),
    path("", include("telemetry.urls")),  # /metrics, /api/v1/telemetry/...
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("api/redoc/", RedocView.as_view(url_name="schema"), name="redoc"),
    re_path(r"^tuf/targets/(?P<path>models/.+)$", tuf_views.target, name="tuf-target"),
    re_path(r"^tuf/(?P<filename>[^/]+)$", tuf_views.metadata, name="tuf-metadata"),
]
