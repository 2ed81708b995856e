"""Cursor pagination of the API's lists: a cursor needs a unique, unchanging ordering."""

from rest_framework.pagination import CursorPagination


class ById(CursorPagination):
    """The default (DRF's orders by a ``created`` field no model here has)."""

    ordering = "pk"
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000


class ByName(ById):
    ordering = "name"
