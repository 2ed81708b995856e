"""The API's browsable docs: a browser without a session goes to the admin's login page
and comes back; an API client gets the JSON 401 as anywhere else."""

from typing import Any

from django.contrib.auth.views import redirect_to_login
from django.urls import reverse
from drf_spectacular.views import SpectacularRedocView, SpectacularSwaggerView
from rest_framework import exceptions
from rest_framework.response import Response

from fleet.middleware import wants_html


class _LoginRedirect:
    def handle_exception(self, exc: Exception) -> Any:
        request = self.request  # type: ignore[attr-defined]
        if isinstance(exc, exceptions.NotAuthenticated) and wants_html(request):
            return redirect_to_login(request.get_full_path(), reverse("admin:login"))
        response: Response = super().handle_exception(exc)  # type: ignore[misc]
        return response


class SwaggerView(_LoginRedirect, SpectacularSwaggerView):
    pass


class RedocView(_LoginRedirect, SpectacularRedocView):
    pass
