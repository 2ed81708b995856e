"""stored_models: the one reader of reported and desired states kept as JSON."""

import json
from collections.abc import Callable
from typing import Any

import pytest

from device_agent.protocol.messages import (
    StoredModel,
    parse_desired,
    parse_state,
    stored_models,
)

Payload = dict[str, Any]


def test_reads_what_a_parsed_reported_state_stores(example: Callable[[str], Payload]) -> None:
    stored = parse_state(json.dumps(example("state")).encode()).to_dict()

    assert stored_models(stored) == (StoredModel("kws", "1.4.0", 14, None),)


def test_reads_what_a_parsed_desired_state_stores(example: Callable[[str], Payload]) -> None:
    stored = parse_desired(json.dumps(example("desired")).encode()).to_dict()

    assert stored_models(stored) == (
        StoredModel("kws", "1.4.0", 14, "models/kws/1.4.0/esp32s3-int8/model.tflite"),
    )


@pytest.mark.parametrize("stored", [None, {}, [], "x", {"models": None}, {"models": {}}])
def test_no_models_array_reads_as_none(stored: object) -> None:
    assert stored_models(stored) == ()


def test_odd_entries_are_left_out_and_odd_fields_read_as_none() -> None:
    stored = {
        "models": [
            "kws",
            {"version": "1.0.0"},
            {"name": 7, "version": "1.0.0"},
            {"name": "kws", "version": 1, "release_counter": "3", "path": None},
            {"name": "vad", "version": "2.0.0", "release_counter": 5, "path": "p"},
        ]
    }

    assert stored_models(stored) == (
        StoredModel("kws", None, None, None),
        StoredModel("vad", "2.0.0", 5, "p"),
    )


def test_keeps_the_order_of_the_entries() -> None:
    names = ["b", "a", "c"]
    stored = {"models": [{"name": n, "version": "1.0.0"} for n in names]}

    assert [m.name for m in stored_models(stored)] == names
