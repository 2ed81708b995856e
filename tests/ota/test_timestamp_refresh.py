"""The beat task re-signs timestamp (and snapshot) before they expire."""

from datetime import UTC, datetime, timedelta

from tuf.api.metadata import Snapshot, Timestamp

from ota.repository import metadata_latest
from ota.tasks import tuf_refresh_task


def test_fresh_metadata_needs_no_resign(repo):
    assert tuf_refresh_task() == []


def test_timestamp_close_to_expiry_is_resigned(repo, settings):
    # given a timestamp whose remaining life is under half its period
    before = metadata_latest("timestamp", Timestamp)
    assert before is not None
    settings.FLEET_TUF_TIMESTAMP_EXPIRY = timedelta(days=30)
    # when the task runs
    changed = tuf_refresh_task()
    # then a new timestamp, valid for the full period, is served
    after = metadata_latest("timestamp", Timestamp)
    assert after is not None
    assert changed == ["timestamp"]
    assert after.signed.version == before.signed.version + 1
    assert after.signed.expires > datetime.now(UTC) + timedelta(days=29)


def test_snapshot_close_to_expiry_is_resigned_with_timestamp(repo, settings):
    before = metadata_latest("snapshot", Snapshot)
    assert before is not None
    settings.FLEET_TUF_SNAPSHOT_EXPIRY = timedelta(days=100)
    assert tuf_refresh_task() == ["snapshot", "timestamp"]
    after = metadata_latest("snapshot", Snapshot)
    assert after is not None
    assert after.signed.version == before.signed.version + 1
