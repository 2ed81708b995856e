"""End to end (issue 6): a phased rollout of a good model and of one that fails its
on-device self-test, through PostgreSQL, Mosquitto, the bridge, a Celery worker on Redis
and 20 real agents (tests/ota/rollout_system.py)."""

import hashlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rollout_onnx import chain_onnx, selftest_meta
from rollout_system import FleetSystem, wait_until

DEVICES = 20

pytestmark = [pytest.mark.system, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetSystem]:
    fleet = FleetSystem(tmp_path_factory.mktemp("e2e-phased"), devices=DEVICES)
    with fleet.running():
        yield fleet


def _model(tmp_path: Path, name: str, *, bias: float) -> tuple[Path, dict[str, object]]:
    data, selftest = chain_onnx(layers=1, bias=bias)
    path = tmp_path / f"{name}-{bias}.onnx"
    path.write_bytes(data)
    return path, selftest


def _metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def _start(system: FleetSystem, **body: object) -> str:
    rollout = system.rollout_create(selection={"all": True}, **body)
    system.post(f"/api/v1/rollouts/{rollout['id']}/start", {"reason": "e2e"})
    return str(rollout["id"])


def _wait_status(system: FleetSystem, rollout_id: str, *wanted: str, timeout: float = 300) -> str:
    def reached() -> str:
        status = system.rollout_status(rollout_id)
        return status if status in wanted else ""

    try:
        return wait_until(reached, f"{rollout_id} to be {' or '.join(wanted)}", timeout)
    except AssertionError:
        print(system.diagnostics())
        raise


def test_a_good_model_passes_every_stage_and_completes(system: FleetSystem, tmp_path: Path):
    # given: CI publishes a model that passes its self-test
    system.model_register("vision")
    path, selftest = _model(tmp_path, "vision", bias=0.5)
    sha = system.publish(path, name="vision", version="1.0.0", meta=[selftest_meta(selftest)])

    # when: an operator runs it out in three stages
    rollout_id = _start(
        system,
        model="vision",
        strategy="phased",
        version="1.0.0",
        stages=[{"percent": 10}, {"percent": 50}, {"percent": 100}],
        policy={"min_finished": 2, "rate_per_minute": 600},
    )
    _wait_status(system, rollout_id, "completed", "paused", "aborted")

    # then: it completed, every agent runs the new bytes and says so
    rollout = system.rollout(rollout_id)
    assert rollout["status"] == "completed", rollout["gate_figures"]
    devices = system.device_ids()
    assert {d: system.installed(d, "vision") for d in devices} == dict.fromkeys(devices, sha)
    wait_until(
        lambda: all(system.reported_version(d, "vision") == "1.0.0" for d in devices),
        "every device reporting 1.0.0",
    )
    committed = set(
        system.scalars(
            "SELECT DISTINCT d.device_id FROM fleet_deviceevent e "
            "JOIN fleet_device d ON d.id = e.device_id "
            "WHERE e.rollout_id = %s AND e.phase = 'committed'",
            rollout_id,
        )
    )
    assert committed == set(devices)
    # the stages opened in order and the audit says so
    audit = system.audit(rollout_id)
    assert [(a["from_status"], a["to_status"]) for a in audit] == [
        ("", "draft"),
        ("draft", "scheduled"),
        ("scheduled", "running"),
        ("running", "running"),
        ("running", "running"),
        ("running", "completed"),
    ]
    assert [a["reason"] for a in audit[3:5]] == ["stage 2 (50 %) opened", "stage 3 (100 %) opened"]
    # the database and /metrics agree: every device succeeded
    states = {d["device"]: d["state"] for d in system.rollout_devices(rollout_id)}
    assert states == dict.fromkeys(devices, "succeeded")
    wait_until(
        lambda: (
            _metric(
                system.metrics(),
                "fleet_rollout_devices",
                rollout=rollout_id,
                status="succeeded",
            )
            == DEVICES
        ),
        "/metrics to count every device succeeded",
        60,
    )
    assert _metric(system.metrics(), "fleet_rollout_info", rollout=rollout_id, state="completed")


