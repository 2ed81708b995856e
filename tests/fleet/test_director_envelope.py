"""The director's envelope: signed with the director key, the docs/protocol.md payload, and a
URL that serves the artifact's bytes."""

import hashlib
import io
import json
from datetime import timedelta

import pytest
from director_factories import HW, ArtifactFactory, own_director_key
from django.core.files import File
from django.test import Client
from django.urls import resolve
from tuf.api.metadata import TargetFile
from tuf.api.serialization.json import JSONSerializer

from device_agent.protocol.envelope import DESIRED_PAYLOAD_TYPE, verify_desired
from device_agent.protocol.messages import parse_timestamp
from fleet.director import ModelAssignment, device_desired_set
from fleet.keys import director_public_pem
from fleet.models import DesiredState, Device
from fleet.services import ci_user_get_or_create
from ota.fleetctl import targets as fleetctl_targets
from ota.publishing import Upload, artifact_publish


@pytest.fixture(autouse=True)
def _keys(settings, tmp_path):
    own_director_key(settings, tmp_path)


def test_envelope_verifies_and_carries_the_design_payload(db, settings):
    # given a device and an artifact built for its hardware
    settings.FLEET_PUBLIC_URL = "https://fleet.example.com"
    settings.FLEET_DESIRED_TTL = timedelta(days=2)
    device = Device.objects.create(device_id="dev-0042", hardware=HW)
    artifact = ArtifactFactory.create(version="1.4.0", release_counter=14, length=48213)

    # when the director assigns it from rollout r-9, arm B
    row = device_desired_set(
        device=device, assignments=[ModelAssignment(artifact=artifact, rollout_id="r-9", arm="B")]
    )

    # then the stored envelope verifies with the pinned director key and says exactly that
    stored = DesiredState.objects.get(device=device)
    assert stored.envelope == row.envelope
    assert json.loads(bytes(stored.envelope))["payloadType"] == DESIRED_PAYLOAD_TYPE
    desired = verify_desired(bytes(stored.envelope), director_public_pem())
    assert desired.device_id == "dev-0042"
    assert desired.seq == row.seq == 1
    assert desired.expires_at - desired.issued_at == timedelta(days=2)
    assert desired.issued_at == row.issued_at
    assert desired.to_dict() == row.payload
    assert row.payload["v"] == 1
    [entry] = row.payload["models"]
    path = f"models/kws/1.4.0/{HW}/model.onnx"
    assert entry == {
        "name": "kws",
        "path": path,
        "version": "1.4.0",
        "release_counter": 14,
        "hardware": HW,
        "sha256": artifact.sha256,
        "length": 48213,
        "url": f"https://fleet.example.com/tuf/targets/models/kws/1.4.0/{HW}/"
        f"{artifact.sha256}.model.onnx",
        "rollout_id": "r-9",
        "arm": "B",
    }
    assert parse_timestamp(row.payload["issued_at"]) == row.issued_at
    # not yet published: the bridge sends rows whose published_seq is behind
    assert row.published_seq == 0


def test_ttl_defaults_to_seven_days(db, settings):
    del settings.FLEET_DESIRED_TTL
    device = Device.objects.create(device_id="dev-1", hardware=HW)

    row = device_desired_set(device=device, assignments=[])

    desired = verify_desired(bytes(row.envelope), director_public_pem())
    assert desired.expires_at - desired.issued_at == timedelta(days=7)
    assert desired.models == ()


def _publish(release_key, data: bytes):
    """Publish 1.0.0 of kws through the publishing service, as the API would."""
    md = fleetctl_targets.next_metadata(None, 30)
    path = f"models/kws/1.0.0/{HW}/model.onnx"
    custom = {
        "version": "1.0.0",
        "hardware": HW,
        "format": "onnx",
        "release_counter": fleetctl_targets.release_counter_for(md, "1.0.0"),
        "floor": 0,
    }
    sha256 = hashlib.sha256(data).hexdigest()
    md.signed.targets[path] = TargetFile(
        len(data), {"sha256": sha256}, path, unrecognized_fields={"custom": custom}
    )
    fleetctl_targets.sign(md, release_key.signer)
    return artifact_publish(
        model_name="kws",
        metadata=md.to_bytes(JSONSerializer()),
        upload=Upload(File(io.BytesIO(data), name="model.onnx"), sha256, len(data)),
        by=ci_user_get_or_create(username="ci"),
    )


def test_url_serves_the_artifact_bytes(kws, release_key, settings):
    # given a really published artifact (TUF repository, stored bytes)
    data = b"\x00model bytes\xff" * 5000
    artifact = _publish(release_key, data)
    device = Device.objects.create(device_id="dev-0001", hardware=HW)

    # when the director assigns it
    row = device_desired_set(device=device, assignments=[ModelAssignment(artifact=artifact)])

    # then the URL in the envelope, fetched without credentials, gives those bytes
    [entry] = verify_desired(bytes(row.envelope), director_public_pem()).models
    assert entry.url.startswith(settings.FLEET_PUBLIC_URL + "/tuf/targets/")
    response = Client().get(entry.url.removeprefix(settings.FLEET_PUBLIC_URL))
    assert response.status_code == 200
    body = response.getvalue()
    assert body == data
    assert hashlib.sha256(body).hexdigest() == entry.sha256
    assert len(body) == entry.length


def test_build_metadata_version_gives_a_url_the_target_view_resolves(db, settings):
    device = Device.objects.create(device_id="dev-1", hardware=HW)
    artifact = ArtifactFactory.create(version="1.0.0-rc.1+build.5")

    row = device_desired_set(device=device, assignments=[ModelAssignment(artifact=artifact)])

    [entry] = row.payload["models"]
    url_path = entry["url"].removeprefix(settings.FLEET_PUBLIC_URL)
    assert url_path == (
        f"/tuf/targets/models/kws/1.0.0-rc.1+build.5/{HW}/{artifact.sha256}.model.onnx"
    )
    match = resolve(url_path)
    assert match.url_name == "tuf-target"
    assert match.kwargs["path"] == url_path.removeprefix("/tuf/targets/")
