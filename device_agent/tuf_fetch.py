"""The agent's HTTP client for TUF metadata: a `tuf.ngclient.FetcherInterface`.

ngclient lets an application bring its own network stack by implementing
`FetcherInterface._fetch()` (its documented extension point). Ours adds what ngclient's
`Urllib3Fetcher` has no argument for: the control plane's private CA
(`enroll --server-ca`) and a bound on each whole file, not only on the gaps between
bytes. Proxies come from the usual environment variables (`https_proxy`, `no_proxy`...),
as with ngclient's own fetcher.
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
                "GET", url, preload_content=False, timeout=urllib3.Timeout(self.socket_timeout)
            )
        except urllib3.exceptions.MaxRetryError as exc:
            if isinstance(exc.reason, urllib3.exceptions.TimeoutError):
                raise tuf_exceptions.SlowRetrievalError(f"no answer from {url}") from exc
            raise
        if response.status >= 400:
            response.close()
            response.release_conn()
            # ngclient reads 403/404 of the next root version as "no newer root".
            raise tuf_exceptions.DownloadHTTPError(
                f"HTTP status {response.status}", response.status
            )
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
            raise tuf_exceptions.SlowRetrievalError(f"no data for {self.socket_timeout}s") from exc
        finally:
            if not whole:
                # Unread bytes (too slow, too long): drop the connection, never reuse it.
                response.close()
            response.release_conn()
