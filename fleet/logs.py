"""One log line per failed request, at a level that says whether someone should look.

Django logs a 4xx on ``django.request`` (from every server, with the exception's
traceback when a view raised one), and the development server logs the same request
again on ``django.server``. The console handler's filter keeps the first, without a
traceback for a 4xx; a 404 is an ordinary answer (a device probing for the next root
version, ``/tuf/2.root.json``) and is logged at INFO. 5xx keep their traceback.
"""

import logging


class RequestLogFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        status_code = getattr(record, "status_code", None)
        if not isinstance(status_code, int) or status_code < 400:
            return True
        if record.name == "django.server":
            return False  # django.request logged this response
        if status_code >= 500:
            return True
        record.exc_info = None
        record.exc_text = None
        if status_code == 404 and record.levelno > logging.INFO:
            record.levelno, record.levelname = logging.INFO, "INFO"
            return logging.getLogger(record.name).isEnabledFor(logging.INFO)
        return True
