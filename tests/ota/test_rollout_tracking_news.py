"""Tracking reads the devices with news (ota.tracking), not every device in flight: what
stores an event or a report records news for the rollouts the device is in flight in,
the evaluation takes them, and a full pass every TRACK_FULL_EVERY finds the rest
(timeouts, events stored some other way)."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rollout_helpers import (
    artifact,
    desired_seq,
    devices,
    evaluate,
    fresh,
    phased,
    report,
    report_state,
    states,
    use_own_director_key,
)
from service_check import require_postgresql

from device_agent.protocol.messages import ModelState, Phase, ReportedState, Slot, UpdateEvent
from device_agent.protocol.topics import Channel, topic_for
from fleet.bridge.client import InboundMessage
from fleet.bridge.handlers import DiscardTelemetry, Dispatcher
from fleet.models import DeviceEvent
from ota import engine, tasks
from ota.models import RolloutStatus, TrackingNews
from ota.tracking import tracking_news_record, tracking_news_take

pytestmark = [pytest.mark.django_db, pytest.mark.db_both]


@pytest.fixture(autouse=True)
def _keys(settings, tmp_path):
    use_own_director_key(settings, tmp_path)


def _news() -> list[tuple[int, int]]:
    return sorted(TrackingNews.objects.values_list("rollout_id", "device_id"))


def test_events_and_reports_of_devices_in_flight_are_news_until_an_evaluation_takes_them() -> None:
    artifact("2.0.0")
    fleet = devices(4)
    rollout = phased(stages=[{"percent": 100}])
    evaluate(rollout)  # notifies all four
    assert _news() == []

    # when one device reports progress, another its state, a third twice
    report(fleet[0], rollout, Phase.DOWNLOADING)
    report_state(fleet[1], "1.0.0", 1)
    report(fleet[2], rollout, Phase.ACCEPTED)
    report(fleet[2], rollout, Phase.COMMITTED)

    # then each is news for the rollout, recorded with what was stored
    pk = rollout.pk
    assert _news() == [(pk, fleet[0].pk), (pk, fleet[1].pk), (pk, fleet[2].pk), (pk, fleet[2].pk)]
    # and the next evaluation takes them all and tracks those devices
    result = evaluate(rollout)
    assert _news() == []
    assert (
        result.tracked == 2
    )  # in progress, succeeded; a report of the old version changes nothing
    assert states(rollout)[fleet[2].device_id] == "succeeded"
    assert states(rollout)[fleet[0].device_id] == "in_progress"


def test_only_devices_in_flight_make_news() -> None:
    artifact("2.0.0")
    fleet = devices(3)
    rollout = phased(stages=[{"percent": 100}])
    evaluate(rollout)
    report(fleet[0], rollout, Phase.COMMITTED)
    evaluate(rollout)
    assert states(rollout)[fleet[0].device_id] == "succeeded"
    (outsider,) = devices(1, prefix="other")

    # when a device that finished, and one in no rollout, report
    report_state(fleet[0], "2.0.0", 2)
    report_state(outsider, "1.0.0", 1)
    report(outsider, None, Phase.DOWNLOADING)

    # then there is no news: no evaluation needs to look at them
    assert _news() == []
    tracking_news_record(device_pks=[])  # nothing to look up at all
    assert _news() == []


def test_an_evaluation_without_news_reads_no_device_in_flight() -> None:
    artifact("2.0.0")
    fleet = devices(30)
    rollout = phased(stages=[{"percent": 100}])
    evaluate(rollout)
    report(fleet[0], rollout, Phase.COMMITTED)

    # when the rollout is evaluated within TRACK_FULL_EVERY of its last full pass
    with CaptureQueriesContext(connection) as queries:
        result = evaluate(rollout)

    # then tracking looked at the one device with news, not for events of the other 29
    assert result.tracked == 1
    tracking = [q["sql"] for q in queries if "ota_rolloutdevice" in q["sql"]]
    assert tracking, "the rows with news were read"
    assert not [sql for sql in tracking if "fleet_deviceevent" in sql and "EXISTS" in sql]


def test_an_event_stored_without_news_is_found_by_the_next_full_pass() -> None:
    artifact("2.0.0")
    (device,) = devices(1)
    rollout = phased(stages=[{"percent": 100}])
    now = timezone.now()
    evaluate(rollout, at=now)  # notifies it; the first tracking is a full pass
    assert fresh(rollout).tracked_at == now

    # given a committed event stored without news (not through fleet.reports)
    DeviceEvent.objects.create(
        device=device,
        seq=desired_seq(device),
        rollout_id=rollout.public_id,
        model="kws",
        phase=Phase.COMMITTED,
        ts=now,
        digest="stored-by-hand",
    )
    # when evaluated before the next full pass is due, it is not seen
    evaluate(rollout, at=now + engine.TRACK_FULL_EVERY - timedelta(seconds=1))
    assert states(rollout) == {device.device_id: "notified"}
    # then the full pass finds it
    later = now + engine.TRACK_FULL_EVERY
    evaluate(rollout, at=later)
    assert states(rollout) == {device.device_id: "succeeded"}
    assert fresh(rollout).tracked_at == later
    assert fresh(rollout).status == RolloutStatus.COMPLETED


def test_a_device_without_progress_times_out_at_a_full_pass() -> None:
    artifact("2.0.0")
    (device,) = devices(1)
    rollout = phased(stages=[{"percent": 100}], policy={"device_timeout_minutes": 5})
    now = timezone.now()
    evaluate(rollout, at=now)
    report(device, rollout, Phase.DOWNLOADING, at=now)
    evaluate(rollout, at=now + timedelta(seconds=1))
    assert states(rollout) == {device.device_id: "in_progress"}

    # when nothing more comes for longer than the timeout
    evaluate(rollout, at=now + timedelta(minutes=6))

    # then the full pass (due long since) times it out
    assert states(rollout) == {device.device_id: "timed_out"}


def test_news_taken_by_an_evaluation_that_fails_stays_for_the_next(monkeypatch) -> None:
    artifact("2.0.0")
    (device,) = devices(1)
    rollout = phased(stages=[{"percent": 100}])
    evaluate(rollout)
    report(device, rollout, Phase.COMMITTED)

    def boom(*args, **kwargs):
        raise RuntimeError("the gates failed")

    # when an evaluation takes the news and then fails
    monkeypatch.setattr(engine, "_run", boom)
    with pytest.raises(RuntimeError):
        evaluate(rollout)
    # then its transaction took the news back with it
    assert _news() == [(rollout.pk, device.pk)]
    monkeypatch.undo()
    evaluate(rollout)
    assert states(rollout) == {device.device_id: "succeeded"}
    assert _news() == []


def test_the_beat_drops_the_news_of_rollouts_that_ended(monkeypatch) -> None:
    monkeypatch.setattr(tasks.rollout_evaluate_task, "delay", lambda rollout_id: None)
    artifact("2.0.0")
    fleet = devices(2)
    rollout = phased(stages=[{"percent": 100}])
    evaluate(rollout)
    report(fleet[0], rollout, Phase.ACCEPTED)
    # given news of a rollout still running, and of one that ended (or is gone)
    TrackingNews.objects.create(rollout_id=rollout.pk + 1000, device_id=fleet[1].pk)

    # when the beat ticks
    tasks.rollouts_tick_task()

    # then the news of the running rollout stays until its evaluation takes it
    assert tracking_news_take(rollout_pk=rollout.pk) == {fleet[0].pk}
    assert _news() == []


def _inbound(device_id: str, channel: Channel, payload: bytes) -> InboundMessage:
    return InboundMessage(
        topic=topic_for(device_id, channel),
        payload=payload,
        qos=1,
        retain=False,
        mid=1,
        generation=1,
        received_at=timezone.now(),
    )


def test_the_bridge_records_one_batch_of_news_for_its_states_and_events(
    django_assert_max_num_queries,
) -> None:
    artifact("2.0.0")
    fleet = devices(3)
    rollout = phased(stages=[{"percent": 100}])
    evaluate(rollout)
    seq = desired_seq(fleet[0])
    now = timezone.now().replace(microsecond=0)

    def event(phase: Phase) -> bytes:
        return UpdateEvent(
            seq=seq,
            rollout_id=rollout.public_id,
            model="kws",
            phase=phase,
            progress=None,
            code=None,
            detail="",
            ts=now,
        ).to_json()

    def state(device: int) -> bytes:
        return ReportedState(
            agent_version="test",
            hardware=fleet[device].hardware,
            models=(
                ModelState(
                    name="kws",
                    version="2.0.0",
                    release_counter=200,
                    slot=Slot.B,
                    status=Phase.COMMITTED,
                ),
            ),
            last_seq=desired_seq(fleet[device]),
        ).to_json()

    # given a batch as the bridge defers it: two events and the state of one device, the
    # state of another, and the first event again (a redelivery)
    dispatcher = Dispatcher(telemetry=DiscardTelemetry(), device_cache_seconds=0)
    batch = [
        _inbound(fleet[0].device_id, Channel.EVENTS, event(Phase.ACCEPTED)),
        _inbound(fleet[0].device_id, Channel.EVENTS, event(Phase.COMMITTED)),
        _inbound(fleet[0].device_id, Channel.STATE, state(0)),
        _inbound(fleet[1].device_id, Channel.STATE, state(1)),
        _inbound(fleet[0].device_id, Channel.EVENTS, event(Phase.ACCEPTED)),
    ]
    dispatcher.prepare(batch)
    dispatcher.begin(deferred=True)
    for inbound in batch:
        dispatcher.handle(inbound)
    # when it writes the batch
    with CaptureQueriesContext(connection) as queries:
        assert dispatcher.finish() == {4}
    # then one statement recorded the news: once for each device that reported
    assert len([q for q in queries if "ota_trackingnews" in q["sql"]]) == 1
    assert _news() == [(rollout.pk, fleet[0].pk), (rollout.pk, fleet[1].pk)]
    # and the next evaluation tracks both: one committed, the other reports the version
    assert evaluate(rollout).tracked == 2
    assert states(rollout) == {
        fleet[0].device_id: "succeeded",
        fleet[1].device_id: "succeeded",
        fleet[2].device_id: "notified",
    }


def test_the_news_look_up_reads_only_rows_in_flight_through_their_index() -> None:
    require_postgresql(connection.vendor)  # a PostgreSQL plan
    artifact("2.0.0")
    fleet = devices(20)
    rollout = phased(stages=[{"percent": 100}])
    evaluate(rollout)
    statements: list[str] = []

    def explain(execute, sql, params, many, context):
        if sql.startswith("INSERT INTO") and "ota_trackingnews" in sql:
            select = sql[sql.index("SELECT") :]
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL enable_seqscan = off")
                cursor.execute(f"EXPLAIN {select}", params)
                statements.extend(row[0] for row in cursor.fetchall())
        return execute(sql, params, many, context)

    # when devices report, the news look-up finds their rows in flight through the partial
    # index of rows in flight (its condition is what the look-up asks for), not through
    # every row each device ever had in any rollout
    with connection.execute_wrapper(explain):
        report(fleet[0], rollout, Phase.ACCEPTED)
    assert any("rolloutdevice_tracked" in line for line in statements), statements


def test_a_device_in_flight_in_two_rollouts_is_news_for_both() -> None:
    artifact("2.0.0")
    artifact("1.0.0", name="detector")
    (device,) = devices(1)
    kws = phased(stages=[{"percent": 100}])
    detector = phased(name="detector", version="1.0.0", stages=[{"percent": 100}])
    evaluate(kws)
    evaluate(detector)

    # when the device reports its state (one report names every model it runs)
    report_state(device, "1.0.0", 1)

    # then each rollout has the news, and taking one's leaves the other's
    assert _news() == sorted([(kws.pk, device.pk), (detector.pk, device.pk)])
    assert tracking_news_take(rollout_pk=kws.pk) == {device.pk}
    assert _news() == [(detector.pk, device.pk)]
