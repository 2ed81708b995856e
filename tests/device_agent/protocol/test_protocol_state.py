"""Reported state: round trip and refusals."""

import json
from collections.abc import Callable
from typing import Any

import pytest

from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.exceptions import ProtocolError
from device_agent.protocol.messages import (
    ModelState,
    Phase,
    ReportedState,
    Slot,
    parse_state,
)

Payload = dict[str, Any]


def test_round_trip(example: Callable[[str], Payload]) -> None:
    state = parse_state(json.dumps(example("state")).encode())

    assert state == ReportedState(
        agent_version="0.1.0",
        hardware="esp32s3-int8",
        models=(
            ModelState(
                name="kws",
                version="1.4.0",
                release_counter=14,
                slot=Slot.B,
                status=Phase.COMMITTED,
            ),
        ),
        last_seq=17,
    )
    assert json.loads(state.to_json()) == example("state")


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda d: d["models"][0].update(slot="c"), id="unknown-slot"),
        pytest.param(lambda d: d["models"][0].update(status="running"), id="unknown-status"),
        pytest.param(lambda d: d["models"][0].update(status=None), id="null-status"),
        pytest.param(lambda d: d["models"].append(d["models"][0]), id="duplicate-model"),
        pytest.param(lambda d: d.update(last_seq=-1), id="negative-last-seq"),
        pytest.param(lambda d: d.update(last_seq=False), id="bool-last-seq"),
        pytest.param(lambda d: d.update(agent_version=""), id="empty-agent-version"),
        pytest.param(lambda d: d.update(agent_version="x" * 65), id="long-agent-version"),
        pytest.param(lambda d: d.update(agent_version="1.0\n"), id="control-char"),
        pytest.param(lambda d: d.update(hardware="esp32/s3"), id="bad-hardware"),
        pytest.param(lambda d: d.update(device_id="dev-1"), id="unknown-field"),
        pytest.param(lambda d: d.pop("models"), id="missing-models"),
    ],
)
def test_refused(example: Callable[[str], Payload], tamper: Callable[[Payload], None]) -> None:
    state = example("state")
    tamper(state)

    with pytest.raises(ProtocolError) as caught:
        parse_state(json.dumps(state).encode())
    assert caught.value.code == ErrorCode.MALFORMED
