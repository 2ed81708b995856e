"""Artifacts on S3 (django-storages + boto3) against moto's server on a loopback port:
publishing stores the bytes, downloads redirect to a presigned URL, refusals leave
nothing behind, and /healthz notices when the object store goes away."""

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from botocore.config import Config
from django.test import Client
from moto.server import ThreadedMotoServer

from ota import repository
from ota.models import Artifact
from tests.ota.publishing_helpers import error_code, post_publish, signed_metadata

REGION = "us-east-1"
CREDENTIALS = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}


@dataclass
class S3:
    endpoint_url: str
    bucket: str
    client: Any

    def keys(self) -> list[str]:
        listing = self.client.list_objects_v2(Bucket=self.bucket)
        return [o["Key"] for o in listing.get("Contents", [])]

    def object_bytes(self, key: str) -> bytes:
        return bytes(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())


def _start_moto() -> tuple[ThreadedMotoServer, str]:
    # port 0: the kernel picks a free port, no window for another process to take it
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def _stop_moto(server: ThreadedMotoServer) -> None:
    server.stop()
    # stop() only ends serve_forever(); close the listening socket too, so that
    # clients get "connection refused" instead of a connection nobody answers.
    inner = getattr(server, "_server", None)
    if inner is not None:
        inner.server_close()


def _use_bucket(settings: Any, endpoint_url: str, bucket: str) -> None:
    settings.FLEET_STORAGE = "s3"
    settings.STORAGES = {
        **settings.STORAGES,
        "artifacts": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": bucket,
                "endpoint_url": endpoint_url,
                "region_name": REGION,
                "file_overwrite": False,
                "default_acl": None,
                "querystring_auth": True,
                "querystring_expire": 3600,
                "location": "",
                "access_key": "test",
                "secret_key": "test",
                # fail fast when the server is gone instead of retrying with back-off
                "client_config": Config(
                    connect_timeout=2, read_timeout=5, retries={"total_max_attempts": 1}
                ),
            },
        },
    }


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    server, endpoint_url = _start_moto()
    yield endpoint_url
    _stop_moto(server)


@pytest.fixture
def s3(settings: Any, storage_dirs: Path, moto_endpoint: str) -> S3:
    # after storage_dirs (which points artifacts at local files): S3 wins
    bucket = f"fleet-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name=REGION, **CREDENTIALS)
    client.create_bucket(Bucket=bucket)
    _use_bucket(settings, moto_endpoint, bucket)
    return S3(moto_endpoint, bucket, client)


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _publish(client: Client, token: str, signer: Any, data: bytes, tmp_path: Path) -> Any:
    md = signed_metadata(None, signer, data)
    return post_publish(client, token, md, data, tmp_path)


def test_publish_stores_the_artifact_bytes_in_the_bucket(
    s3: S3, kws: Any, release_key: Any, ci_token: str, tmp_path: Path
) -> None:
    # given
    data = os.urandom(70_000)
    digest = hashlib.sha256(data).hexdigest()

    # when
    response = _publish(Client(), ci_token, release_key.signer, data, tmp_path)

    # then
    assert response.status_code == 201, response.content
    artifact = Artifact.objects.get(pk=response.json()["id"])
    assert artifact.sha256 == digest
    assert s3.keys() == [artifact.storage_key]
    assert artifact.storage_key.startswith("models/kws/1.0.0/linux-x86_64-fp32/")
    stored = s3.object_bytes(artifact.storage_key)
    assert len(stored) == len(data)
    assert hashlib.sha256(stored).hexdigest() == digest


