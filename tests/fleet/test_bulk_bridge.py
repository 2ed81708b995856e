"""fleet/bulk.py's functions for the bridge's outbox: the database's clock, the listening
connection (NOTIFY at commit, nothing on rollback) and its session lock."""

from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone
from service_check import require_postgresql

from fleet.bulk import database_now, listening, listening_supported, notify

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.db_both]

CHANNEL = "fleet_bulk_bridge_test"
LOCK = 0x7465_7374  # not the outbox's key


def test_the_database_clock_is_an_aware_now() -> None:
    before = timezone.now()
    at = database_now()
    assert at.tzinfo is not None
    assert before - timedelta(seconds=5) <= at <= timezone.now() + timedelta(seconds=5)


def test_listening_is_supported_on_postgresql_only() -> None:
    assert listening_supported() == (connection.vendor == "postgresql")


def test_a_listener_hears_a_commit_and_not_a_rollback() -> None:
    require_postgresql(connection.vendor)
    with listening() as session:
        session.listen(CHANNEL)
        # a rolled-back transaction's notification is dropped
        with transaction.atomic():
            notify(CHANNEL)
            transaction.set_rollback(True)
        assert list(session.notifications(0.2)) == []
        # a committed one arrives
        with transaction.atomic():
            notify(CHANNEL)
        assert list(session.notifications(5.0))[:1] == [CHANNEL]


def test_the_session_lock_is_held_by_one_connection_until_it_closes() -> None:
    require_postgresql(connection.vendor)
    with listening() as first:
        assert first.try_lock(LOCK)
        with listening() as second:
            assert not second.try_lock(LOCK)
    with listening() as third:
        assert third.try_lock(LOCK)  # released with the first connection
