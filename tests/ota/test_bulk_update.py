"""``ota.bulk_update``: many rows, each with its own values, in one statement (PostgreSQL)
or one executemany (SQLite) - the same result as saving each row."""

from datetime import timedelta

import pytest
from django.utils import timezone
from rollout_helpers import artifact, devices, phased, use_own_director_key

from ota.bulk_update import columns_insert, columns_update, rows_update
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


def test_inserted_rows_hold_their_values_and_the_others_defaults_as_create_gives(rollout_rows):  # type: ignore[no-untyped-def]
    # given rows made by create() (the start's removed first), remembered and removed
    rollout = rollout_rows[0].rollout
    RolloutDevice.objects.filter(rollout=rollout).delete()
    made = [
        RolloutDevice.objects.create(
            rollout=rollout,
            device=row.device,
            arm=row.arm,
            bucket=row.bucket,
            artifact=row.artifact if i < 2 else None,
            state=row.state if i < 2 else "skipped",
            last_code="hw_mismatch" if i == 2 else "",
        )
        for i, row in enumerate(rollout_rows[:3])
    ]
    expected = {r.device_id: r for r in RolloutDevice.objects.filter(rollout=rollout)}
    RolloutDevice.objects.filter(rollout=rollout).delete()
    started = timezone.now()
    # when columns_insert makes them from their columns alone
    count = columns_insert(
        RolloutDevice,
        {
            "rollout": [rollout.pk] * 3,
            "device": [m.device_id for m in made],
            "arm": [m.arm for m in made],
            "bucket": [m.bucket for m in made],
            "artifact": [m.artifact_id for m in made],
            "state": [m.state for m in made],
            "last_code": [m.last_code for m in made],
        },
    )
    # then each row holds what create() stored: its values, the defaults, now for updated_at
    assert count == 3
    got = {r.device_id: r for r in RolloutDevice.objects.filter(rollout=rollout)}
    assert set(got) == set(expected)
    ignored = {"id", "updated_at"}
    names = [f.attname for f in RolloutDevice._meta.concrete_fields if f.name not in ignored]
    for device_id, row in got.items():
        assert {n: getattr(row, n) for n in names} == {
            n: getattr(expected[device_id], n) for n in names
        }
        assert row.updated_at >= started
    assert columns_insert(RolloutDevice, {"arm": []}) == 0
    with pytest.raises(ValueError, match="different lengths"):
        columns_insert(RolloutDevice, {"arm": ["a"], "bucket": [0.1, 0.2]})
