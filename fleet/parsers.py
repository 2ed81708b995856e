"""The API's JSON parser: bounded in size and in nesting, so a hostile body is a 4xx."""

import io
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from rest_framework import parsers
from rest_framework.exceptions import ParseError

# No API document nests deeper (TUF metadata with its custom facts is about 8 levels).
MAX_JSON_DEPTH = 32


def json_depth_check(value: Any, *, limit: int = MAX_JSON_DEPTH) -> None:
    """Raise ParseError when ``value`` nests more than ``limit`` arrays/objects deep."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                raise ParseError(f"JSON nests deeper than {limit} levels")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


class JSONParser(parsers.JSONParser):
    """DRF's parser, with the body limited to DATA_UPLOAD_MAX_MEMORY_SIZE (Django applies
    it to form bodies only) and the nesting to MAX_JSON_DEPTH (deeper input made the
    decoder raise RecursionError: a 500)."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if stream is not None and limit is not None:
            raw = stream.read(limit + 1)
            if len(raw) > limit:
                raise RequestDataTooBig(
                    f"the request body is over {limit} bytes (FLEET_MAX_METADATA_BYTES)"
                )
            stream = io.BytesIO(raw)
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError(f"JSON nests deeper than {MAX_JSON_DEPTH} levels") from None
        json_depth_check(data)
        return data
