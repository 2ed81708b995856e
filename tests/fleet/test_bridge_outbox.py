"""The outbox publishes every DesiredState that is behind, retained, and records it only
once the broker acknowledged that very seq; a row rewritten meanwhile goes out again."""

import itertools
import threading
from unittest.mock import patch

import paho.mqtt.client as mqtt
import pytest
from bridge_harness import make_device, queue_behind, retained_desired, running_bridge, wait_until
from django.db import connection
from django.db.models import F, QuerySet
from service_check import require_postgresql

from fleet.bridge.outbox import Outbox
from fleet.models import DesiredOutbox, DesiredState, Device

pytestmark = pytest.mark.django_db(transaction=True)

DEVICES = 200


def envelope(device_id: str, seq: int) -> bytes:
    # The outbox treats envelopes as opaque bytes: a stand-in per device and seq will do.
    return f'{{"device_id":"{device_id}","seq":{seq}}}'.encode()


def _write_rows(count: int, seq: int) -> None:
    devices = Device.objects.bulk_create(
        Device(device_id=f"dev-{i:04d}", hardware="esp32s3-int8") for i in range(count)
    )
    DesiredState.objects.bulk_create(
        DesiredState(device=d, seq=seq, envelope=envelope(d.device_id, seq)) for d in devices
    )
    queue_behind()


def _rewrite_all(seq: int) -> None:
    """What the director does: a new seq and envelope per device (published_seq untouched)."""
    for row in DesiredState.objects.select_related("device"):
        DesiredState.objects.filter(pk=row.pk).update(
            seq=seq, envelope=envelope(row.device.device_id, seq)
        )
    queue_behind()


def _all_published(seq: int) -> bool:
    return DesiredState.objects.filter(seq=seq, published_seq=seq).count() == DEVICES


def _expected(seq: int) -> dict[str, bytes]:
    return {
        f"fleet/v1/devices/dev-{i:04d}/desired": envelope(f"dev-{i:04d}", seq)
        for i in range(DEVICES)
    }


def test_every_row_is_published_retained_and_rewrites_go_out_again(mosquitto) -> None:
    # given 200 devices with a desired state each
    _write_rows(DEVICES, seq=1)
    with running_bridge(mosquitto.port):
        # when the director rewrites every row while the outbox is publishing seq 1
        _rewrite_all(seq=2)
        # then each device's latest envelope is retained and its row marked published
        assert wait_until(lambda: _all_published(2), 20)
        assert not DesiredState.objects.filter(published_seq__lt=F("seq")).exists()
        assert not DesiredState.objects.filter(published_at__isnull=True).exists()
        assert retained_desired(mosquitto.port, DEVICES) == _expected(2)

        # when the director rewrites them again and the broker restarts mid-flight
        _rewrite_all(seq=3)
        mosquitto.restart()
        # then publishing resumes and completes
        assert wait_until(lambda: _all_published(3), 20), mosquitto.log_tail()
        assert retained_desired(mosquitto.port, DEVICES) == _expected(3)


class FakePublisher:
    """Stands in for the MQTT connection: records publishes, PUBACKs when told to."""

    def __init__(self) -> None:
        self.connected = True
        self.inflight_limit = 1000
        self.sent: dict[int, tuple[str, bytes]] = {}
        self._mids = itertools.count(1)
        self.ack_immediately: Outbox | None = None

    def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> int | None:
        assert (qos, retain) == (1, True)
        mid = next(self._mids)
        self.sent[mid] = (topic, payload)
        if self.ack_immediately is not None:  # the PUBACK beats publish() returning
            self.ack_immediately.on_published(mid, True)
        return mid


def _row() -> DesiredState:
    return DesiredState.objects.get()


def test_a_row_rewritten_in_flight_is_published_again() -> None:
    # given a desired state at seq 1 handed to the broker
    device = make_device("dev-1")
    DesiredState.objects.create(device=device, seq=1, envelope=b"env-1")
    queue_behind()
    publisher = FakePublisher()
    outbox = Outbox(publisher=publisher, poll_seconds=0, batch_size=10, window=10)
    outbox.step()
    assert list(publisher.sent.values()) == [("fleet/v1/devices/dev-1/desired", b"env-1")]
    # a scan while seq 1 is in flight does not send it twice
    outbox.rescan()
    outbox.step()
    assert len(publisher.sent) == 1

    # when the director writes seq 2 before the PUBACK of seq 1 comes back
    DesiredState.objects.filter(pk=_row().pk).update(seq=2, envelope=b"env-2")
    queue_behind()
    outbox.on_published(1, True)
    outbox.step()
    # then seq 1 is not recorded as published
    assert _row().published_seq == 0

    # and the next scan publishes seq 2, recorded once acknowledged
    outbox.rescan()
    outbox.step()
    assert publisher.sent[2] == ("fleet/v1/devices/dev-1/desired", b"env-2")
    outbox.on_published(2, True)
    outbox.step()
    row = _row()
    assert (row.published_seq, row.seq) == (2, 2)
    assert row.published_at is not None


