"""The bridge's checks on one message, without MQTT: every refusal has its reason, nothing
refused is stored, and no input makes the handler raise."""

import json
from datetime import UTC, datetime

import pytest
from bridge_harness import event_payload, make_device, state_payload, status_payload
from django.db import connection
from django.test.utils import CaptureQueriesContext
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device_agent.protocol.messages import MAX_PAYLOAD_BYTES, Presence
from fleet.bridge.client import InboundMessage
from fleet.bridge.handlers import DiscardTelemetry, Dispatcher
from fleet.models import Device, DeviceEvent

pytestmark = [pytest.mark.django_db, pytest.mark.db_both]

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def message(topic: str, payload: bytes, qos: int = 1) -> InboundMessage:
    return InboundMessage(
        topic=topic, payload=payload, qos=qos, retain=False, mid=1, generation=1, received_at=NOW
    )


def events_topic(device_id: str = "dev-1") -> str:
    return f"fleet/v1/devices/{device_id}/events"


@pytest.fixture
def dispatcher() -> Dispatcher:
    make_device("dev-1")
    make_device("dev-2")
    return Dispatcher(telemetry=DiscardTelemetry(), device_cache_seconds=0)


def _event(**changes: object) -> bytes:
    obj = json.loads(event_payload(3))
    obj.update(changes)
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    ("topic", "payload", "channel", "reason"),
    [
        (events_topic(), b"{not json", "events", "malformed"),
        (events_topic(), b"\xff\xfe", "events", "malformed"),
        (events_topic(), b"[1, 2]", "events", "malformed"),
        (events_topic(), _event(v=2), "events", "malformed"),
        (events_topic(), _event(v="1"), "events", "malformed"),
        (events_topic(), _event(v=True), "events", "malformed"),
        (
            events_topic(),
            event_payload(3).replace(b'"progress":50', b'"progress":NaN'),
            "events",
            "malformed",
        ),
        (events_topic(), _event(seq="3"), "events", "malformed"),
        (events_topic(), _event(progress=101), "events", "malformed"),
        (events_topic(), _event(phase="exploded"), "events", "malformed"),
        (events_topic(), _event(extra=1), "events", "malformed"),
        (events_topic(), _event(device_id="dev-2"), "events", "topic_mismatch"),
        (events_topic(), b" " * (MAX_PAYLOAD_BYTES + 1), "events", "payload_too_large"),
        (events_topic("dev-404"), event_payload(3), "events", "unknown_device"),
        ("fleet/v1/devices/dev-1/events/extra", event_payload(3), "unknown", "malformed"),
        ("fleet/v1/devices/dev 1/events", event_payload(3), "unknown", "malformed"),
        ("fleet/v1/devices/dev-1/bogus", event_payload(3), "unknown", "malformed"),
        ("", event_payload(3), "unknown", "malformed"),
        ("fleet/v1/devices/dev-1/desired", event_payload(3), "desired", "malformed"),
        ("fleet/v1/devices/dev-1/state", state_payload()[:-1], "state", "malformed"),
        ("fleet/v1/devices/dev-1/status", b'{"v":1,"status":"sleepy"}', "status", "malformed"),
        ("fleet/v1/devices/dev-1/telemetry", b'{"v":1,"samples":[]}', "telemetry", "malformed"),
        (
            "fleet/v1/devices/dev-1/telemetry",
            b'{"v":1,"samples":[{"model":"kws","version":"1.0.0","rollout_id":null,'
            b'"arm":null,"metrics":{"x":-1e999},"ts":"2026-11-22T10:01:00Z"}]}',
            "telemetry",
            "malformed",
        ),
    ],
)
def test_refused_messages_are_dropped_with_their_reason(
    dispatcher: Dispatcher, topic: str, payload: bytes, channel: str, reason: str
) -> None:
    outcome = dispatcher.handle(message(topic, payload))
    assert (outcome.channel, outcome.result, outcome.reason) == (channel, "dropped", reason)
    assert not DeviceEvent.objects.exists()
    assert Device.objects.get(device_id="dev-1").reported == {}


