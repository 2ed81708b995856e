"""Shared fixtures for the protocol tests: a director key and one valid example of each
payload (fresh copies, so a test may mutate them)."""

import copy
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from device_agent.protocol.envelope import generate_director_key

SHA = "3f" * 32

EXAMPLES: dict[str, dict[str, Any]] = {
    "desired": {
        "v": 1,
        "device_id": "dev-0042",
        "seq": 17,
        "issued_at": "2026-11-22T10:00:00Z",
        "expires_at": "2026-11-29T10:00:00Z",
        "models": [
            {
                "name": "kws",
                "path": "models/kws/1.4.0/esp32s3-int8/model.tflite",
                "version": "1.4.0",
                "release_counter": 14,
                "hardware": "esp32s3-int8",
                "sha256": SHA,
                "length": 48213,
                "url": "https://cdn.example.com/models/kws/1.4.0/esp32s3-int8/model.tflite",
                "rollout_id": "r-9",
                "arm": "B",
            }
        ],
    },
    "state": {
        "v": 1,
        "agent_version": "0.1.0",
        "hardware": "esp32s3-int8",
        "models": [
            {
                "name": "kws",
                "version": "1.4.0",
                "release_counter": 14,
                "slot": "b",
                "status": "committed",
            },
        ],
        "last_seq": 17,
    },
    "event": {
        "v": 1,
        "seq": 17,
        "rollout_id": "r-9",
        "model": "kws",
        "phase": "downloading",
        "progress": 40,
        "code": None,
        "detail": "",
        "ts": "2026-11-22T10:00:05.250Z",
    },
    "telemetry": {
        "v": 1,
        "samples": [
            {
                "model": "kws",
                "version": "1.4.0",
                "rollout_id": "r-9",
                "arm": "B",
                "metrics": {"latency_ms": 12.5, "confidence": 0.93},
                "ts": "2026-11-22T10:01:00Z",
            },
            {
                "model": "kws",
                "version": "1.4.0",
                "rollout_id": None,
                "arm": None,
                "metrics": {"latency_ms": 11},
                "ts": "2026-11-22T10:01:01Z",
            },
        ],
    },
    "status": {"v": 1, "status": "online"},
}


@pytest.fixture(scope="session")
def director_key() -> ec.EllipticCurvePrivateKey:
    return generate_director_key()


@pytest.fixture(scope="session")
def example() -> Callable[[str], dict[str, Any]]:
    """example("desired") -> a fresh, valid payload dict (session-scoped for hypothesis)."""
    return lambda name: copy.deepcopy(EXAMPLES[name])


@pytest.fixture
def desired_dict(example: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    return example("desired")
