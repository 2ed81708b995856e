"""The agent's HTTP client for TUF metadata: a `tuf.ngclient.FetcherInterface`.

ngclient lets an application bring its own network stack by implementing
`FetcherInterface._fetch()` (its documented extension point). Ours adds what ngclient's
`Urllib3Fetcher` has no argument for: the control plane's private CA
(`enroll --server-ca`) and a bound on each whole file, not only on the gaps between
bytes. Proxies come from the usual environment variables (`https_proxy`, `no_proxy`...),
as with ngclient's own fetcher.

A server that does not answer (connection refused or reset, no response within the
socket timeout, 5xx or 429 while it restarts) raises `ServerUnavailable` or `NoAnswer`
at once: urllib3 does not retry on its own, so the caller (verify.tuf_updater) retries
the whole refresh with backoff within its deadline instead of several immediate tries.
"""

import math
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import tuf
import urllib3
from tuf.api import exceptions as tuf_exceptions
from tuf.ngclient import FetcherInterface

TUF_CHUNK = 64 * 1024
# Answers of a server that may recover: worth another try after a pause.
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# No immediate retries (the caller backs off); redirects are still followed.
NO_RETRIES = urllib3.Retry(total=None, connect=0, read=0, other=0, status=0, redirect=5)


class ServerUnavailable(tuf_exceptions.DownloadError):
    """The server refused or dropped the connection, or answered 5xx/429: transient."""


class NoAnswer(tuf_exceptions.SlowRetrievalError):
    """No response, or no byte, within the socket timeout: transient."""


class RetryableHTTPError(tuf_exceptions.DownloadHTTPError):
    """An HTTP status a restarting or overloaded server answers (RETRYABLE_STATUS)."""


def is_transient(exc: BaseException) -> bool:
    """Whether a refresh that failed with `exc` may succeed if tried again later."""
    return isinstance(exc, ServerUnavailable | NoAnswer | RetryableHTTPError)


class DeadlineFetcher(FetcherInterface):
    """Fetches with a deadline on each whole file.

    A gap of `socket_timeout_s` without a byte, or a file that takes longer than
    `deadline_s` (a server dripping a byte every few seconds), ends the fetch with
    SlowRetrievalError (download_timeout). The size bound is ngclient's: it stops reading
    past the role's maximum length (metadata_too_large).
    """

    def __init__(
        self,
        *,
        socket_timeout_s: float,
        deadline_s: float,
        app_user_agent: str,
        ca_certs: str | None = None,
    ) -> None:
        self.socket_timeout = math.ceil(socket_timeout_s)
        self.deadline_s = deadline_s
        self._pool_args: dict[str, Any] = {
            "headers": {"User-Agent": f"{app_user_agent} python-tuf/{tuf.__version__}"},
            "ca_certs": ca_certs,
        }
        self._proxies = urllib.request.getproxies()
        self._pools: dict[str | None, urllib3.PoolManager] = {}

    def _pool(self, url: str) -> urllib3.PoolManager:
        parsed = urllib3.util.parse_url(url)
        proxy = None
        host = parsed.host or ""
        if host and not urllib.request.proxy_bypass(host):
            proxy = self._proxies.get(parsed.scheme or "") or self._proxies.get("all")
        pool = self._pools.get(proxy)
        if pool is None:
            pool = self._pools[proxy] = (
                urllib3.ProxyManager(proxy, **self._pool_args)
                if proxy
                else urllib3.PoolManager(**self._pool_args)
            )
        return pool

    def _fetch(self, url: str) -> Iterator[bytes]:
        try:
            response = self._pool(url).request(
                "GET",
                url,
                preload_content=False,
                timeout=urllib3.Timeout(self.socket_timeout),
                retries=NO_RETRIES,
            )
        except urllib3.exceptions.MaxRetryError as exc:
            reason = exc.reason
            # NewConnectionError (refused, no route) is a kind of ConnectTimeoutError.
            if isinstance(reason, urllib3.exceptions.NewConnectionError):
                raise ServerUnavailable(f"{url} unreachable: {reason}") from exc
            if isinstance(reason, urllib3.exceptions.TimeoutError):
                raise NoAnswer(f"no answer from {url}") from exc
            if isinstance(reason, urllib3.exceptions.ProtocolError | ConnectionError):
                raise ServerUnavailable(f"{url} dropped the connection: {reason}") from exc
            raise
        except (urllib3.exceptions.ProtocolError, ConnectionError) as exc:
            raise ServerUnavailable(f"{url} dropped the connection: {exc}") from exc
        if response.status >= 400:
            response.close()
            response.release_conn()
            # ngclient reads 403/404 of the next root version as "no newer root".
            error = (
                RetryableHTTPError
                if response.status in RETRYABLE_STATUS
                else tuf_exceptions.DownloadHTTPError
            )
            raise error(f"HTTP status {response.status} for {url}", response.status)
        return self._chunks(response)

    def _chunks(self, response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
        deadline = time.monotonic() + self.deadline_s
        read1 = getattr(response, "read1", None)
        chunks: Iterator[bytes] = (
            iter(lambda: read1(TUF_CHUNK), b"") if read1 else response.stream(TUF_CHUNK)
        )
        whole = False
        try:
            for data in chunks:
                yield data
                if time.monotonic() > deadline:
                    raise tuf_exceptions.SlowRetrievalError(
                        f"not fetched within the {self.deadline_s:g}s deadline"
                    )
            whole = True
        except urllib3.exceptions.TimeoutError as exc:
            raise NoAnswer(f"no data for {self.socket_timeout}s") from exc
        except (urllib3.exceptions.ProtocolError, ConnectionError) as exc:
            raise ServerUnavailable(f"the connection dropped: {exc}") from exc
        finally:
            if not whole:
                # Unread bytes (too slow, too long): drop the connection, never reuse it.
                response.close()
            response.release_conn()
