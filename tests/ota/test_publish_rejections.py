"""Every refused publish answers with its stable code and stores nothing."""

import json
from pathlib import Path

import pytest
from django.test import Client
from publishing_helpers import current_metadata, error_code, post_publish, signed_metadata
from release_keys import make_release_key

from ota.models import Artifact, TufMetadata
from ota.repository import release_key_revoke, signer_for

DATA = b"model bytes " * 100


def _stored(repo: Path) -> tuple[int, int, list[Path]]:
    blobs = [p for p in (repo / "artifacts").rglob("*") if p.is_file()]
    return Artifact.objects.count(), TufMetadata.objects.count(), blobs


@pytest.fixture
def published(kws, release_key, ci_token, tmp_path):
    """One artifact (1.0.0 for linux-x86_64-fp32) already published."""
    client = Client()
    md = signed_metadata(None, release_key.signer, DATA)
    response = post_publish(client, ci_token, md, DATA, tmp_path)
    assert response.status_code == 201, response.content
    return client


def _refused(client, ci_token, md, data, tmp_path, repo, status, code):
    before = _stored(repo)
    response = post_publish(client, ci_token, md, data, tmp_path)
    assert response.status_code == status, response.content
    assert error_code(response) == code
    assert _stored(repo) == before, "a refused publish must store nothing"


def test_unsigned_metadata_is_signature_invalid(published, ci_token, tmp_path, repo):
    md = signed_metadata(current_metadata(published, ci_token), None, DATA, version="1.1.0")
    _refused(published, ci_token, md, DATA, tmp_path, repo, 422, "signature_invalid")


def test_tampered_metadata_is_signature_invalid(published, release_key, ci_token, tmp_path, repo):
    md = signed_metadata(
        current_metadata(published, ci_token), release_key.signer, DATA, version="1.1.0"
    )
    raw = json.loads(md.to_bytes())
    raw["signed"]["expires"] = "2099-01-01T00:00:00Z"  # changed after signing
    _refused(
        published,
        ci_token,
        json.dumps(raw).encode(),
        DATA,
        tmp_path,
        repo,
        422,
        "signature_invalid",
    )


def test_unregistered_key_is_forbidden(published, ci_token, tmp_path, repo):
    stranger = make_release_key(tmp_path / "stranger")
    md = signed_metadata(
        current_metadata(published, ci_token), stranger.signer, DATA, version="1.1.0"
    )
    _refused(published, ci_token, md, DATA, tmp_path, repo, 403, "forbidden")


def test_revoked_key_is_forbidden(published, release_key, ci_token, tmp_path, repo):
    release_key_revoke(
        keyid=release_key.signer.public_key.keyid,
        reason="leaked",
        targets_signer=signer_for("targets"),
    )
    md = signed_metadata(
        current_metadata(published, ci_token), release_key.signer, DATA, version="1.1.0"
    )
    _refused(published, ci_token, md, DATA, tmp_path, repo, 403, "forbidden")


def test_bytes_differing_from_signed_target_are_hash_mismatch(
    published, release_key, ci_token, tmp_path, repo
):
    md = signed_metadata(
        current_metadata(published, ci_token), release_key.signer, DATA, version="1.1.0"
    )
    flipped = bytes([DATA[0] ^ 1]) + DATA[1:]
    _refused(published, ci_token, md, flipped, tmp_path, repo, 422, "hash_mismatch")


def test_length_differing_from_signed_target_is_hash_mismatch(
    published, release_key, ci_token, tmp_path, repo
):
    md = signed_metadata(
        current_metadata(published, ci_token), release_key.signer, DATA, version="1.1.0"
    )
    _refused(published, ci_token, md, DATA + b"x", tmp_path, repo, 422, "hash_mismatch")


def test_existing_version_and_hardware_is_version_exists(
    published, release_key, ci_token, tmp_path, repo
):
    other = b"other bytes"
    md = signed_metadata(
        current_metadata(published, ci_token),
        release_key.signer,
        other,
        path="models/kws/1.0.0/linux-x86_64-fp32/model-b.onnx",
    )
    _refused(published, ci_token, md, other, tmp_path, repo, 409, "version_exists")


def test_changed_existing_target_is_version_exists(
    published, release_key, ci_token, tmp_path, repo
):
    other = b"replacement bytes"
    # the already-published path, signed again with other bytes
    md = signed_metadata(current_metadata(published, ci_token), release_key.signer, other)
    _refused(published, ci_token, md, other, tmp_path, repo, 409, "version_exists")


def test_release_counter_not_above_previous_is_rollback_detected(
    published, release_key, ci_token, tmp_path, repo
):
    md = signed_metadata(
        current_metadata(published, ci_token),
        release_key.signer,
        DATA,
        version="1.1.0",
        counter=1,
    )
    _refused(published, ci_token, md, DATA, tmp_path, repo, 422, "rollback_detected")


def test_variant_counter_differing_from_its_version_is_rollback_detected(
    published, release_key, ci_token, tmp_path, repo
):
    md = signed_metadata(
        current_metadata(published, ci_token),
        release_key.signer,
        DATA,
        hardware="esp32s3-int8",
        counter=7,
    )
    _refused(published, ci_token, md, DATA, tmp_path, repo, 422, "rollback_detected")