def test_download_redirects_to_a_presigned_url_serving_the_bytes(
    s3: S3, kws: Any, release_key: Any, ci_token: str, tmp_path: Path
) -> None:
    # given a published artifact
    data = os.urandom(5_000)
    client = Client()
    published = _publish(client, ci_token, release_key.signer, data, tmp_path)
    assert published.status_code == 201, published.content
    pk = published.json()["id"]

    # when
    response = client.get(f"/api/v1/artifacts/{pk}/download", headers=_auth(ci_token))

    # then the API hands out a signed, expiring URL on the object store
    assert response.status_code == 302
    url = response["Location"]
    assert url.startswith(f"{s3.endpoint_url}/{s3.bucket}/")
    assert "Signature" in url
    assert "Expires" in url or "X-Amz-Expires" in url
    fetched = requests.get(url, timeout=10)
    assert fetched.status_code == 200
    assert fetched.content == data


def test_download_needs_a_token_even_on_s3(
    s3: S3, kws: Any, release_key: Any, ci_token: str, tmp_path: Path
) -> None:
    client = Client()
    pk = _publish(client, ci_token, release_key.signer, b"abc" * 100, tmp_path).json()["id"]

    response = client.get(f"/api/v1/artifacts/{pk}/download")

    assert response.status_code == 401
    assert "Location" not in response


def test_hash_mismatch_leaves_the_bucket_empty(
    s3: S3, kws: Any, release_key: Any, ci_token: str, tmp_path: Path
) -> None:
    # given metadata signed for other bytes than the ones uploaded
    data = os.urandom(2_000)
    md = signed_metadata(None, release_key.signer, data, sha256="0" * 64)

    # when
    response = post_publish(Client(), ci_token, md, data, tmp_path)

    # then
    assert response.status_code == 422
    assert error_code(response) == "hash_mismatch"
    assert s3.keys() == []
    assert not Artifact.objects.exists()


def test_failure_after_upload_deletes_the_object_again(
    s3: S3,
    kws: Any,
    release_key: Any,
    ci_token: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given storing the metadata fails after the blob reached the bucket
    def broken_store(*args: Any, **kwargs: Any) -> None:
        assert len(s3.keys()) == 1  # the object was uploaded before the transaction
        raise RuntimeError("simulated failure while storing metadata")

    monkeypatch.setattr(repository, "delegated_metadata_store", broken_store)
    data = os.urandom(3_000)
    md = signed_metadata(None, release_key.signer, data)

    # when
    response = post_publish(Client(raise_request_exception=False), ci_token, md, data, tmp_path)

    # then nothing of it remains
    assert response.status_code == 500
    assert s3.keys() == []
    assert not Artifact.objects.exists()


def test_healthz_reports_s3_storage_ok(s3: S3, db: None) -> None:
    response = Client().get("/healthz")

    assert response.status_code == 200
    assert json.loads(response.content) == {
        "status": "ok",
        "checks": {"database": "ok", "storage": "ok"},
    }


def test_healthz_reports_storage_unreachable_once_s3_is_gone(settings: Any, db: None) -> None:
    # given a working S3 store
    server, endpoint_url = _start_moto()
    try:
        bucket = "fleet-health"
        boto3.client(
            "s3", endpoint_url=endpoint_url, region_name=REGION, **CREDENTIALS
        ).create_bucket(Bucket=bucket)
        _use_bucket(settings, endpoint_url, bucket)
        assert Client().get("/healthz").status_code == 200
    finally:
        # when the server goes away
        _stop_moto(server)

    # then
    response = Client().get("/healthz")
    assert response.status_code == 503
    assert json.loads(response.content) == {
        "status": "unhealthy",
        "checks": {"database": "ok", "storage": "unreachable"},
    }


def test_healthz_reports_a_missing_bucket(settings: Any, db: None, moto_endpoint: str) -> None:
    # given settings naming a bucket that does not exist on a reachable server
    _use_bucket(settings, moto_endpoint, f"missing-{uuid.uuid4().hex[:12]}")

    # when
    response = Client().get("/healthz")

    # then nothing could be stored there, so the node is not healthy
    assert response.status_code == 503
    assert json.loads(response.content)["checks"]["storage"] == "unreachable"