def test_a_model_failing_its_self_test_aborts_in_the_first_stage_and_rolls_back(
    system: FleetSystem, tmp_path: Path
):
    # given: every device runs audio 1.0.0, installed by a first rollout
    system.model_register("audio")
    good, selftest = _model(tmp_path, "audio", bias=1.0)
    good_sha = system.publish(good, name="audio", version="1.0.0", meta=[selftest_meta(selftest)])
    first = _start(system, model="audio", strategy="phased", version="1.0.0", policy={})
    assert _wait_status(system, first, "completed", "paused", "aborted") == "completed"
    devices = system.device_ids()
    seq_before = dict(
        system.query(
            "SELECT d.device_id, s.seq FROM fleet_desiredstate s "
            "JOIN fleet_device d ON d.id = s.device_id"
        )
    )

    # when: 1.1.0 fails its golden-input self-test on the device
    bad, selftest = _model(tmp_path, "audio", bias=2.0)
    bad_sha = system.publish(
        bad, name="audio", version="1.1.0", meta=[selftest_meta(selftest, broken=True)]
    )
    rollout_id = _start(
        system,
        model="audio",
        strategy="phased",
        version="1.1.0",
        stages=[{"percent": 25}, {"percent": 100}],
        policy={"on_breach": "abort", "min_finished": 1, "max_failure_rate": 0.05},
    )

    # then: the rollout aborts in its first stage and ends rolled back
    assert _wait_status(system, rollout_id, "rolled_back") == "rolled_back"
    rows = {d["device"]: d for d in system.rollout_devices(rollout_id)}
    touched = {d for d, row in rows.items() if row["notified_at"] is not None}
    untouched = set(devices) - touched
    assert touched, rows
    assert untouched, "the first stage must not have taken the whole fleet"
    assert all(rows[d]["state"] == "rolled_back" for d in touched), rows
    assert all(rows[d]["state"] == "pending" for d in untouched), rows
    # every device runs the previous version, and reports it
    assert {d: system.installed(d, "audio") for d in devices} == dict.fromkeys(devices, good_sha)
    wait_until(
        lambda: all(system.reported_version(d, "audio") == "1.0.0" for d in devices),
        "every device reporting 1.0.0 again",
    )
    # the touched devices failed the trial themselves
    failed = system.query(
        "SELECT d.device_id, e.code FROM fleet_deviceevent e "
        "JOIN fleet_device d ON d.id = e.device_id "
        "WHERE e.rollout_id = %s AND e.phase IN ('failed', 'rolled_back')",
        rollout_id,
    )
    assert {d for d, _ in failed} <= touched
    assert {code for _, code in failed} == {"health_check_failed"}
    # untouched devices never heard of 1.1.0: no new desired state, no event, no bytes
    seq_after = dict(
        system.query(
            "SELECT d.device_id, s.seq FROM fleet_desiredstate s "
            "JOIN fleet_device d ON d.id = s.device_id"
        )
    )
    assert {d: seq_after[d] for d in untouched} == {d: seq_before[d] for d in untouched}
    heard = system.scalars(
        "SELECT DISTINCT d.device_id FROM fleet_deviceevent e "
        "JOIN fleet_device d ON d.id = e.device_id WHERE e.rollout_id = %s",
        rollout_id,
    )
    assert set(heard) <= touched
    for device_id in untouched:
        slots = system.device_dir(device_id) / "models" / "audio" / "slots"
        held = {hashlib.sha256(f.read_bytes()).hexdigest() for f in slots.rglob("*") if f.is_file()}
        assert bad_sha not in held, device_id
    # the audit log says why, with the figures
    audit = system.audit(rollout_id)
    abort = next(a for a in audit if a["to_status"] == "aborted")
    assert abort["actor_name"] == "engine"
    assert "install_failure_rate" in abort["reason"]
    breach = abort["figures"]["gates"][0]
    assert breach["gate"] == "install_failure_rate"
    assert breach["status"] == "breach"
    assert breach["figures"]["arms"]["main"]["failure_rate"] > 0.05
    assert audit[-1]["to_status"] == "rolled_back"


