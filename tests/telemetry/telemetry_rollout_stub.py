"""A stand-in rollout progress source for the end-to-end metrics test.

The rollout engine does not exist yet; it will register its own source with
`telemetry.metrics.rollout_progress_source_register`. The web process under test loads this
one through FLEET_METRICS_ROLLOUT_SOURCE, so the rollout panels have something to show.
"""

from telemetry.metrics import GateFigure, RolloutArmProgress


def progress() -> list[RolloutArmProgress]:
    common = {
        "rollout": "r-9",
        "model": "kws",
        "strategy": "ab",
        "state": "running",
        "stage": 1,
        "stage_percent": 10.0,
    }
    return [
        RolloutArmProgress(
            **common,  # type: ignore[arg-type]
            arm="A",
            devices={"pending": 8, "in_progress": 0, "committed": 2, "failed": 0},
            failures={},
            gates={"latency_ms_p95": GateFigure(value=21.0, threshold=25.0, passing=True)},
        ),
        RolloutArmProgress(
            **common,  # type: ignore[arg-type]
            arm="B",
            devices={"pending": 7, "in_progress": 1, "committed": 1, "failed": 1},
            failures={"hash_mismatch": 1},
            gates={"latency_ms_p95": GateFigure(value=16.0, threshold=25.0, passing=True)},
        ),
    ]