def test_a_revoked_device_is_not_heard(dispatcher: Dispatcher) -> None:
    Device.objects.filter(device_id="dev-1").update(revoked_at=NOW)
    outcome = dispatcher.handle(message(events_topic(), event_payload(3)))
    assert (outcome.result, outcome.reason) == ("dropped", "revoked_device")
    assert not DeviceEvent.objects.exists()


def test_a_repeated_event_is_stored_once(dispatcher: Dispatcher) -> None:
    first = dispatcher.handle(message(events_topic(), event_payload(3)))
    again = dispatcher.handle(message(events_topic(), event_payload(3)))
    other = dispatcher.handle(message(events_topic(), event_payload(3, progress=60)))
    assert [first.result, again.result, other.result] == ["accepted", "duplicate", "accepted"]
    assert DeviceEvent.objects.count() == 2


def test_state_and_presence_update_the_device(dispatcher: Dispatcher) -> None:
    dispatcher.handle(message("fleet/v1/devices/dev-1/state", state_payload(last_seq=9)))
    dispatcher.handle(message("fleet/v1/devices/dev-1/status", status_payload(Presence.ONLINE)))
    device = Device.objects.get(device_id="dev-1")
    assert (device.reported_seq, device.agent_version, device.online) == (9, "0.3.1", True)
    assert device.reported["models"][0]["version"] == "1.4.0"
    assert device.last_seen_at == NOW
    dispatcher.handle(message("fleet/v1/devices/dev-1/status", status_payload(Presence.OFFLINE)))
    device.refresh_from_db()
    assert (device.online, device.last_seen_at) == (False, NOW)


def test_seen_devices_get_last_seen_at_in_one_flush(dispatcher: Dispatcher) -> None:
    dispatcher.handle(message(events_topic("dev-1"), event_payload(1)))
    dispatcher.handle(message(events_topic("dev-2"), event_payload(1)))
    dispatcher.handle(message(events_topic("dev-404"), event_payload(1)))
    assert dispatcher.flush_seen() == 2
    assert Device.objects.filter(last_seen_at__isnull=False).count() == 2
    assert dispatcher.flush_seen() == 0


def test_a_batch_of_state_reports_decodes_no_stored_state_and_reads_no_device_twice() -> None:
    # given ten devices with a large reported state each, and a cache of the devices
    ids = [f"dev-{i}" for i in range(10)]
    for device_id in ids:
        make_device(device_id)
    Device.objects.update(reported={"models": [{"name": "kws", "blob": "x" * 10_000}]})
    dispatcher = Dispatcher(telemetry=DiscardTelemetry(), device_cache_seconds=60)
    reports = [message(f"fleet/v1/devices/{d}/state", state_payload(last_seq=9)) for d in ids]
    # when a deferred batch reports a state for each
    with CaptureQueriesContext(connection) as queries:
        dispatcher.prepare(reports)
        dispatcher.begin(deferred=True)
        outcomes = [dispatcher.handle(m) for m in reports]
        dispatcher.finish()
    # then the devices were read once, together, without their stored state
    assert {o.result for o in outcomes} == {"accepted"}
    reads = [q["sql"] for q in queries if q["sql"].lstrip().startswith("SELECT")]
    assert len(reads) == 1
    assert '"reported"' not in reads[0]
    # and each device's new state is stored whole
    for device in Device.objects.filter(device_id__in=ids):
        assert device.reported_seq == 9
        assert device.reported["models"][0]["version"] == "1.4.0"


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    channel=st.sampled_from(["state", "events", "status", "telemetry", "desired", "x"]),
    payload=st.one_of(
        st.binary(max_size=512),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.text(max_size=10), inner, max_size=4)
            ),
            max_leaves=20,
        ).map(lambda v: json.dumps(v).encode()),
        st.fixed_dictionaries(
            {
                "v": st.integers(0, 2),
                "status": st.text(max_size=8).filter(lambda s: s not in ("online", "offline")),
            }
        ).map(lambda v: json.dumps(v).encode()),
    ),
)
def test_no_input_makes_the_handler_raise_or_store(
    dispatcher: Dispatcher, channel: str, payload: bytes
) -> None:
    outcome = dispatcher.handle(message(f"fleet/v1/devices/dev-1/{channel}", payload))
    assert outcome.result == "dropped"
    assert outcome.reason
    assert not DeviceEvent.objects.exists()


