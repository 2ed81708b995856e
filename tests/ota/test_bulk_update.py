"""``ota.bulk_update``: many rows, each with its own values, in one statement (PostgreSQL)
or one executemany (SQLite) - the same result as saving each row."""

from datetime import timedelta

import pytest
from django.utils import timezone
from rollout_helpers import artifact, devices, phased, use_own_director_key

from ota.bulk_update import columns_update, rows_update
from ota.models import RolloutDevice


@pytest.fixture
def rollout_rows(settings, tmp_path, db):  # type: ignore[no-untyped-def]
    use_own_director_key(settings, tmp_path)
    artifact("1.0.0")
    artifact("2.0.0")
    devices(6)
    rollout = phased(policy={"rate_per_minute": 1})
    return list(RolloutDevice.objects.filter(rollout=rollout).order_by("pk"))


def test_each_row_gets_its_own_values_and_updated_at_moves(rollout_rows):  # type: ignore[no-untyped-def]
    # given rows whose fields change differently, None and "" included
    before = {r.pk: r.updated_at for r in RolloutDevice.objects.all()}
    now = timezone.now()
    changed = rollout_rows[:4]
    for i, row in enumerate(changed):
        row.state = "notified" if i % 2 else "failed"
        row.attempts = i
        row.desired_seq = 100 + i
        row.notified_at = now - timedelta(seconds=i) if i else None
        row.last_code = "" if i else "hash_mismatch"
        row.previous_artifact_id = None
    # when they are written in one call
    fields = ["state", "attempts", "desired_seq", "notified_at", "last_code", "previous_artifact"]
    assert rows_update(changed, fields) == 4
    # then the database holds exactly those values, the others are untouched
    stored = {r.pk: r for r in RolloutDevice.objects.all()}
    for i, row in enumerate(changed):
        got = stored[row.pk]
        assert (got.state, got.attempts, got.desired_seq, got.last_code) == (
            row.state,
            i,
            100 + i,
            row.last_code,
        )
        assert got.notified_at == row.notified_at
        assert got.updated_at > before[row.pk]
    for row in rollout_rows[4:]:
        assert stored[row.pk].state == "pending"
        assert stored[row.pk].updated_at == before[row.pk]


def test_columns_by_field_name_and_refusals(rollout_rows):  # type: ignore[no-untyped-def]
    pks = [r.pk for r in rollout_rows[:2]]
    assert columns_update(RolloutDevice, pks, {"last_phase": ["accepted", "committed"]}) == 2
    assert list(
        RolloutDevice.objects.filter(pk__in=pks).order_by("pk").values_list("last_phase", flat=True)
    ) == ["accepted", "committed"]
    assert columns_update(RolloutDevice, [], {"last_phase": []}) == 0
    with pytest.raises(ValueError, match="2 rows"):
        columns_update(RolloutDevice, pks, {"last_phase": ["accepted"]})
    with pytest.raises(ValueError, match="concrete, non-key fields"):
        columns_update(RolloutDevice, pks, {"id": [1, 2]})
