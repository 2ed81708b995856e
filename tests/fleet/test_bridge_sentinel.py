"""A broker that comes back with older retained desired states than it acknowledged (killed
before it saved them, or with its persistence file gone) gets every device's current
desired state again from the bridge (issue 16 item 2, fleet/bridge/sentinel.py)."""

import json
from datetime import UTC, datetime

import pytest
from bridge_harness import make_device, metric, queue_behind, retained_desired, running_bridge
from bridge_harness import wait_until as wait_for
from django.db.models import F
from mqtt_broker import MosquittoBroker

from fleet.bridge.sentinel import SentinelCheck, probe_payload, sentinel_payload
from fleet.models import DesiredState

pytestmark = pytest.mark.django_db(transaction=True)

DEVICES = 30
REWRITTEN = 20  # the first 20 get a newer desired state after the broker's last save


def envelope(device_id: str, seq: int) -> bytes:
    return f'{{"device_id":"{device_id}","seq":{seq}}}'.encode()


def _ids() -> list[str]:
    return [f"dev-{i:03d}" for i in range(DEVICES)]


def _write(seq: int, device_ids: list[str]) -> None:
    for row in DesiredState.objects.filter(device__device_id__in=device_ids).select_related(
        "device"
    ):
        DesiredState.objects.filter(pk=row.pk).update(
            seq=seq, envelope=envelope(row.device.device_id, seq)
        )
    queue_behind()


def _published(seq: int, count: int) -> bool:
    return DesiredState.objects.filter(seq=seq, published_seq=seq).count() == count


def _expected(current: dict[str, int]) -> dict[str, bytes]:
    return {f"fleet/v1/devices/{d}/desired": envelope(d, seq) for d, seq in current.items()}


def _saved(broker: MosquittoBroker, needle: bytes) -> bool:
    try:
        return needle in broker.persistence_file.read_bytes()
    except FileNotFoundError:
        return False


@pytest.fixture
def broker(tmp_path):
    """Mosquitto that saves only when told (SIGUSR1) or stopped: a kill loses the rest."""
    broker = MosquittoBroker(tmp_path / "mosquitto", autosave_interval=3600)
    yield broker
    broker.stop()


@pytest.fixture
def fleet(db):
    for device_id in _ids():
        device = make_device(device_id)
        DesiredState.objects.create(device=device, seq=1, envelope=envelope(device_id, 1))
    queue_behind()


def test_a_broker_killed_before_its_save_gets_the_lost_desired_states_again(broker, fleet):
    requeued = metric("fleet_bridge_desired_requeued_total")
    with running_bridge(broker.port):
        # given: every device's seq 1 is published, and the broker saved it
        assert wait_for(lambda: _published(1, DEVICES), 20)
        broker.save()
        assert wait_for(lambda: _saved(broker, envelope(_ids()[-1], 1)), 10)
        # and 20 devices got seq 2 since, acknowledged by the broker but not saved
        _write(2, _ids()[:REWRITTEN])
        assert wait_for(lambda: _published(2, REWRITTEN), 20)
        assert not _saved(broker, envelope(_ids()[0], 2))

        # when: the broker is killed and comes back from its last save
        broker.kill()
        broker.start()
        current = {d: 2 if i < REWRITTEN else 1 for i, d in enumerate(_ids())}
        # then: the bridge notices and publishes the 20 lost ones again, only those
        assert wait_for(lambda: retained_desired(broker.port, DEVICES) == _expected(current), 30)
        assert wait_for(
            lambda: metric("fleet_bridge_desired_requeued_total") - requeued >= REWRITTEN, 10
        )
        assert metric("fleet_bridge_desired_requeued_total") - requeued == REWRITTEN
        assert wait_for(lambda: _published(2, REWRITTEN), 20)
        assert not DesiredState.objects.filter(published_seq__lt=F("seq")).exists()


