"""fleetctl's API client, its errors and the settings it reads from the environment."""

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from tuf.api.metadata import Metadata, Targets
from tuf.api.serialization.json import JSONSerializer
from urllib3.exceptions import MaxRetryError, NewConnectionError

from ota.fleetctl.multipart import MultipartBody


class UsageError(Exception):
    """Options that do not fit together: argparse reports it (exit status 2)."""


class CliError(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def _env(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise CliError("malformed", f"set {name}")
    return value


def client_from_env() -> "Client":
    """The client for FLEET_URL with FLEET_TOKEN."""
    return Client(_env("FLEET_URL"), _env("FLEET_TOKEN"))


def release_key_from_env() -> Path:
    """FLEET_RELEASE_KEY: the release private key file (CI only)."""
    return Path(_env("FLEET_RELEASE_KEY"))


class Client:
    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.session.headers["User-Agent"] = "fleetctl/1"

    def _check(self, response: requests.Response) -> Any:
        if response.ok:
            return response.json()
        try:
            error = response.json()["error"]
            raise CliError(error["code"], error["detail"])
        except (ValueError, KeyError, TypeError):
            raise CliError(
                "malformed", f"HTTP {response.status_code}: {response.text[:200]}"
            ) from None

    def get(self, path: str, params: dict[str, str] | None = None) -> Any:
        return self._check(self.session.get(f"{self.url}{path}", params=params, timeout=30))

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self._check(self.session.post(f"{self.url}{path}", json=body, timeout=60))

    def metadata(self, name: str) -> Metadata[Targets] | None:
        body = self._check(
            self.session.get(f"{self.url}/api/v1/models/{name}/metadata", timeout=30)
        )
        if body.get("metadata") is None:
            return None
        md: Metadata[Any] = Metadata.from_dict(body["metadata"])
        if not isinstance(md.signed, Targets):
            raise CliError("malformed", "the server returned non-targets metadata")
        return md

    def publish(self, name: str, md: Metadata[Targets], path: Path) -> Any:
        body = MultipartBody(md.to_bytes(JSONSerializer()), path)
        response = self.session.post(
            f"{self.url}/api/v1/models/{name}/publish",
            data=body,
            headers={"Content-Type": body.content_type, "Content-Length": str(len(body))},
            timeout=(30, 3600),
        )
        return self._check(response)

    def put_metadata(self, name: str, md: Metadata[Targets]) -> Any:
        return self._check(
            self.session.put(
                f"{self.url}/api/v1/models/{name}/metadata",
                json={"metadata": md.to_dict()},
                timeout=30,
            )
        )


def _server(exc: requests.RequestException) -> str:
    """The server a failed request was for: scheme://host:port, else FLEET_URL."""
    url = exc.request.url if exc.request is not None and exc.request.url else None
    if url is None:
        return os.environ.get("FLEET_URL", "").strip() or "FLEET_URL"
    parts = urlsplit(str(url))
    return f"{parts.scheme}://{parts.netloc}"


def _reason(exc: BaseException) -> str:
    """The innermost cause of a transport error, without urllib3's object reprs."""
    reason: object = exc.args[0] if exc.args else exc
    if isinstance(reason, MaxRetryError) and reason.reason is not None:
        reason = reason.reason
    text = str(reason)
    errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if errno:
        return errno.group(1).strip()
    return re.sub(r"^<[^>]*>: ", "", text)[:200] or type(reason).__name__


def transport_error(exc: requests.RequestException) -> CliError:
    """A request that got no answer from the server, as a stable code.

    ``unreachable``: no connection (refused, no such host, connect timeout, TLS handshake);
    ``timeout``: connected, but no answer in time; ``connection_lost``: the connection
    broke during the exchange; ``malformed``: FLEET_URL is not an http(s) URL.
    """
    server = _server(exc)
    if isinstance(
        exc,
        requests.exceptions.InvalidURL
        | requests.exceptions.MissingSchema
        | requests.exceptions.InvalidSchema,
    ):
        return CliError("malformed", f"FLEET_URL must be http(s)://HOST[:PORT]: {exc}")
    cause = exc.args[0] if exc.args else None
    if isinstance(cause, MaxRetryError):
        cause = cause.reason
    if isinstance(exc, requests.ConnectTimeout | requests.exceptions.SSLError) or isinstance(
        cause, NewConnectionError
    ):
        return CliError(
            "unreachable",
            f"cannot reach the server at {server} ({_reason(exc)}): check FLEET_URL and "
            "that the server is running",
        )
    if isinstance(exc, requests.Timeout):
        return CliError("timeout", f"the server at {server} did not answer in time")
    return CliError(
        "connection_lost", f"the connection to the server at {server} broke: {_reason(exc)}"
    )
