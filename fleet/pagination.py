"""Cursor pagination of the API's lists: a cursor needs a unique, unchanging ordering."""

from typing import Any

from rest_framework.exceptions import NotFound
from rest_framework.pagination import CursorPagination

from device_agent.protocol.errors import ErrorCode
from fleet.errors import ServiceError

MAX_CURSOR_LENGTH = 1000


class Cursor(CursorPagination):
    """Every cursor list of the API: a cursor that does not decode is ``malformed`` (DRF
    answers 404, as if the list were missing); the schema gives the parameters' bounds."""

    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000

    def decode_cursor(self, request: Any) -> Any:
        if len(request.query_params.get(self.cursor_query_param, "")) > MAX_CURSOR_LENGTH:
            raise ServiceError(ErrorCode.MALFORMED, "invalid cursor")
        try:
            return super().decode_cursor(request)
        except NotFound:
            raise ServiceError(ErrorCode.MALFORMED, "invalid cursor") from None

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters: list[dict[str, Any]] = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.cursor_query_param:
                parameter["schema"]["maxLength"] = MAX_CURSOR_LENGTH
            elif parameter["name"] == self.page_size_query_param:
                parameter["schema"].update(minimum=1, maximum=self.max_page_size)
        return parameters


class ById(Cursor):
    """The default (DRF's orders by a ``created`` field no model here has)."""

    ordering = "pk"


class ByName(ById):
    ordering = "name"