def test_a_deferred_batch_writes_the_same_as_one_by_one(
    dispatcher: Dispatcher, django_assert_max_num_queries
) -> None:
    # given an event already stored
    dispatcher.handle(message(events_topic(), event_payload(3)))
    # when a deferred batch holds it again, a new one twice, another device's, and two
    # states of one device
    batch = [
        message(events_topic(), event_payload(3)),
        message(events_topic(), event_payload(4)),
        message("fleet/v1/devices/dev-1/state", state_payload(last_seq=8)),
        message(events_topic(), event_payload(4)),
        message(events_topic("dev-2"), event_payload(4)),
        message("fleet/v1/devices/dev-1/state", state_payload(last_seq=9, version="1.5.0")),
    ]
    dispatcher.begin(deferred=True)
    outcomes = [dispatcher.handle(m) for m in batch]
    assert DeviceEvent.objects.count() == 1  # nothing written yet
    # then finish() writes them with a few statements, not one per message
    with django_assert_max_num_queries(3):
        duplicates = dispatcher.finish()
    # and the outcomes, rows and device are what one by one gives
    assert duplicates == {0, 3}
    assert [o.result for o in outcomes] == ["accepted"] * 6  # until finish() says otherwise
    stored = sorted(DeviceEvent.objects.values_list("device__device_id", "seq"))
    assert stored == [("dev-1", 3), ("dev-1", 4), ("dev-2", 4)]
    device = Device.objects.get(device_id="dev-1")
    assert (device.reported_seq, device.reported["models"][0]["version"]) == (9, "1.5.0")
    assert device.agent_version == "0.3.1"


AWKWARD_TEXT = [
    "",
    'a "quoted" {brace}, comma; NULL',
    'back\\slash \\N {1,2} "x"',
    "ünïcødé ✓ 🚀 日本語",
    "x" * 1024,  # the protocol's longest detail
]


@pytest.mark.parametrize("detail", AWKWARD_TEXT)
def test_a_batch_stores_awkward_values_as_one_by_one_does(
    dispatcher: Dispatcher, detail: str
) -> None:
    # given the same failed event, with an awkward detail, for two devices
    obj = json.loads(event_payload(5, progress=None))
    obj.update(phase="failed", code="hash_mismatch", detail=detail)
    payload = json.dumps(obj).encode()
    state = json.loads(state_payload(last_seq=5))
    state["agent_version"] = "0.3.1+build." + "9" * 52  # the longest the protocol allows
    # when dev-1's arrive one by one and dev-2's in a deferred batch
    dispatcher.handle(message(events_topic("dev-1"), payload))
    dispatcher.handle(message("fleet/v1/devices/dev-1/state", json.dumps(state).encode()))
    dispatcher.begin(deferred=True)
    dispatcher.handle(message(events_topic("dev-2"), payload))
    dispatcher.handle(message("fleet/v1/devices/dev-2/state", json.dumps(state).encode()))
    assert dispatcher.finish() == set()
    # then both stored the same values, byte for byte
    fields = ("seq", "rollout_id", "model", "phase", "progress", "code", "detail", "ts", "digest")
    one, batched = (
        DeviceEvent.objects.filter(device__device_id=d).values(*fields).get()
        for d in ("dev-1", "dev-2")
    )
    assert one == batched
    assert one["detail"] == detail
    devices = {d.device_id: d for d in Device.objects.filter(device_id__in=["dev-1", "dev-2"])}
    assert devices["dev-1"].reported == devices["dev-2"].reported == state
    assert (
        devices["dev-1"].agent_version == devices["dev-2"].agent_version == state["agent_version"]
    )
