"""An in-process metrics service (device_agent/metrics_server.py) on a real socket, with
the payloads it would publish collected in a list."""

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from device_agent.config import AgentConfig, Layout
from device_agent.metrics_server import MetricsService
from device_agent.protocol.messages import EventsAck, TelemetrySample, parse_telemetry
from device_agent.telemetry import ModelTags

KWS_TAGS = {"kws": ModelTags(version="1.4.0", rollout_id="r-9", arm="B")}


class ListOut:
    """A TelemetryOut that takes every payload and acknowledges it at once (or, when not
    `up`, takes nothing); while `confirms`, it also confirms each payload's batch_id on
    `on_acks`, as the server does once it stored the payload."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self.up = True
        self.ack = True
        self.confirms = True
        self.on_acks: Callable[[bytes], None] | None = None

    def ready(self) -> bool:
        return self.up

    def send(self, payload: bytes, on_ack: Callable[[], None]) -> bool:
        self.payloads.append(payload)
        if self.ack:
            on_ack()
        batch_id = parse_telemetry(payload).batch_id
        if self.confirms and self.on_acks is not None and batch_id is not None:
            self.on_acks(EventsAck(batch_ids=(batch_id,)).to_json())
        return True

    def samples(self) -> list[TelemetrySample]:
        return [s for p in self.payloads for s in parse_telemetry(p).samples]


def agent_config(**overrides: Any) -> AgentConfig:
    settings: dict[str, Any] = {
        "device_id": "dev-1",
        "hardware": "linux-x86_64-fp32",
        "server_url": "http://127.0.0.1:9",
        "tuf_url": "http://127.0.0.1:9/tuf/",
        "broker_url": "mqtt://127.0.0.1:9",
    }
    settings.update(overrides)
    return AgentConfig(**settings)


@contextmanager
def metrics_service(
    directory: Path,
    *,
    tags: dict[str, ModelTags] | None = None,
    out: ListOut | None = None,
    **config: Any,
) -> Iterator[MetricsService]:
    """A started MetricsService for `directory` (socket <directory>/metrics.sock)."""
    layout = Layout(directory)
    layout.make_dirs()
    out = out or ListOut()
    service = MetricsService(
        layout=layout,
        config=agent_config(**config),
        tags=lambda: KWS_TAGS if tags is None else tags,
        out=out,
        clock=lambda: datetime.now(UTC),
    )
    out.on_acks = service.on_acks
    service.start()
    try:
        yield service
    finally:
        service.close(timeout=1.0)


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)
