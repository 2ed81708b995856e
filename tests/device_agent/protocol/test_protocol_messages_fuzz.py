"""Fuzzing the payload parsers: nothing but ProtocolError ever escapes, and whatever
parses re-encodes to something that parses to the same message."""

import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_agent.protocol.exceptions import ProtocolError
from device_agent.protocol.messages import (
    DesiredState,
    ModelTarget,
    parse_desired,
    parse_event,
    parse_state,
    parse_status,
    parse_telemetry,
)

FUZZ = settings(max_examples=100, deadline=None, database=None)
PARSERS: dict[str, Callable[[bytes], Any]] = {
    "desired": parse_desired,
    "state": parse_state,
    "event": parse_event,
    "telemetry": parse_telemetry,
    "status": parse_status,
}
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)


def _parse_or_refuse(parse: Callable[[bytes], Any], data: bytes) -> None:
    try:
        message = parse(data)
    except ProtocolError:
        return
    assert parse(message.to_json()) == message


def _paths(value: object, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a member or item of a JSON value."""
    children: Iterable[tuple[Any, Any]]
    if isinstance(value, dict):
        children = value.items()
    elif isinstance(value, list):
        children = enumerate(value)
    else:
        return []
    paths = []
    for key, child in children:
        paths.append((*prefix, key))
        paths.extend(_paths(child, (*prefix, key)))
    return paths


@pytest.mark.parametrize("name", PARSERS)
@FUZZ
@given(data=st.binary(max_size=512))
def test_arbitrary_bytes(name: str, data: bytes) -> None:
    _parse_or_refuse(PARSERS[name], data)


@pytest.mark.parametrize("name", PARSERS)
@FUZZ
@given(value=json_values | st.dictionaries(st.text(max_size=12), json_values, max_size=8))
def test_arbitrary_json(name: str, value: object) -> None:
    _parse_or_refuse(PARSERS[name], json.dumps(value).encode())


@pytest.mark.parametrize("name", PARSERS)
@FUZZ
@given(data=st.data(), replacement=json_values, delete=st.booleans())
def test_one_field_replaced_or_deleted(
    example: Callable[[str], dict[str, Any]],
    name: str,
    data: st.DataObject,
    replacement: object,
    delete: bool,
) -> None:
    # given a valid payload with one member replaced by arbitrary JSON (or removed)
    payload = example(name)
    *parents, last = data.draw(st.sampled_from(_paths(payload)))
    container: Any = payload
    for key in parents:
        container = container[key]
    if delete:
        del container[last]
    else:
        container[last] = replacement

    # then it is refused or it round-trips
    _parse_or_refuse(PARSERS[name], json.dumps(payload).encode())


segments = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True)  # model name, hardware
versions = st.builds("{}.{}.{}".format, *(st.integers(0, 999) for _ in range(3)))
# hypothesis wants naive bounds; the drawn values get UTC
times = st.datetimes(
    min_value=datetime(2000, 1, 1),  # noqa: DTZ001
    max_value=datetime(2100, 1, 1),  # noqa: DTZ001
    timezones=st.just(UTC),
)


@st.composite
def model_targets(draw: st.DrawFn) -> ModelTarget:
    name, version, hardware = draw(segments), draw(versions), draw(segments)
    filename = draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,30}", fullmatch=True))
    token = st.none() | st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
    return ModelTarget(
        name=name,
        path=f"models/{name}/{version}/{hardware}/{filename}",
        version=version,
        release_counter=draw(st.integers(0, 2**53 - 1)),
        hardware=hardware,
        sha256=draw(st.from_regex(r"[0-9a-f]{64}", fullmatch=True)),
        length=draw(st.integers(0, 2**53 - 1)),
        url=f"https://cdn.example.com/{name}",
        rollout_id=draw(token),
        arm=draw(token),
    )


@FUZZ
@given(
    device_id=st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True),
    seq=st.integers(0, 2**53 - 1),
    issued_at=times,
    ttl_us=st.integers(1, 10**12),
    models=st.lists(model_targets(), max_size=4, unique_by=lambda m: m.name),
)
def test_any_valid_desired_round_trips(
    device_id: str, seq: int, issued_at: datetime, ttl_us: int, models: list[ModelTarget]
) -> None:
    desired = DesiredState(
        device_id=device_id,
        seq=seq,
        issued_at=issued_at,
        expires_at=issued_at + timedelta(microseconds=ttl_us),
        models=tuple(models),
    )

    assert parse_desired(desired.to_json()) == desired
