"""Publishing with a version, hardware, format or file name outside its alphabet is a 400
with a stable code, and nothing is stored: no row, no blob, no TUF metadata."""

from pathlib import Path

import pytest
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from identifier_strategies import invalid, valid
from publishing_helpers import current_metadata, error_code, post_publish, signed_metadata

from device_agent.protocol import identifiers as ids
from ota.models import Artifact, TufMetadata

PROPERTY = settings(
    max_examples=10,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
DATA = b"model bytes " * 10
HW = "linux-x86_64-fp32"


def _stored(repo: Path) -> tuple[int, int, list[Path]]:
    blobs = sorted(p for p in (repo / "artifacts").rglob("*") if p.is_file())
    return Artifact.objects.count(), TufMetadata.objects.count(), blobs


FIELDS = [
    ("version", ids.VERSION),
    ("hardware", ids.HARDWARE),
    ("fmt", ids.ARTIFACT_FORMAT),
    ("filename", ids.FILENAME),
]


def _metadata(release_key, client, token, **values):
    fields = {"version": "1.0.0", "hardware": HW, "fmt": "onnx", "filename": "model.onnx"}
    fields.update(values)
    return signed_metadata(
        current_metadata(client, token),
        release_key.signer,
        DATA,
        version=fields["version"],
        hardware=fields["hardware"],
        fmt=fields["fmt"],
        path=f"models/kws/{fields['version']}/{fields['hardware']}/{fields['filename']}",
    )


@pytest.mark.parametrize(("field", "kind"), FIELDS, ids=[f for f, _ in FIELDS])
@PROPERTY
@given(data=st.data())
def test_publish_refuses_identifiers_outside_the_alphabet(
    kws, release_key, ci_token, repo, tmp_path, field, kind, data
):
    client = Client()
    value = data.draw(invalid(kind))
    before = _stored(repo)
    md = _metadata(release_key, client, ci_token, **{field: value})
    response = post_publish(client, ci_token, md, DATA, tmp_path)
    assert response.status_code == 400, response.content
    # "/", "\\", "..", "" in a segment break the target path before the field is looked at.
    assert error_code(response) in (str(kind.code), "invalid_target_path")
    breaks_path = "/" in value or "\\" in value or value in ("", ".", "..")
    if field != "filename" and not breaks_path:
        assert error_code(response) == str(kind.code)
    assert _stored(repo) == before, "a refused publish stored something"


@pytest.mark.parametrize(("field", "kind"), FIELDS, ids=[f for f, _ in FIELDS])
@settings(PROPERTY, max_examples=3)
@given(data=st.data())
def test_publish_accepts_valid_identifiers(
    kws, release_key, ci_token, repo, tmp_path, field, kind, data
):
    client = Client()
    value = data.draw(valid(kind).filter(lambda v: not Artifact.objects.filter(version=v).exists()))
    # a new version for each example (the variants of one version share a counter)
    version = value if field == "version" else f"1.0.{Artifact.objects.count() + 1}"
    md = _metadata(release_key, client, ci_token, **{field: value, "version": version})
    response = post_publish(client, ci_token, md, DATA, tmp_path)
    assert response.status_code == 201, response.content
