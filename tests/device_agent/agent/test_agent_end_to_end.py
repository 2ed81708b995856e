"""The agent as a real process: enrolled through the API, fed signed desired states over a
real Mosquitto, downloading from the live server's TUF repository."""

import json
import os
import stat
from datetime import UTC, datetime, timedelta

import pytest
from agent_harness import current_sha256, desired_envelope, publish, tflite_bytes

from device_agent.protocol.messages import Phase

pytestmark = pytest.mark.django_db(transaction=True)


def test_enrollment_pins_trust_with_private_modes(fleet) -> None:
    for name in ("key.pem", "config.json", "trust/root.json", "trust/director.pem"):
        mode = stat.S_IMODE(os.stat(fleet.agent_dir / name).st_mode)
        assert mode == 0o600, name
    config = json.loads((fleet.agent_dir / "config.json").read_text())
    assert config["tuf_url"] == f"{fleet.server}/tuf/"
    assert config["broker_url"].startswith("mqtt://127.0.0.1:")
    # the agent published its retained state on connect
    fleet.wait_for(lambda: fleet.watcher.states, "a retained state")
    assert fleet.watcher.states[-1].models == ()


def test_install_commit_then_replay_changes_nothing(fleet) -> None:
    # given a published model
    v1 = publish(fleet.tmp_path, tflite_bytes(300_000, b"v1"), version="1.0.0", counter=1)
    envelope = desired_envelope(fleet.device_id, 1, [v1.target(fleet.server)])

    # when the director sends the desired state
    fleet.watcher.send_desired(envelope)

    # then the agent commits it and `current` holds exactly the signed bytes
    fleet.wait_for(lambda: fleet.watcher.event(1, Phase.COMMITTED), "committed seq 1")
    assert current_sha256(fleet.agent_dir, "kws", "model.tflite") == v1.sha256
    phases = [e.phase for e in fleet.watcher.events if e.seq == 1]
    assert [p for p in phases if p != Phase.DOWNLOADING] == [
        Phase.ACCEPTED,
        Phase.DOWNLOADED,
        Phase.VERIFIED,
        Phase.STAGED,
        Phase.SWAPPED,
        Phase.TRIAL,
        Phase.COMMITTED,
    ]
    assert Phase.DOWNLOADING in phases
    assert all(e.rollout_id == "r-1" for e in fleet.watcher.events if e.seq == 1)
    fleet.wait_for(
        lambda: fleet.watcher.states and fleet.watcher.states[-1].models, "a state with kws"
    )
    (reported,) = fleet.watcher.states[-1].models
    assert (reported.version, reported.slot, reported.status) == ("1.0.0", "a", "committed")
    assert fleet.watcher.states[-1].last_seq == 1
    # the journal goes once the broker has acknowledged the final event
    fleet.wait_for(lambda: not (fleet.agent_dir / "journal.json").exists(), "journal cleared")
    assert list((fleet.agent_dir / "downloads").iterdir()) == []

    # when the same envelope arrives again (the retained copy), nothing happens;
    # when another envelope with the same seq arrives, it is refused as a replay
    events_before = len(fleet.watcher.events)
    fleet.watcher.send_desired(envelope)
    replay = desired_envelope(fleet.device_id, 1, [v1.target(fleet.server, rollout_id="r-evil")])
    fleet.watcher.send_desired(replay)
    rejected = fleet.wait_for(
        lambda: fleet.watcher.event(1, Phase.REJECTED, model=None), "the replay refused"
    )

    # then
    assert rejected.code == "replayed_command"
    assert len(fleet.watcher.events) == events_before + 1
    assert current_sha256(fleet.agent_dir, "kws", "model.tflite") == v1.sha256

    # when a newer version comes, it goes into the other slot
    v2 = publish(fleet.tmp_path, tflite_bytes(5_000, b"v2"), version="1.1.0", counter=2)
    fleet.watcher.send_desired(desired_envelope(fleet.device_id, 2, [v2.target(fleet.server)]))
    fleet.wait_for(lambda: fleet.watcher.event(2, Phase.COMMITTED), "committed seq 2")
    assert current_sha256(fleet.agent_dir, "kws", "model.tflite") == v2.sha256
    assert os.readlink(fleet.agent_dir / "models/kws/current") == "slots/b"

    # and the operator can go back to the previous slot while the agent is stopped
    assert fleet.agent.stop() == 0
    from agent_harness import agent_cli

    back = agent_cli("rollback", "kws", "--dir", str(fleet.agent_dir))
    assert back.returncode == 0, back.stderr
    assert current_sha256(fleet.agent_dir, "kws", "model.tflite") == v1.sha256
    status = json.loads(agent_cli("status", "--dir", str(fleet.agent_dir)).stdout)
    assert status["models"]["kws"]["installed"]["version"] == "1.0.0"
    assert status["models"]["kws"]["current"] == "a"


