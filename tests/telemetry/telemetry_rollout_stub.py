"""A stand-in rollout progress source for the end-to-end metrics test.

The web process under test loads it through FLEET_METRICS_ROLLOUT_SOURCE, so the rollout
panels show known scenarios (tests/telemetry/test_telemetry_prometheus.py asserts their
values):

- r-9: a running A/B rollout; arm B's install gate has a failure but is not judged yet;
- r-7: a phased rollout where every device failed (gate breached), aborted;
- r-8: an A/B rollout an operator aborted with every device updated: not a failure;
- r-10: the newest rollout, finished: the dashboards still open on r-9, the newest
  running one.
"""

from datetime import UTC, datetime, timedelta

from telemetry.metrics import GateFigure, RolloutArmProgress

STATES = (
    "pending",
    "notified",
    "in_progress",
    "succeeded",
    "failed",
    "timed_out",
    "rolling_back",
    "rolled_back",
)


def _devices(**counts: int) -> dict[str, int]:
    return {state: counts.get(state, 0) for state in STATES}


def _install_gate(value: float | None, state: str) -> GateFigure:
    return GateFigure(value=value, threshold=0.05, state=state)


def progress() -> list[RolloutArmProgress]:
    now = datetime.now(UTC)

    def rollout(public_id: str, strategy: str, state: str, hours_ago: float) -> dict:
        return {
            "rollout": public_id,
            "model": "kws",
            "strategy": strategy,
            "state": state,
            "stage": 1 if state == "running" else 0,
            "stage_percent": 10.0 if state == "running" else 100.0,
            "finished": state not in ("scheduled", "running", "paused"),
            "created": now - timedelta(hours=hours_ago),
        }

    r9 = rollout("r-9", "ab", "running", 1)
    r7 = rollout("r-7", "phased", "aborted", 3)
    r8 = rollout("r-8", "ab", "rolled_back", 2)
    r10 = rollout("r-10", "phased", "completed", 0.5)
    return [
        RolloutArmProgress(
            **r9,
            arm="A",
            devices=_devices(pending=8, succeeded=2),
            failures={},
            gates={
                "install_failure_rate": _install_gate(0.0, "passing"),
                "latency_ms_p95": GateFigure(value=0.0, threshold=0.1, state="passing"),
            },
        ),
        RolloutArmProgress(
            **r9,
            arm="B",
            devices=_devices(pending=7, in_progress=1, succeeded=1, failed=1),
            failures={"hash_mismatch": 1},
            gates={
                "install_failure_rate": _install_gate(0.5, "insufficient_data"),
                "latency_ms_p95": GateFigure(value=-0.17, threshold=0.1, state="passing"),
            },
        ),
        RolloutArmProgress(
            **r7,
            arm="main",
            devices=_devices(failed=3),
            failures={"health_check_failed": 3},
            gates={"install_failure_rate": _install_gate(1.0, "breached")},
        ),
        *(
            RolloutArmProgress(
                **r8,
                arm=arm,
                devices=_devices(rolled_back=2),
                failures={},
                gates={"install_failure_rate": _install_gate(0.0, "passing")},
            )
            for arm in ("A", "B")
        ),
        RolloutArmProgress(
            **r10,
            arm="main",
            devices=_devices(succeeded=3),
            failures={},
            gates={"install_failure_rate": _install_gate(0.0, "passing")},
        ),
    ]
