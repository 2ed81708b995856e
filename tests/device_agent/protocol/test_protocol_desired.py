"""Desired-state payload: the docs/protocol.md example parses and round-trips; bad fields don't."""

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.exceptions import ProtocolError
from device_agent.protocol.messages import MAX_MODELS, MAX_SAFE_INT, parse_desired

Payload = dict[str, Any]


def _model(d: Payload) -> Payload:
    model: Payload = d["models"][0]
    return model


def _encode(d: Payload) -> bytes:
    return json.dumps(d).encode()


def test_design_example_parses(desired_dict: Payload) -> None:
    desired = parse_desired(_encode(desired_dict))

    assert desired.device_id == "dev-0042"
    assert desired.seq == 17
    assert desired.issued_at == datetime(2026, 11, 22, 10, tzinfo=UTC)
    [model] = desired.models
    assert (model.name, model.version, model.release_counter) == ("kws", "1.4.0", 14)
    assert (model.rollout_id, model.arm) == ("r-9", "B")


def test_round_trip_is_compact_and_stable(desired_dict: Payload) -> None:
    desired = parse_desired(_encode(desired_dict))

    data = desired.to_json()

    assert parse_desired(data) == desired
    assert json.loads(data) == desired_dict
    assert b" " not in data
    assert data.startswith(b'{"v":1,')


def test_nulls_and_empty_models_are_valid(desired_dict: Payload) -> None:
    _model(desired_dict).update(rollout_id=None, arm=None)
    assert parse_desired(_encode(desired_dict)).models[0].arm is None

    desired_dict["models"] = []
    assert parse_desired(_encode(desired_dict)).models == ()


def _set(**changes: Any) -> Callable[[Payload], None]:
    return lambda d: d.update(changes)


def _set_model(**changes: Any) -> Callable[[Payload], None]:
    return lambda d: _model(d).update(changes)


MALFORMED: list[Any] = [
    pytest.param(lambda d: d.pop("seq"), id="missing-seq"),
    pytest.param(lambda d: d.pop("v"), id="missing-v"),
    pytest.param(lambda d: _model(d).pop("arm"), id="missing-nullable-arm"),
    pytest.param(_set(extra=1), id="unknown-field"),
    pytest.param(_set_model(extra=1), id="unknown-model-field"),
    pytest.param(_set(v=2), id="v2"),
    pytest.param(_set(v=True), id="v-true"),
    pytest.param(_set(v="1"), id="v-string"),
    pytest.param(_set(v=1.0), id="v-float"),
    pytest.param(_set(seq=-1), id="negative-seq"),
    pytest.param(_set(seq=True), id="bool-seq"),
    pytest.param(_set(seq=17.0), id="float-seq"),
    pytest.param(_set(seq="17"), id="string-seq"),
    pytest.param(_set(seq=MAX_SAFE_INT + 1), id="seq-beyond-double"),
    pytest.param(_set(seq=None), id="null-seq"),
    pytest.param(_set(device_id="dev/42"), id="device-id-slash"),
    pytest.param(_set(device_id=""), id="device-id-empty"),
    pytest.param(_set(device_id="d" * 65), id="device-id-long"),
    pytest.param(_set(device_id=42), id="device-id-int"),
    pytest.param(_set(issued_at="2026-11-22T10:00:00+00:00"), id="ts-offset"),
    pytest.param(_set(issued_at="2026-11-22T10:00:00"), id="ts-naive"),
    pytest.param(_set(issued_at="2026-11-22 10:00:00Z"), id="ts-space"),
    pytest.param(_set(issued_at="2026-11-22t10:00:00z"), id="ts-lowercase"),
    pytest.param(_set(issued_at="2026-02-30T10:00:00Z"), id="ts-feb-30"),
    pytest.param(_set(issued_at="2026-11-22T24:00:00Z"), id="ts-hour-24"),
    pytest.param(_set(issued_at="２０２６-11-22T10:00:00Z"), id="ts-fullwidth-digits"),
    pytest.param(_set(issued_at="2026-11-22T10:00:00.1234567Z"), id="ts-7-fraction-digits"),
    pytest.param(_set(issued_at=1795000000), id="ts-epoch-int"),
    pytest.param(_set(expires_at="2026-11-22T10:00:00Z"), id="expires-equals-issued"),
    pytest.param(_set(expires_at="2026-11-21T10:00:00Z"), id="expires-before-issued"),
    pytest.param(_set(models={}), id="models-object"),
    pytest.param(_set(models=[1]), id="model-not-object"),
    pytest.param(lambda d: d["models"].append(_model(d)), id="duplicate-model-name"),
    pytest.param(_set_model(sha256="3F" * 32), id="sha-uppercase"),
    pytest.param(_set_model(sha256="3f" * 31), id="sha-short"),
    pytest.param(_set_model(sha256="zz" * 32), id="sha-not-hex"),
    pytest.param(_set_model(length=-1), id="negative-length"),
    pytest.param(_set_model(length=True), id="bool-length"),
    pytest.param(_set_model(length=4.5), id="float-length"),
    pytest.param(_set_model(release_counter=-1), id="negative-release-counter"),
    pytest.param(_set_model(version="1.4"), id="version-not-semver"),
    pytest.param(_set_model(version="01.4.0"), id="version-leading-zero"),
    pytest.param(_set_model(version="1.4.0-" + "a" * 60), id="version-too-long"),
    pytest.param(_set_model(name="../kws"), id="name-traversal"),
    pytest.param(_set_model(hardware=""), id="hardware-empty"),
    pytest.param(_set_model(url="ftp://cdn/x"), id="url-ftp"),
    pytest.param(_set_model(url="file:///etc/passwd"), id="url-file"),
    pytest.param(_set_model(url="/relative/x"), id="url-relative"),
    pytest.param(_set_model(url="https://cdn/x y"), id="url-space"),
    pytest.param(_set_model(url="https://" + "x" * 5000), id="url-too-long"),
    pytest.param(_set_model(rollout_id=""), id="rollout-id-empty"),
    pytest.param(_set_model(arm="A B"), id="arm-space"),
    pytest.param(_set_model(path=None), id="path-null"),
]


@pytest.mark.parametrize("tamper", MALFORMED)
def test_malformed_refused(desired_dict: Payload, tamper: Callable[[Payload], None]) -> None:
    tamper(desired_dict)

    with pytest.raises(ProtocolError) as caught:
        parse_desired(_encode(desired_dict))
    assert caught.value.code == ErrorCode.MALFORMED


def test_too_many_models_refused(desired_dict: Payload) -> None:
    template = _model(desired_dict)
    desired_dict["models"] = [
        {**template, "name": f"m{i}", "path": f"models/m{i}/1.4.0/esp32s3-int8/model.tflite"}
        for i in range(MAX_MODELS + 1)
    ]

    with pytest.raises(ProtocolError) as caught:
        parse_desired(_encode(desired_dict))
    assert caught.value.code == ErrorCode.MALFORMED


def test_fractional_seconds_round_trip(desired_dict: Payload) -> None:
    desired_dict["issued_at"] = "2026-11-22T10:00:00.5Z"

    desired = parse_desired(_encode(desired_dict))

    assert desired.issued_at.microsecond == 500000
    assert parse_desired(desired.to_json()) == desired
