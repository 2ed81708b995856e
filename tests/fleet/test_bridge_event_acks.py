"""The bridge's side of event delivery: an event is stored once per (device, event_id)
whichever way it is written, its id is confirmed for new and repeated events alike, and
a retained copy of an `events` or `telemetry` report is not taken as news."""

import json
from datetime import UTC, datetime

import pytest
from bridge_harness import event_payload, make_device

from device_agent.protocol.messages import parse_event
from fleet.bridge.client import InboundMessage
from fleet.bridge.handlers import Confirmed, DiscardTelemetry, Dispatcher
from fleet.models import DeviceEvent
from fleet.reports import device_event_record, devices_event_record

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
ID = "0123456789abcdef0123456789abcdef"
TELEMETRY = (
    b'{"v":1,"samples":[{"model":"kws","version":"1.0.0","rollout_id":null,'
    b'"arm":null,"metrics":{"latency_ms":3},"ts":"2026-11-22T10:01:00Z"}]}'
)


def message(channel: str, payload: bytes, *, retain: bool = False) -> InboundMessage:
    return InboundMessage(
        topic=f"fleet/v1/devices/dev-1/{channel}",
        payload=payload,
        qos=1,
        retain=retain,
        mid=1,
        generation=1,
        received_at=NOW,
    )


def with_id(seq: int, event_id: str = ID, **changes: object) -> bytes:
    obj = json.loads(event_payload(seq))
    obj.update(event_id=event_id, **changes)
    return json.dumps(obj).encode()


class CountingTelemetry(DiscardTelemetry):
    def __init__(self) -> None:
        self.added = 0

    def add(self, **kwargs: object) -> None:
        self.added += 1


@pytest.mark.parametrize("deferred", [True, False], ids=["batch", "one-by-one"])
def test_an_event_id_is_stored_once_and_confirmed_each_time(deferred: bool) -> None:
    # given a device, and an event it sent, then sent again (a different time: the
    # digest differs, the id does not)
    make_device("dev-1")
    dispatcher = Dispatcher(telemetry=DiscardTelemetry(), device_cache_seconds=0)
    other = "f" * 32
    payloads = [with_id(1), with_id(1, ts="2026-11-22T10:00:09Z"), with_id(2, other)]

    # when the bridge handles them
    dispatcher.begin(deferred=deferred)
    outcomes = [dispatcher.handle(message("events", p)).result for p in payloads]
    if deferred:
        duplicates = dispatcher.finish()
        outcomes = ["duplicate" if i in duplicates else r for i, r in enumerate(outcomes)]

    # then the first and the third are stored, and all three are confirmed
    assert outcomes == ["accepted", "duplicate", "accepted"]
    assert sorted(DeviceEvent.objects.values_list("event_id", "seq")) == [(ID, 1), (other, 2)]
    assert dispatcher.take_confirmed() == {"dev-1": Confirmed(event_ids=[ID, ID, other])}
    assert dispatcher.take_confirmed() == {}


def test_services_store_an_event_id_once() -> None:
    device = make_device("dev-1")
    first = parse_event(with_id(1))
    again = parse_event(with_id(1, ts="2026-11-22T10:00:09Z"))

    assert devices_event_record(reports=[(device, first), (device, again)]) == [True, False]
    stored, created = device_event_record(device=device, event=again)
    assert not created
    assert (stored.event_id, stored.ts) == (ID, first.ts)
    assert DeviceEvent.objects.count() == 1


def test_events_without_an_id_are_stored_as_before() -> None:
    device = make_device("dev-1")
    events = [parse_event(event_payload(n)) for n in (1, 2, 1)]
    assert devices_event_record(reports=[(device, e) for e in events]) == [True, True, False]
    assert set(DeviceEvent.objects.values_list("event_id", flat=True)) == {""}


@pytest.mark.parametrize(("channel", "payload"), [("events", None), ("telemetry", TELEMETRY)])
def test_a_retained_copy_of_a_report_is_not_news(channel: str, payload: bytes | None) -> None:
    make_device("dev-1")
    telemetry = CountingTelemetry()
    dispatcher = Dispatcher(telemetry=telemetry, device_cache_seconds=0)
    payload = payload or with_id(1)
    dispatcher.begin(deferred=False)

    # when the broker replays a retained copy, then the device sends it live
    replayed = dispatcher.handle(message(channel, payload, retain=True))
    live = dispatcher.handle(message(channel, payload))

    # then only the live one is taken
    assert (replayed.result, replayed.reason) == ("dropped", "retained")
    assert live.result == "accepted"
    assert DeviceEvent.objects.count() + telemetry.added == 1
    if channel == "events":
        # the replay is not confirmed
        assert dispatcher.take_confirmed() == {"dev-1": Confirmed(event_ids=[ID])}


def test_retained_state_and_status_are_still_taken() -> None:
    from bridge_harness import state_payload, status_payload

    from device_agent.protocol.messages import Presence

    make_device("dev-1")
    dispatcher = Dispatcher(telemetry=DiscardTelemetry(), device_cache_seconds=0)
    dispatcher.begin(deferred=False)
    assert dispatcher.handle(message("state", state_payload(), retain=True)).result == "accepted"
    status = status_payload(Presence.ONLINE)
    assert dispatcher.handle(message("status", status, retain=True)).result == "accepted"
