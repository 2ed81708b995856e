"""Downloading artifact bytes from local storage: the authenticated API endpoint and
the public TUF target path, whole and with single HTTP byte ranges."""

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from tests.ota.publishing_helpers import post_publish, signed_metadata

SIZE = 1_000
VERSION = "1.0.0"
HARDWARE = "linux-x86_64-fp32"


@dataclass
class Published:
    pk: int
    data: bytes
    sha256: str
    token: str

    @property
    def url(self) -> str:
        return f"/api/v1/artifacts/{self.pk}/download"

    @property
    def tuf_url(self) -> str:
        return f"/tuf/targets/models/kws/{VERSION}/{HARDWARE}/{self.sha256}.model.onnx"


@pytest.fixture
def published(kws: Any, release_key: Any, ci_token: str, tmp_path: Path) -> Published:
    data = os.urandom(SIZE)
    md = signed_metadata(None, release_key.signer, data, version=VERSION, hardware=HARDWARE)
    response = post_publish(Client(), ci_token, md, data, tmp_path)
    assert response.status_code == 201, response.content
    return Published(response.json()["id"], data, hashlib.sha256(data).hexdigest(), ci_token)


def _get(url: str, token: str | None = None, range_: str | None = None) -> Any:
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if range_ is not None:
        headers["Range"] = range_
    return Client().get(url, headers=headers)


def _body(response: Any) -> bytes:
    return b"".join(response.streaming_content)


def test_full_download(published: Published) -> None:
    # when
    response = _get(published.url, published.token)

    # then
    assert response.status_code == 200
    assert _body(response) == published.data
    assert response["Content-Length"] == str(SIZE)
    assert response["Accept-Ranges"] == "bytes"
    assert response["ETag"] == f'"{published.sha256}"'
    assert response["Content-Type"] == "application/octet-stream"
    assert response["Content-Disposition"] == 'attachment; filename="model.onnx"'
    assert "Content-Range" not in response


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [
        pytest.param("bytes=10-19", 10, 19, id="closed"),
        pytest.param("bytes=100-", 100, SIZE - 1, id="open-ended"),
        pytest.param("bytes=-5", SIZE - 5, SIZE - 1, id="suffix"),
        pytest.param(f"bytes=0-{SIZE + 500}", 0, SIZE - 1, id="last-past-the-end"),
        pytest.param(f"bytes=-{SIZE * 2}", 0, SIZE - 1, id="suffix-longer-than-file"),
        pytest.param(f"bytes={SIZE - 1}-{SIZE - 1}", SIZE - 1, SIZE - 1, id="last-byte"),
    ],
)
def test_range_download(published: Published, header: str, first: int, last: int) -> None:
    # when
    response = _get(published.url, published.token, header)

    # then
    assert response.status_code == 206
    body = _body(response)
    assert body == published.data[first : last + 1]
    assert response["Content-Range"] == f"bytes {first}-{last}/{SIZE}"
    assert response["Content-Length"] == str(last - first + 1)
    assert response["ETag"] == f'"{published.sha256}"'


def test_closed_range_returns_exactly_those_ten_bytes(published: Published) -> None:
    response = _get(published.url, published.token, "bytes=10-19")

    assert response.status_code == 206
    body = _body(response)
    assert len(body) == 10
    assert body == published.data[10:20]
    assert response["Content-Range"] == f"bytes 10-19/{SIZE}"


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(f"bytes={SIZE}-", id="starts-at-end"),
        pytest.param(f"bytes={SIZE + 10}-{SIZE + 20}", id="starts-past-end"),
        pytest.param("bytes=-0", id="empty-suffix"),
    ],
)
def test_unsatisfiable_range_is_416(published: Published, header: str) -> None:
    response = _get(published.url, published.token, header)

    assert response.status_code == 416
    assert response["Content-Range"] == f"bytes */{SIZE}"


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("bytes=abc", id="not-numbers"),
        pytest.param("items=0-9", id="unknown-unit"),
        pytest.param("bytes=0-4,10-14", id="multi-range"),
        pytest.param("bytes=-", id="no-bounds"),
        pytest.param("garbage", id="garbage"),
    ],
)
def test_malformed_or_multi_range_gets_the_whole_file(published: Published, header: str) -> None:
    response = _get(published.url, published.token, header)

    assert response.status_code == 200
    assert _body(response) == published.data
    assert "Content-Range" not in response


def test_download_without_token_is_401(published: Published) -> None:
    response = _get(published.url)

    assert response.status_code == 401
    error = json.loads(response.content)["error"]
    assert error["code"] == "unauthorized"
    assert error["detail"]
    assert response["WWW-Authenticate"] == "Bearer"


def test_download_of_unknown_artifact_is_404(published: Published) -> None:
    response = _get(f"/api/v1/artifacts/{published.pk + 1000}/download", published.token)

    assert response.status_code == 404
    assert json.loads(response.content)["error"]["code"] == "not_found"


def test_public_tuf_target_path_serves_the_bytes(published: Published) -> None:
    # when fetched without any credential, as a device's TUF client does
    response = _get(published.tuf_url)

    # then
    assert response.status_code == 200
    assert _body(response) == published.data
    assert response["ETag"] == f'"{published.sha256}"'


def test_public_tuf_target_path_honours_range(published: Published) -> None:
    response = _get(published.tuf_url, range_="bytes=10-19")

    assert response.status_code == 206
    assert _body(response) == published.data[10:20]
    assert response["Content-Range"] == f"bytes 10-19/{SIZE}"


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(f"{VERSION}/{HARDWARE}/{'0' * 64}.model.onnx", id="wrong-hash"),
        pytest.param(f"{VERSION}/{HARDWARE}/{{sha}}.other.onnx", id="wrong-name"),
        pytest.param(f"9.9.9/{HARDWARE}/{{sha}}.model.onnx", id="wrong-version"),
    ],
)
def test_public_tuf_target_path_404s_for_other_targets(published: Published, path: str) -> None:
    response = _get(f"/tuf/targets/models/kws/{path.format(sha=published.sha256)}")

    assert response.status_code == 404


def test_suffix_range_of_an_empty_artifact_is_not_a_broken_206(
    kws: Any, release_key: Any, ci_token: str, tmp_path: Path
) -> None:
    # given a zero-byte artifact (nothing in publishing refuses one)
    md = signed_metadata(None, release_key.signer, b"")
    published = post_publish(Client(), ci_token, md, b"", tmp_path)
    assert published.status_code == 201, published.content
    url = f"/api/v1/artifacts/{published.json()['id']}/download"

    # when
    response = _get(url, ci_token, "bytes=-5")

    # then either the whole (empty) file or "not satisfiable", never a negative range
    assert response.status_code in {200, 416}
    assert response.get("Content-Range") in {None, "bytes */0"}