def test_a_broker_back_without_its_persistence_file_gets_every_desired_state(broker, fleet):
    requeued = metric("fleet_bridge_desired_requeued_total")
    with running_bridge(broker.port):
        assert wait_for(lambda: _published(1, DEVICES), 20)
        assert retained_desired(broker.port, DEVICES) == _expected(dict.fromkeys(_ids(), 1))

        # when: the broker comes back empty (a new volume, a wiped data directory)
        broker.kill()
        broker.persistence_file.unlink(missing_ok=True)
        broker.start()

        # then: every device's desired state is retained again
        expected = _expected(dict.fromkeys(_ids(), 1))
        assert wait_for(lambda: retained_desired(broker.port, DEVICES) == expected, 30)
        assert metric("fleet_bridge_desired_requeued_total") - requeued == DEVICES


def test_a_broker_restarted_cleanly_gets_nothing_again(broker, fleet):
    with running_bridge(broker.port) as bridge:
        assert wait_for(lambda: _published(1, DEVICES), 20)
        # the sentinel of the last recorded batch is retained
        assert wait_for(lambda: not bridge.sentinel.pending and bridge.outbox.outstanding == 0)
        requeued = metric("fleet_bridge_desired_requeued_total")
        connects = metric("fleet_bridge_connects_total")

        # when: the broker stops normally (it saves everything) and starts again
        broker.restart()

        # then: the bridge reconnects, checks, and republishes nothing
        assert wait_for(lambda: metric("fleet_bridge_connects_total") > connects, 20)
        assert wait_for(lambda: not bridge.sentinel.pending, 20)
        assert metric("fleet_bridge_desired_requeued_total") == requeued
        assert retained_desired(broker.port, DEVICES) == _expected(dict.fromkeys(_ids(), 1))


# --- the check itself, without a broker ------------------------------------------------


AT = datetime(2026, 12, 6, 18, 0, tzinfo=UTC)


def _probe_nonce(check: SentinelCheck) -> bytes:
    probe = check.probe_due()
    assert probe is not None
    return probe


def test_the_check_takes_the_retained_sentinel_then_the_probe():
    check = SentinelCheck()
    check.start()
    probe = _probe_nonce(check)
    check.received(sentinel_payload(AT), retain=True)
    assert check.result() is None  # not before the probe came back
    check.received(probe, retain=False)
    result = check.result()
    assert result is not None
    assert result.recorded_at == AT
    assert not check.pending


def test_a_probe_alone_means_no_sentinel():
    check = SentinelCheck()
    check.start()
    check.received(_probe_nonce(check), retain=False)
    result = check.result()
    assert result is not None
    assert result.recorded_at is None


def test_a_live_sentinel_or_a_stale_probe_says_nothing_about_the_broker():
    check = SentinelCheck()
    check.start()
    probe = _probe_nonce(check)
    check.received(sentinel_payload(AT), retain=False)  # another bridge publishing now
    check.received(probe_payload("0123456789abcdef"), retain=False)  # an earlier probe
    assert check.result() is None
    check.received(probe, retain=False)
    result = check.result()
    assert result is not None
    assert result.recorded_at is None


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xff\xfe",
        b"[]",
        b"null",
        json.dumps({"v": 2, "recorded_at": AT.isoformat()}).encode(),
        json.dumps({"v": 1, "recorded_at": "2026-12-06T18:00:00"}).encode(),  # naive
        json.dumps({"v": 1, "recorded_at": "yesterday"}).encode(),
        json.dumps({"v": 1, "recorded_at": 12}).encode(),
        json.dumps({"v": 1, "recorded_at": AT.isoformat(), "pad": "x" * 300}).encode(),
        b"{" * 100_000,
    ],
)
def test_malformed_oversized_or_hostile_sentinels_are_ignored(payload: bytes):
    check = SentinelCheck()
    check.start()
    probe = _probe_nonce(check)
    check.received(sentinel_payload(AT), retain=True)
    check.received(payload, retain=True)
    check.received(probe, retain=False)
    result = check.result()
    assert result is not None
    assert result.recorded_at == AT


def test_a_result_put_back_is_taken_again():
    # the outbox could not requeue (database down): the answer waits for its next try
    check = SentinelCheck()
    check.start()
    check.received(_probe_nonce(check), retain=False)
    result = check.result()
    assert result is not None
    check.put_back(result)
    assert check.pending
    assert check.result() == result
    assert not check.pending