def test_pause_holds_notifications_resume_continues_and_an_engine_restart_loses_nothing(
    system: FleetSystem, tmp_path: Path
):
    # given: a rollout paced at 10 devices a minute over 20 devices: 10 at once, the
    # next 10 once the minute has passed
    system.model_register("radar")
    path, selftest = _model(tmp_path, "radar", bias=3.0)
    sha = system.publish(path, name="radar", version="1.0.0", meta=[selftest_meta(selftest)])
    seq_before = dict(
        system.query(
            "SELECT d.device_id, s.seq FROM fleet_desiredstate s "
            "JOIN fleet_device d ON d.id = s.device_id"
        )
    )
    rollout_id = _start(
        system,
        model="radar",
        strategy="phased",
        version="1.0.0",
        policy={"rate_per_minute": 10, "min_finished": 1},
    )

    def notified() -> set[str]:
        return {d["device"] for d in system.rollout_devices(rollout_id) if d["notified_at"]}

    first = wait_until(lambda: len(n := notified()) == 10 and n, "the first ten notified", 60)

    # when: the operator pauses it
    paused = system.post(
        f"/api/v1/rollouts/{rollout_id}/pause", {"reason": "looking at a dashboard"}
    )
    paused_at = time.monotonic()
    assert paused["status"] == "paused"

    # then: past the minute, when the pace would allow ten more, and over three
    # evaluations by the engine after the pause (so the engine ran and chose to notify
    # nobody: a stopped worker would also leave the devices alone), nobody else is notified
    evaluations = {paused["evaluated_at"]}

    def quiet_and_evaluated() -> bool:
        assert notified() == first
        rollout = system.rollout(rollout_id)
        assert rollout["status"] == "paused"
        evaluations.add(rollout["evaluated_at"])
        return time.monotonic() > paused_at + 60 and len(evaluations) > 3

    wait_until(quiet_and_evaluated, "three evaluations of the paused rollout", 120)

    # when: it resumes, and the engine (worker with its beat) and the bridge crash
    # while the second batch installs, then come back
    system.post(f"/api/v1/rollouts/{rollout_id}/resume", {"reason": "all good"})
    wait_until(lambda: len(notified()) > 10, "the second batch notified", 60)
    for name in ("worker", "bridge"):
        system.children[name].kill()
    for name in ("worker", "bridge"):
        system.children[name].restart()

    # then: it completes from where it was; every device got exactly one new desired
    # state for it and committed once
    assert _wait_status(system, rollout_id, "completed", "paused", "aborted") == "completed"
    devices = system.device_ids()
    rows = {d["device"]: d for d in system.rollout_devices(rollout_id)}
    assert {d: rows[d]["state"] for d in devices} == dict.fromkeys(devices, "succeeded")
    assert {d: rows[d]["attempts"] for d in devices} == dict.fromkeys(devices, 1)
    seq_after = dict(
        system.query(
            "SELECT d.device_id, s.seq FROM fleet_desiredstate s "
            "JOIN fleet_device d ON d.id = s.device_id"
        )
    )
    assert {d: seq_after[d] - seq_before.get(d, 0) for d in devices} == dict.fromkeys(devices, 1)
    assert {d: system.installed(d, "radar") for d in devices} == dict.fromkeys(devices, sha)
    commits = system.query(
        "SELECT d.device_id, count(*) FROM fleet_deviceevent e "
        "JOIN fleet_device d ON d.id = e.device_id "
        "WHERE e.rollout_id = %s AND e.phase = 'committed' GROUP BY d.device_id",
        rollout_id,
    )
    assert dict(commits) == dict.fromkeys(devices, 1)
    audit = [(a["from_status"], a["to_status"], a["actor_name"]) for a in system.audit(rollout_id)]
    assert ("running", "paused", "operator") in audit
    assert ("paused", "running", "operator") in audit


def test_the_same_bytes_published_again_under_a_new_version_complete_without_a_download(
    system: FleetSystem, tmp_path: Path
):
    # given: every device runs sonar 1.0.0, installed by a first rollout
    system.model_register("sonar")
    path, selftest = _model(tmp_path, "sonar", bias=4.0)
    sha = system.publish(path, name="sonar", version="1.0.0", meta=[selftest_meta(selftest)])
    first = _start(system, model="sonar", strategy="phased", version="1.0.0", policy={})
    assert _wait_status(system, first, "completed", "paused", "aborted") == "completed"

    # when: CI publishes the same file as 1.0.1 (what the quick start's printed hint does)
    # and an operator rolls it out
    assert (
        system.publish(path, name="sonar", version="1.0.1", meta=[selftest_meta(selftest)]) == sha
    )
    rollout_id = _start(
        system,
        model="sonar",
        strategy="phased",
        version="1.0.1",
        stages=[{"percent": 50}, {"percent": 100}],
        policy={"rate_per_minute": 600},
    )

    # then: it completes (not stuck at notified until the device timeout)
    assert _wait_status(system, rollout_id, "completed", "paused", "aborted", timeout=120) == (
        "completed"
    )
    devices = system.device_ids()
    states = {d["device"]: d["state"] for d in system.rollout_devices(rollout_id)}
    assert states == dict.fromkeys(devices, "succeeded")
    # every device reports 1.0.1, runs the same bytes, and downloaded nothing for it
    wait_until(
        lambda: all(system.reported_version(d, "sonar") == "1.0.1" for d in devices),
        "every device reporting 1.0.1",
    )
    assert {d: system.installed(d, "sonar") for d in devices} == dict.fromkeys(devices, sha)
    phases = set(
        system.scalars(
            "SELECT DISTINCT phase FROM fleet_deviceevent WHERE rollout_id = %s", rollout_id
        )
    )
    assert phases == {"accepted", "committed"}
