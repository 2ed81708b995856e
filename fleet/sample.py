"""The quick start's sample (``manage.py fleet_up``): the model ``kws`` published in two
versions as CI would (``fleetctl publish`` with the CI release key and token), 1.0.0
rolled out to every simulated device, then a phased rollout of 1.1.0 left running, so a
new user sees stages, bake times and progress in the dashboard and in ``/metrics``.

Runs once per data directory (nothing happens when ``kws`` already has versions).
"""

import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from django.contrib.auth import get_user_model
from django.db import close_old_connections

from fleet.models import Device
from ota import rollouts
from ota.models import Artifact, Rollout, RolloutStatus

log = logging.getLogger(__name__)

SAMPLES = Path(__file__).resolve().parents[1] / "deploy" / "dev" / "sample-models"
MODEL = "kws"
HARDWARE = "linux-x86_64-fp32"
FIRST, SECOND = "1.0.0", "1.1.0"
# A stage of p % reaches ceil(p / 100 x N) devices: on the three simulated devices one,
# two, then three (34 % would already be two of them).
STAGES = [
    {"percent": 33, "bake_minutes": 2},
    {"percent": 66, "bake_minutes": 2},
    {"percent": 100},
]


def _wait(what: str, predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(1)
        close_old_connections()


def _publish(version: str, ci_env: dict[str, str]) -> None:
    selftest = json.loads((SAMPLES / f"{MODEL}-{version}.selftest.json").read_text())
    subprocess.run(  # noqa: S603 - our own console script
        [
            str(Path(sys.executable).parent / "fleetctl"),
            "publish",
            str(SAMPLES / f"{MODEL}-{version}.onnx"),
            "--name",
            MODEL,
            "--version",
            version,
            "--hardware",
            HARDWARE,
            "--format",
            "onnx",
            "--meta",
            "selftest=" + json.dumps(selftest),
        ],
        env=ci_env,
        check=True,
        capture_output=True,
        timeout=120,
    )


def sample_seed(*, ci_env: dict[str, str], devices: list[str], timeout: float = 300) -> str | None:
    """Publish the sample versions and start its rollouts; the running rollout's id.

    ``ci_env`` carries FLEET_URL, FLEET_TOKEN and FLEET_RELEASE_KEY for fleetctl. Returns
    None when the sample was seeded before (or there are no devices).
    """
    if not devices or Artifact.objects.filter(model__name=MODEL).exists():
        return None
    _wait(
        "the simulated devices to come online",
        lambda: Device.objects.filter(device_id__in=devices, online=True).count() == len(devices),
        timeout,
    )
    for version in (FIRST, SECOND):
        _publish(version, ci_env)
    operator = get_user_model().objects.get(username="operator")
    selection = {"devices": devices}
    first = rollouts.rollout_create(
        model_name=MODEL,
        strategy="phased",
        version=FIRST,
        selection=selection,
        policy={"min_finished": 1},
        description="quick start: the first version everywhere",
        by=operator,
    )
    first = rollouts.rollout_start(rollout=first, by=operator, reason="quick-start sample")
    _wait(
        f"{first.public_id} to complete",
        lambda: Rollout.objects.get(pk=first.pk).status == RolloutStatus.COMPLETED,
        timeout,
    )
    second = rollouts.rollout_create(
        model_name=MODEL,
        strategy="phased",
        version=SECOND,
        selection=selection,
        stages=STAGES,
        policy={"on_breach": "abort", "min_finished": 1},
        description="quick start: a phased rollout, 33 % -> 66 % -> 100 %, 2 min bake",
        by=operator,
    )
    second = rollouts.rollout_start(rollout=second, by=operator, reason="quick-start sample")
    return second.public_id
