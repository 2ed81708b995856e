"""The address a request came from, for counting: login lockouts and throttles.

``X-Forwarded-For`` is whatever the client wrote, plus one entry per proxy that passed the
request on. Only the entries our own proxies appended can be believed, so the client is
the one ``FLEET_TRUSTED_PROXIES`` from the right; with none configured, ``REMOTE_ADDR``.
"""

import ipaddress

from django.conf import settings
from django.http import HttpRequest


def client_ip(request: HttpRequest) -> str:
    remote = str(request.META.get("REMOTE_ADDR") or "")
    hops = settings.FLEET_TRUSTED_PROXIES
    if hops <= 0:
        return remote
    forwarded = [a.strip() for a in str(request.META.get("HTTP_X_FORWARDED_FOR", "")).split(",")]
    forwarded = [a for a in forwarded if a]
    if not forwarded:
        return remote
    candidate = forwarded[-min(hops, len(forwarded))]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:  # a proxy we trust would not write this: count it as the proxy's
        return remote