def test_a_scan_reads_no_envelope_of_a_row_still_in_flight() -> None:
    # given 20 desired states handed to the broker and not yet acknowledged
    devices = [make_device(f"dev-{i}") for i in range(20)]
    for device in devices:
        DesiredState.objects.create(device=device, seq=1, envelope=b"env-1")
        queue_behind()
    publisher = FakePublisher()
    outbox = Outbox(publisher=publisher, poll_seconds=0, batch_size=50, window=50)
    outbox.step()
    assert len(publisher.sent) == 20
    # when the director commits a new row and the outbox scans again
    DesiredState.objects.filter(device=devices[7]).update(seq=2, envelope=b"env-2")
    queue_behind()
    outbox.rescan()
    envelope_rows: list[int] = []

    def count_rows(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if "envelope" in sql and sql.lstrip().upper().startswith("SELECT"):
            envelope_rows.append(context["cursor"].rowcount)
        return result

    with connection.execute_wrapper(count_rows):
        outbox.step()
    # then only the rewritten row went out, and only its envelope was read (the other 19
    # are on their way already)
    assert publisher.sent[21] == ("fleet/v1/devices/dev-7/desired", b"env-2")
    assert len(publisher.sent) == 21
    assert len(envelope_rows) == 1
    if connection.vendor == "postgresql":  # SQLite's cursor does not count a SELECT's rows
        assert envelope_rows == [1]


def test_a_row_rewritten_between_the_scan_and_the_read_goes_out_as_it_is_now() -> None:
    # given a row behind at seq 1, and the director rewriting it just after the scan
    device = make_device("dev-1")
    DesiredState.objects.create(device=device, seq=1, envelope=b"env-1")
    queue_behind()
    publisher = FakePublisher()
    outbox = Outbox(publisher=publisher, poll_seconds=0, batch_size=10, window=10)
    real_values_list = QuerySet.values_list

    def rewrite_after_the_keys(self, *fields, **kwargs):
        if fields == ("pk", "seq"):
            rows = list(real_values_list(self, *fields, **kwargs))
            DesiredState.objects.filter(device=device).update(seq=2, envelope=b"env-2")
            DesiredOutbox.objects.filter(desired__device=device).update(seq=2)
            return rows
        return real_values_list(self, *fields, **kwargs)

    with patch.object(QuerySet, "values_list", rewrite_after_the_keys):
        outbox.step()
    # then it goes out with seq 2's envelope, and its PUBACK records seq 2
    assert list(publisher.sent.values()) == [("fleet/v1/devices/dev-1/desired", b"env-2")]
    outbox.on_published(1, True)
    outbox.step()
    assert (_row().published_seq, _row().seq) == (2, 2)


def test_a_refused_publish_is_not_recorded_and_an_early_puback_is() -> None:
    device = make_device("dev-1")
    DesiredState.objects.create(device=device, seq=1, envelope=b"env-1")
    queue_behind()
    publisher = FakePublisher()
    outbox = Outbox(publisher=publisher, poll_seconds=0, batch_size=10, window=10)
    # a PUBACK with a failure reason (e.g. not authorized) leaves the row behind...
    outbox.step()
    outbox.on_published(1, False)
    outbox.step()
    assert _row().published_seq == 0
    # ... and it is not retried at once
    outbox.rescan()
    outbox.step()
    assert len(publisher.sent) == 1
    # a PUBACK arriving before publish() returns is still recorded
    DesiredState.objects.filter(pk=_row().pk).update(seq=2, envelope=b"env-2")
    queue_behind()
    publisher.ack_immediately = outbox
    outbox.rescan()
    outbox.step()
    outbox.step()
    assert _row().published_seq == 2


def test_a_queued_row_whose_desired_state_is_gone_is_dropped_not_published() -> None:
    # given two queued desired states, one then deleted outside the ORM (the queue has no
    # foreign key constraint to stop that or to delete its row)
    devices = [make_device(f"dev-{i}") for i in range(2)]
    for device in devices:
        DesiredState.objects.create(device=device, seq=1, envelope=b"env-1")
    queue_behind()
    gone = DesiredState.objects.get(device=devices[0]).pk
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM fleet_desiredstate WHERE id = %s", [gone])
    assert DesiredOutbox.objects.filter(pk=gone).exists()
    publisher = FakePublisher()
    outbox = Outbox(publisher=publisher, poll_seconds=0, batch_size=10, window=10)
    # when the outbox scans
    outbox.step()
    # then the other one goes out, and the orphan leaves the queue unpublished
    assert list(publisher.sent.values()) == [("fleet/v1/devices/dev-1/desired", b"env-1")]
    assert list(DesiredOutbox.objects.values_list("pk", flat=True)) == [
        DesiredState.objects.get(device=devices[1]).pk
    ]


def test_deleting_a_device_takes_its_desired_state_off_the_queue() -> None:
    device = make_device("dev-1")
    DesiredState.objects.create(device=device, seq=1, envelope=b"env-1")
    queue_behind()
    device.delete()
    assert not DesiredOutbox.objects.exists()


def test_nothing_is_published_while_disconnected() -> None:
    device = make_device("dev-1")
    DesiredState.objects.create(device=device, seq=1, envelope=b"env-1")
    queue_behind()
    publisher = FakePublisher()
    publisher.connected = False
    outbox = Outbox(publisher=publisher, poll_seconds=0, batch_size=10, window=10)
    assert outbox.step() is False
    assert publisher.sent == {}


def _published(device: Device) -> int:
    return DesiredState.objects.get(device=device).published_seq


def test_a_director_commit_wakes_the_outbox_without_waiting_for_the_poll(mosquitto) -> None:
    """PostgreSQL: the director NOTIFYs on commit and the bridge's listener wakes the
    outbox, so a poll of an hour does not delay a publish (elsewhere the poll is all)."""
    from django.db import connection

    from fleet.director import device_desired_republish

    require_postgresql(connection.vendor)  # LISTEN/NOTIFY
    device = make_device("dev-1")
    DesiredState.objects.create(device=device, seq=1, envelope=b"env-1")
    queue_behind()
    with running_bridge(mosquitto.port, outbox_poll_seconds=3600.0):
        # what was committed before the listener listened goes out at start
        assert wait_until(lambda: _published(device) == 1, timeout=10)
        # a change made without a notification waits for the (hour-long) poll...
        DesiredState.objects.filter(device=device).update(published_seq=0)
        queue_behind()
        # ...until the director commits one of its own, which carries the notification
        device_desired_republish(device=device)
        assert wait_until(lambda: _published(device) == 1, timeout=10)


def test_of_several_bridges_one_publishes_and_another_takes_over(mosquitto) -> None:
    """PostgreSQL: bridges split inbound messages, but only the one holding the outbox lock
    publishes desired states; when it stops, another takes the lock and publishes."""
    from collections import Counter

    from bridge_harness import bridge_config
    from django.db import connection

    from fleet.bridge.outbox import LEADER_RETRY_SECONDS
    from fleet.bridge.runner import Bridge

    require_postgresql(connection.vendor)  # the outbox lock is an advisory lock
    # given a subscriber counting live (not retained) desired messages, and 50 rows behind
    live: Counter[str] = Counter()
    watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    watcher.on_message = lambda c, u, m: None if m.retain else live.update([m.topic])
    subscribed = threading.Event()
    watcher.on_subscribe = lambda *a: subscribed.set()
    watcher.on_connect = lambda c, *a: c.subscribe("fleet/v1/devices/+/desired", qos=1)
    watcher.connect("127.0.0.1", mosquitto.port)
    watcher.loop_start()
    assert subscribed.wait(10)
    count = 50
    _write_rows(count, seq=1)
    bridges = [Bridge(bridge_config(mosquitto.port, client_id=f"bridge-{n}")) for n in "ab"]
    try:
        # when two bridges run
        for bridge in bridges:
            bridge.start()
        assert all(bridge.wait_subscribed(10) for bridge in bridges)
        # then every row is published, each exactly once, by the one that leads
        assert wait_until(lambda: sum(live.values()) >= count, timeout=15)
        assert wait_until(
            lambda: DesiredState.objects.filter(published_seq=1).count() == count, timeout=10
        )
        leaders = [b for b in bridges if b.outbox._leading.is_set()]
        assert len(leaders) == 1
        assert len(live) == count
        assert set(live.values()) == {1}

        # when the leader stops and the director writes seq 2 for every device
        leaders[0].stop()
        follower = next(b for b in bridges if b is not leaders[0])
        live.clear()
        _rewrite_all(seq=2)
        # then the other bridge takes the lock and publishes them, once each
        assert wait_until(
            lambda: DesiredState.objects.filter(published_seq=2).count() == count,
            timeout=LEADER_RETRY_SECONDS + 15,
        )
        assert follower.outbox._leading.is_set()
        assert wait_until(lambda: sum(live.values()) >= count, timeout=10)
        assert set(live.values()) == {1}
    finally:
        for bridge in bridges:
            bridge.stop()
        watcher.loop_stop()
        watcher.disconnect()
