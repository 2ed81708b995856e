"""End to end: the trial decides (ONNX self-test through onnxruntime) and the floor holds."""

import json
import os

import pytest
from agent_harness import current_sha256, desired_envelope, publish, tflite_bytes
from agent_models import WEIGHTS, X, matmul_onnx
from service_check import require_module

from device_agent.protocol.messages import Phase

pytestmark = pytest.mark.django_db(transaction=True)


def selftest_meta() -> str:
    expected = [sum(X[i] * WEIGHTS[i][j] for i in range(4)) for j in range(2)]
    selftest = {
        "input": {"name": "x", "shape": [1, 4], "dtype": "float32", "data": X},
        "output": {"name": "y", "shape": [1, 2], "data": expected},
        "atol": 0.0001,
    }
    # fleetctl turns the floats into decimal strings (canonical JSON has no floats)
    return "selftest=" + json.dumps(selftest)


def test_onnx_selftest_commits_good_and_rolls_back_broken(fleet) -> None:
    require_module("onnxruntime", "pip install -e '.[dev]' (deploy/dev/venv.sh)")
    # given a good model and a broken one (other weights), both with the same self-test
    good = publish(
        fleet.tmp_path,
        matmul_onnx(WEIGHTS),
        version="1.0.0",
        counter=1,
        fmt="onnx",
        meta=[selftest_meta()],
    )
    broken_weights = [[w + 1.0 for w in row] for row in WEIGHTS]
    broken = publish(
        fleet.tmp_path,
        matmul_onnx(broken_weights),
        version="1.1.0",
        counter=2,
        fmt="onnx",
        meta=[selftest_meta()],
    )

    # when the good one is sent, it passes its self-test and is committed
    fleet.watcher.send_desired(desired_envelope(fleet.device_id, 1, [good.target(fleet.server)]))
    fleet.wait_for(lambda: fleet.watcher.event(1, Phase.COMMITTED), "good model committed")
    assert current_sha256(fleet.agent_dir, "kws", "model.onnx") == good.sha256

    # when the broken one is sent, its self-test fails and the agent rolls back
    fleet.watcher.send_desired(desired_envelope(fleet.device_id, 2, [broken.target(fleet.server)]))
    rolled = fleet.wait_for(
        lambda: fleet.watcher.event(2, Phase.ROLLED_BACK), "broken model rolled back"
    )

    # then
    assert rolled.code == "health_check_failed"
    assert "self-test" in rolled.detail
    assert not fleet.watcher.event(2, Phase.COMMITTED)
    assert current_sha256(fleet.agent_dir, "kws", "model.onnx") == good.sha256
    assert os.readlink(fleet.agent_dir / "models/kws/current") == "slots/a"
    fleet.wait_for(
        lambda: fleet.watcher.states and fleet.watcher.states[-1].models[0].status == "rolled_back",
        "the state to say rolled_back",
    )
    (reported,) = fleet.watcher.states[-1].models
    assert (reported.version, reported.slot) == ("1.0.0", "a")


def test_floor_raised_by_a_commit_refuses_older_releases(fleet) -> None:
    # given 1.0.0 (release 1) and a security fix 2.0.0 (release 2) that sets floor 2
    old = publish(fleet.tmp_path, tflite_bytes(4_000, b"old"), version="1.0.0", counter=1)
    from ota import cli

    fixed_path = fleet.tmp_path / "fixed" / "model.tflite"
    fixed_path.parent.mkdir()
    fixed_path.write_bytes(tflite_bytes(4_000, b"fixed"))
    assert (
        cli.main(
            [
                "publish",
                str(fixed_path),
                "--name",
                "kws",
                "--version",
                "2.0.0",
                "--hardware",
                "linux-x86_64-fp32",
                "--format",
                "tflite",
                "--release-counter",
                "2",
                "--floor",
                "2",
            ]
        )
        == 0
    )
    from agent_harness import Artifact

    fixed = Artifact(name="kws", version="2.0.0", path=fixed_path, fmt="tflite", counter=2)
    fleet.watcher.send_desired(desired_envelope(fleet.device_id, 1, [fixed.target(fleet.server)]))
    fleet.wait_for(lambda: fleet.watcher.event(1, Phase.COMMITTED), "the fix committed")

    # when the director asks for the old release
    fleet.watcher.send_desired(desired_envelope(fleet.device_id, 2, [old.target(fleet.server)]))

    # then it is refused and the fix stays
    refused = fleet.wait_for(
        lambda: fleet.watcher.event(2, Phase.REJECTED), "the downgrade refused"
    )
    assert refused.code == "downgrade_refused"
    assert current_sha256(fleet.agent_dir, "kws", "model.tflite") == fixed.sha256
    state = json.loads((fleet.agent_dir / "state.json").read_text())
    assert state["models"]["kws"]["floor"] == 2