def _install_v1(fleet):
    v1 = publish(fleet.tmp_path, tflite_bytes(20_000, b"v1"), version="1.0.0", counter=1)
    fleet.watcher.send_desired(desired_envelope(fleet.device_id, 1, [v1.target(fleet.server)]))
    fleet.wait_for(lambda: fleet.watcher.event(1, Phase.COMMITTED), "v1 committed")
    v2 = publish(fleet.tmp_path, tflite_bytes(20_000, b"v2"), version="2.0.0", counter=2)
    return v1, v2


def _refusal_cases():
    def wrong_device(fleet, v2):
        target = v2.target(fleet.server)
        return desired_envelope("dev-other", 2, [target]), None, "wrong_device"

    def expired(fleet, v2):
        issued = datetime.now(UTC) - timedelta(days=2)
        envelope = desired_envelope(
            fleet.device_id,
            2,
            [v2.target(fleet.server)],
            issued_at=issued,
            expires_in=timedelta(days=1),
        )
        return envelope, None, "command_expired"

    def director_tuf_mismatch(fleet, v2):
        # the director (compromised) names other bytes than CI signed for 2.0.0
        evil = tflite_bytes(20_000, b"evil")
        import hashlib

        target = v2.target(fleet.server, sha256=hashlib.sha256(evil).hexdigest())
        return desired_envelope(fleet.device_id, 2, [target]), "kws", "director_image_mismatch"

    def downgrade_below_counter(fleet, v2):
        # the director lies about the release counter
        target = v2.target(fleet.server, release_counter=9)
        return desired_envelope(fleet.device_id, 2, [target]), "kws", "director_image_mismatch"

    return [wrong_device, expired, director_tuf_mismatch, downgrade_below_counter]


@pytest.mark.parametrize("case", _refusal_cases(), ids=lambda c: c.__name__)
def test_refusals_leave_the_old_model_in_place(fleet, case) -> None:
    # given v1 installed and v2 published
    v1, v2 = _install_v1(fleet)
    store_before = (fleet.agent_dir / "state.json").read_bytes()

    # when a bad desired state arrives
    envelope, model, code = case(fleet, v2)
    fleet.watcher.send_desired(envelope)

    # then it is refused with its code and nothing on the device changes
    seq = 0 if code == "signature_invalid" else 2
    rejected = fleet.wait_for(
        lambda: fleet.watcher.event(seq, Phase.REJECTED, model=model), f"{code} refusal"
    )
    assert rejected.code == code
    assert current_sha256(fleet.agent_dir, "kws", "model.tflite") == v1.sha256
    assert os.readlink(fleet.agent_dir / "models/kws/current") == "slots/a"
    # the journal goes once the broker has acknowledged the final event
    fleet.wait_for(lambda: not (fleet.agent_dir / "journal.json").exists(), "journal cleared")
    assert not any(e.phase == Phase.ACCEPTED and e.seq == 2 for e in fleet.watcher.events)
    store_after = json.loads((fleet.agent_dir / "state.json").read_bytes())
    assert store_after["models"] == json.loads(store_before)["models"]


def test_sigkill_mid_download_resumes_with_range_after_restart(fleet) -> None:
    # given a model served by a slow mirror (the director may name any URL: the bytes
    # are checked against TUF)
    import signal

    from agent_http import Behaviour, file_server

    v1 = publish(fleet.tmp_path, tflite_bytes(400_000, b"slow"), version="1.0.0", counter=1)
    mirror = Behaviour(data=v1.data, throttle=(16_384, 0.05))
    with file_server(mirror) as url:
        fleet.watcher.send_desired(
            desired_envelope(fleet.device_id, 1, [v1.target(fleet.server, url=url)])
        )
        # when the agent is killed while downloading (progress events come at most every
        # progress_event_interval_s: the part on disk shows it)
        part = fleet.agent_dir / "downloads" / f"{v1.sha256}.part"
        fleet.wait_for(lambda: part.exists() and part.stat().st_size > 0, "download progress")
        fleet.agent.stop(signal.SIGKILL)
        journal = json.loads((fleet.agent_dir / "journal.json").read_text())
        assert journal["state"]["status"] == "downloading"
        kept = part.stat().st_size
        assert 0 < kept < len(v1.data)

        # and started again
        mirror.throttle = None
        fleet.agent.start()

        # then it resumes where it stopped and commits
        fleet.wait_for(lambda: fleet.watcher.event(1, Phase.COMMITTED), "committed after restart")
    ranges = [r.get("range") for r in mirror.requests]
    assert ranges[0] is None
    assert ranges[-1] is not None
    resumed_at = int(ranges[-1].removeprefix("bytes=").rstrip("-"))
    assert resumed_at >= kept > 0
    assert current_sha256(fleet.agent_dir, "kws", "model.tflite") == v1.sha256
