"""Update events: every phase of docs/protocol.md is accepted, nothing else is."""

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.exceptions import ProtocolError
from device_agent.protocol.messages import Phase, UpdateEvent, parse_event

Payload = dict[str, Any]
DESIGN_PHASES = [
    "accepted",
    "downloading",
    "downloaded",
    "verified",
    "staged",
    "swapped",
    "trial",
    "committed",
    "failed",
    "rolled_back",
    "rejected",
]


def test_phases_are_exactly_the_design_list() -> None:
    assert [phase.value for phase in Phase] == DESIGN_PHASES


@pytest.mark.parametrize("phase", DESIGN_PHASES)
def test_every_phase_round_trips(example: Callable[[str], Payload], phase: str) -> None:
    event = example("event")
    event.update(phase=phase, code="hash_mismatch")

    parsed = parse_event(json.dumps(event).encode())

    assert parsed.phase == phase
    assert parse_event(parsed.to_json()) == parsed


def test_event_built_in_code_encodes_to_the_wire_form() -> None:
    event = UpdateEvent(
        seq=3,
        rollout_id=None,
        model=None,
        phase=Phase.REJECTED,
        progress=None,
        code=ErrorCode.SIGNATURE_INVALID,
        detail="bad sig",
        ts=datetime(2026, 11, 22, 10, 0, 5, 250000, tzinfo=UTC),
    )

    assert json.loads(event.to_json()) == {
        "v": 1,
        "seq": 3,
        "rollout_id": None,
        "model": None,
        "phase": "rejected",
        "progress": None,
        "code": "signature_invalid",
        "detail": "bad sig",
        "ts": "2026-11-22T10:00:05.250000Z",
    }


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"phase": "exploded"}, id="unknown-phase"),
        pytest.param({"phase": "Committed"}, id="phase-case"),
        pytest.param({"phase": 3}, id="phase-int"),
        pytest.param({"code": "oops"}, id="unknown-code"),
        pytest.param({"phase": "failed", "code": None}, id="failed-without-code"),
        pytest.param({"progress": 101}, id="progress-over-100"),
        pytest.param({"progress": -1}, id="progress-negative"),
        pytest.param({"progress": 0.5}, id="progress-float"),
        pytest.param({"detail": "x" * 1025}, id="detail-too-long"),
        pytest.param({"detail": None}, id="detail-null"),
        pytest.param({"detail": "a\x00b"}, id="detail-nul"),
        pytest.param({"model": "../x"}, id="bad-model"),
        pytest.param({"ts": "yesterday"}, id="bad-ts"),
        pytest.param({"seq": -5}, id="negative-seq"),
    ],
)
def test_refused(example: Callable[[str], Payload], changes: Payload) -> None:
    event = example("event")
    event.update(changes)

    with pytest.raises(ProtocolError) as caught:
        parse_event(json.dumps(event).encode())
    assert caught.value.code == ErrorCode.MALFORMED