@pytest.mark.parametrize("version", ["1.0", "v1.0.0", "01.0.0", "1.0.0-", "x.y.z", "1.0.0.0"])
def test_bad_semver_is_invalid_version(published, release_key, ci_token, tmp_path, repo, version):
    md = signed_metadata(
        current_metadata(published, ci_token),
        release_key.signer,
        DATA,
        version=version,
        path="models/kws/9.9.9/linux-x86_64-fp32/model.onnx",
    )
    _refused(published, ci_token, md, DATA, tmp_path, repo, 400, "invalid_version")


@pytest.mark.parametrize(
    "path",
    [
        "models/other/1.1.0/linux-x86_64-fp32/model.onnx",
        "models/kws/1.1.0/linux-x86_64-fp32/../../../etc/passwd",
        "models/kws/1.1.0/../model.onnx",
        "models/kws/1.1.0/linux-x86_64-fp32/sub/model.onnx",
        "/models/kws/1.1.0/linux-x86_64-fp32/model.onnx",
        "models/kws/1.1.0/linux-x86_64-fp32/.hidden",
        "models/kws/1.1.0/esp32s3-int8/model.onnx",
    ],
)
def test_path_outside_the_model_is_invalid_target_path(
    published, release_key, ci_token, tmp_path, repo, path
):
    md = signed_metadata(
        current_metadata(published, ci_token),
        release_key.signer,
        DATA,
        version="1.1.0",
        path=path,
    )
    _refused(published, ci_token, md, DATA, tmp_path, repo, 400, "invalid_target_path")


def test_body_over_the_limit_is_payload_too_large(
    published, release_key, ci_token, tmp_path, repo, settings
):
    settings.FLEET_MAX_ARTIFACT_BYTES = 100
    md = signed_metadata(
        current_metadata(published, ci_token), release_key.signer, DATA, version="1.1.0"
    )
    _refused(published, ci_token, md, DATA, tmp_path, repo, 413, "payload_too_large")


@pytest.mark.parametrize(
    "raw", [b"not json", b"{}", b'{"signed": {"_type": "root"}, "signatures": []}', b"[]"]
)
def test_garbage_metadata_is_malformed(published, ci_token, tmp_path, repo, raw):
    _refused(published, ci_token, raw, DATA, tmp_path, repo, 400, "malformed")


def test_missing_file_part_is_malformed(published, release_key, ci_token, repo):
    md = signed_metadata(
        current_metadata(published, ci_token), release_key.signer, DATA, version="1.1.0"
    )
    before = _stored(repo)
    response = published.post(
        "/api/v1/models/kws/publish",
        {"metadata": md.to_bytes().decode()},
        headers={"Authorization": f"Bearer {ci_token}"},
    )
    assert response.status_code == 400
    assert error_code(response) == "malformed"
    assert _stored(repo) == before


@pytest.mark.parametrize("header", [None, "Bearer nope", "Bearer fleet_000000000000_wrong"])
def test_missing_or_bad_token_is_unauthorized(published, release_key, tmp_path, repo, header):
    before = _stored(repo)
    upload = tmp_path / "f.bin"
    upload.write_bytes(DATA)
    with upload.open("rb") as f:
        response = published.post(
            "/api/v1/models/kws/publish",
            {"metadata": "{}", "file": f},
            headers={"Authorization": header} if header else {},
        )
    assert response.status_code == 401
    assert error_code(response) == "unauthorized"
    assert _stored(repo) == before


def test_stale_metadata_version_is_conflict(published, release_key, ci_token, tmp_path, repo):
    # given two CI jobs that fetched the same metadata
    base = current_metadata(published, ci_token)
    first = signed_metadata(base, release_key.signer, DATA, version="1.1.0")
    base_again = current_metadata(published, ci_token)
    second_data = b"second job"
    second = signed_metadata(
        base_again, release_key.signer, second_data, version="1.1.0", hardware="esp32s3-int8"
    )
    # when the first publishes, then the second
    assert post_publish(published, ci_token, first, DATA, tmp_path).status_code == 201
    # then the second is told to refetch and retry, and nothing of it is stored
    _refused(published, ci_token, second, second_data, tmp_path, repo, 409, "conflict")


def test_unknown_model_is_unknown_model(kws, release_key, ci_token, tmp_path, repo):
    md = signed_metadata(None, release_key.signer, DATA, name="nope")
    before = _stored(repo)
    response = post_publish(Client(), ci_token, md, DATA, tmp_path, name="nope")
    assert response.status_code == 404
    assert error_code(response) == "unknown_model"
    assert _stored(repo) == before


def test_blob_is_deleted_when_the_commit_fails(
    published, release_key, ci_token, tmp_path, repo, monkeypatch
):
    # given a database failure after the blob was stored
    from ota import repository

    def boom(*args, **kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(repository, "delegated_metadata_store", boom)
    md = signed_metadata(
        current_metadata(published, ci_token), release_key.signer, DATA, version="1.1.0"
    )
    before = _stored(repo)
    # when publishing
    with pytest.raises(RuntimeError):
        post_publish(published, ci_token, md, DATA, tmp_path)
    # then no blob, row or metadata is left behind
    assert _stored(repo) == before
