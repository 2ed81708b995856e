"""Error responses to API clients are the JSON envelope, never an HTML page."""

import json
from collections.abc import Callable

from django.http import HttpRequest
from django.http.response import HttpResponse, HttpResponseBase

from device_agent.protocol.errors import ErrorCode
from fleet.errors import code_for_status, error_body, error_json_response


def wants_html(request: HttpRequest) -> bool:
    """A browser: it asks for text/html (curl, requests and the agent send */*)."""
    return "text/html" in request.headers.get("Accept", "")


def is_api_client(request: HttpRequest) -> bool:
    """A request under /api/, or from a client that does not take HTML (devices on /tuf/,
    scripts, Prometheus): these never get an HTML page, Django's debug pages included."""
    return request.path.startswith("/api/") or not wants_html(request)


class ErrorEnvelopeMiddleware:
    """Turns the HTML error pages Django answers outside DRF's views (unknown paths, a
    body over the size limit, server faults; with DEBUG its technical pages that list
    every URL pattern or a traceback) into ``{"error": {...}}`` for API clients.

    First in MIDDLEWARE, so it sees what every inner layer answered. The response is
    rewritten in place: Django has already logged it, and logs a new object again.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        if (
            response.status_code < 400
            or not isinstance(response, HttpResponse)
            or response.get("Content-Type", "").startswith("application/json")
            or not is_api_client(request)
        ):
            return response
        if not request.path.startswith("/api/") and not response.get("Content-Type", "").startswith(
            "text/html"
        ):
            return response  # e.g. /metrics' plain-text refusals
        code = code_for_status(response.status_code)
        detail = (
            "internal server error; it has been logged"
            if response.status_code >= 500
            else f"{response.reason_phrase.lower()}: {request.method} {request.path}"
        )
        response.content = json.dumps(error_body(code, detail)).encode()
        response["Content-Type"] = "application/json"
        if response.has_header("Content-Length"):  # CommonMiddleware's, of the HTML page
            response["Content-Length"] = str(len(response.content))
        return response


class RejectNulMiddleware:
    """A NUL character in the query string is a 400: no filter has one, and PostgreSQL
    refuses it in a query (a 500 from whichever view passed it on). In the path, the
    identifier converters refuse it (``invalid_identifier``)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if any(
            "\x00" in key or any("\x00" in value for value in values)
            for key, values in request.GET.lists()
        ):
            return error_json_response(
                ErrorCode.MALFORMED, "NUL characters are not allowed in a query string", 400
            )
        return self.get_response(request)
