"""The bridge's side of telemetry confirmations: a telemetry message that carries a
`batch_id` is confirmed to its device on `acks` once its rows have committed, a repeat of
it is stored once and confirmed again, one without an id is stored as before and never
confirmed, and nothing is confirmed when the rows could not be written."""

import json
from collections.abc import Mapping
from datetime import timedelta

import pytest
from bridge_harness import make_device
from django.db import OperationalError
from django.utils import timezone

from device_agent.protocol.messages import format_timestamp
from fleet.bridge.client import InboundMessage
from fleet.bridge.handlers import Confirmed, Dispatcher
from fleet.bridge.worker import InboundWorker
from telemetry.ingest import TelemetryIngest, rows_write
from telemetry.models import Sample

pytestmark = pytest.mark.django_db(transaction=True)

ID = "0123456789abcdef0123456789abcdef"
OTHER = "f" * 32


def payload(value: float, batch_id: str | None) -> bytes:
    sample = {
        "model": "kws",
        "version": "1.0.0",
        "rollout_id": None,
        "arm": None,
        "metrics": {"latency_ms": value},
        "ts": format_timestamp(timezone.now().replace(microsecond=0) - timedelta(seconds=5)),
    }
    obj: dict[str, object] = {"v": 1, "samples": [sample]}
    if batch_id is not None:
        obj["batch_id"] = batch_id
    return json.dumps(obj).encode()


def message(data: bytes, mid: int) -> InboundMessage:
    return InboundMessage(
        topic="fleet/v1/devices/dev-1/telemetry",
        payload=data,
        qos=1,
        retain=False,
        mid=mid,
        generation=1,
        received_at=timezone.now(),
    )


class Recorder:
    """The order in which the worker writes rows, PUBACKs and confirms."""

    def __init__(self, *, fail_writes: int = 0) -> None:
        self.log: list[str] = []
        self.confirmed: list[dict[str, Confirmed]] = []
        self.fail_writes = fail_writes

    def write(self, rows: list) -> None:
        if self.fail_writes:
            self.fail_writes -= 1
            raise OperationalError("the database is down")
        rows_write(rows)
        self.log.append("write")

    def ack(self, messages: object) -> None:
        self.log.append("ack")

    def confirm(self, confirmed: Mapping[str, Confirmed]) -> None:
        self.log.append("confirm")
        self.confirmed.append(dict(confirmed))


def worker(recorder: Recorder) -> InboundWorker:
    ingest = TelemetryIngest(
        max_age=timedelta(days=7),
        max_future=timedelta(minutes=10),
        require_known_model=False,
        model_cache_seconds=0,
        observe_models=False,
        write=recorder.write,
    )
    return InboundWorker(
        dispatcher=Dispatcher(telemetry=ingest, device_cache_seconds=0),
        ack=recorder.ack,
        confirm=recorder.confirm,
        queue_size=10,
        batch_size=10,
        seen_flush_seconds=1,
    )


def test_a_telemetry_message_is_confirmed_after_its_rows_commit() -> None:
    # given a device, a message with a batch id, the same message again, another with an
    # id and one without (an older agent)
    make_device("dev-1")
    recorder = Recorder()
    first = payload(1.0, ID)
    batch = [
        message(first, 1),
        message(first, 2),
        message(payload(2.0, OTHER), 3),
        message(payload(3.0, None), 4),
    ]

    # when the worker checks and stores the batch
    inbound = worker(recorder)
    checked = inbound._check(batch)
    assert checked is not None
    assert inbound._store(checked)

    # then every sample is stored once, and both ids (the first twice) are confirmed to
    # the device after the rows were written
    assert sorted(Sample.objects.values_list("value", flat=True)) == [1.0, 2.0, 3.0]
    assert recorder.log == ["write", "ack", "confirm"]
    assert recorder.confirmed == [{"dev-1": Confirmed(batch_ids=[ID, ID, OTHER])}]

    # and a copy sent again later is stored no more but confirmed again
    checked = inbound._check([message(first, 5)])
    assert checked is not None
    assert inbound._store(checked)
    assert Sample.objects.count() == 3
    assert recorder.confirmed[-1] == {"dev-1": Confirmed(batch_ids=[ID])}


def test_nothing_is_confirmed_before_the_rows_are_written() -> None:
    make_device("dev-1")
    recorder = Recorder(fail_writes=2)
    inbound = worker(recorder)
    checked = inbound._check([message(payload(1.0, ID), 1)])
    assert checked is not None

    # when the database refuses the rows twice, then takes them
    assert inbound._store(checked)

    # then the confirmation follows the write that succeeded
    assert recorder.log == ["write", "ack", "confirm"]
    assert Sample.objects.count() == 1


def test_an_abandoned_write_confirms_nothing() -> None:
    make_device("dev-1")
    recorder = Recorder(fail_writes=1_000)
    inbound = worker(recorder)
    checked = inbound._check([message(payload(1.0, ID), 1)])
    assert checked is not None
    inbound._abandon.set()  # the bridge is stopping while the database is down

    assert not inbound._store(checked)
    assert recorder.log == []
    assert Sample.objects.count() == 0


def test_a_refused_message_is_not_confirmed() -> None:
    # an unknown device: the agent keeps the batch (and drops it from its bound)
    recorder = Recorder()
    inbound = worker(recorder)
    checked = inbound._check([message(payload(1.0, ID), 1)])
    assert checked is not None
    assert inbound._store(checked)
    assert recorder.confirmed == []
