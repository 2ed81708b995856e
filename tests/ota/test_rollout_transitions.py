"""The rollout state machine: every allowed transition happens with an audit row, every
other one is refused with `conflict` and changes nothing."""

import itertools

import pytest
from django.contrib.auth.models import AnonymousUser
from rollout_helpers import artifact, devices, operator, phased, use_own_director_key

from device_agent.protocol.errors import ErrorCode
from fleet.errors import ServiceError
from ota import rollouts
from ota.models import Rollout, RolloutAuditEvent, RolloutDevice, RolloutStatus

pytestmark = pytest.mark.django_db
S = RolloutStatus

ALLOWED = {
    (S.DRAFT, S.SCHEDULED),
    (S.DRAFT, S.ABORTED),
    (S.SCHEDULED, S.RUNNING),
    (S.SCHEDULED, S.DRAFT),
    (S.SCHEDULED, S.ABORTED),
    (S.RUNNING, S.PAUSED),
    (S.RUNNING, S.COMPLETED),
    (S.RUNNING, S.COMPLETED_WITH_FAILURES),
    (S.RUNNING, S.ABORTED),
    (S.PAUSED, S.RUNNING),
    (S.PAUSED, S.ABORTED),
    (S.ABORTED, S.ROLLED_BACK),
}
ALL_PAIRS = list(itertools.product(S, S))


@pytest.fixture(autouse=True)
def _keys(settings, tmp_path):
    use_own_director_key(settings, tmp_path)


def _rollout_in(status: RolloutStatus) -> Rollout:
    artifact("2.0.0")
    devices(1)  # a selection that matches no device is refused (empty_selection)
    rollout = phased(start=False)
    Rollout.objects.filter(pk=rollout.pk).update(status=status)  # test setup only
    rollout.refresh_from_db()
    return rollout


def test_the_table_is_the_documented_lifecycle():
    table = {(a, b) for a, targets in rollouts.TRANSITIONS.items() for b in targets}
    assert table == ALLOWED


@pytest.mark.parametrize(("source", "target"), sorted(ALLOWED))
def test_allowed_transition_changes_status_and_writes_one_audit_row(source, target):
    rollout = _rollout_in(source)
    by = operator()
    before = RolloutAuditEvent.objects.filter(rollout=rollout).count()

    changed = rollouts._transition(rollout, target, by=by, reason="because", figures={"x": 1})

    assert changed.status == target
    assert Rollout.objects.get(pk=rollout.pk).status == target
    audit = RolloutAuditEvent.objects.filter(rollout=rollout).order_by("pk")
    assert audit.count() == before + 1
    last = audit.last()
    assert last is not None
    assert (last.from_status, last.to_status) == (source, target)
    assert (last.actor, last.actor_name, last.reason) == (by, "operator", "because")
    assert last.figures == {"x": 1}


@pytest.mark.parametrize(("source", "target"), [pair for pair in ALL_PAIRS if pair not in ALLOWED])
def test_refused_transition_changes_nothing(source, target):
    rollout = _rollout_in(source)
    before = RolloutAuditEvent.objects.filter(rollout=rollout).count()

    with pytest.raises(ServiceError) as refused:
        rollouts._transition(rollout, target, by=operator(), reason="no")

    assert refused.value.code == ErrorCode.CONFLICT
    assert f"is {source}: it cannot become {target}" in refused.value.detail
    assert Rollout.objects.get(pk=rollout.pk).status == source
    assert RolloutAuditEvent.objects.filter(rollout=rollout).count() == before


def test_services_walk_the_lifecycle_with_an_audit_trail():
    # given a draft
    artifact("2.0.0")
    devices(3)
    by = operator()
    rollout = phased(start=False, by=by)

    # when it is scheduled, started, paused, resumed and aborted
    rollout = rollouts.rollout_schedule(rollout=rollout, by=by)
    rollout = rollouts.rollout_start(rollout=rollout, by=by)
    assert RolloutDevice.objects.filter(rollout=rollout).count() == 3
    rollout = rollouts.rollout_pause(rollout=rollout, by=by, reason="lunch")
    rollout = rollouts.rollout_resume(rollout=rollout, by=by)
    rollout = rollouts.rollout_abort(rollout=rollout, by=by, reason="changed my mind")

    # then each step is one audit row, in order, with who and why
    trail = list(
        RolloutAuditEvent.objects.filter(rollout=rollout)
        .order_by("pk")
        .values_list("from_status", "to_status", "actor_name", "reason")
    )
    assert trail == [
        ("", "draft", "operator", "created"),
        ("draft", "scheduled", "operator", "scheduled (waits for an operator)"),
        ("scheduled", "running", "operator", "started"),
        ("running", "paused", "operator", "lunch"),
        ("paused", "running", "operator", "resumed"),
        ("running", "aborted", "operator", "changed my mind"),
    ]
    assert rollout.started_at is not None
    assert rollout.finished_at is not None


def test_starting_a_draft_schedules_it_first():
    artifact("2.0.0")
    devices(1)
    rollout = phased(start=False)

    started = rollouts.rollout_start(rollout=rollout, by=operator())

    assert started.status == S.RUNNING
    steps = list(
        RolloutAuditEvent.objects.filter(rollout=rollout)
        .order_by("pk")
        .values_list("from_status", "to_status")
    )
    assert steps[-2:] == [("draft", "scheduled"), ("scheduled", "running")]


def test_engine_changes_are_audited_as_engine():
    rollout = _rollout_in(S.RUNNING)

    rollouts.rollout_pause(rollout=rollout, by=None, reason="gate breach", figures={"rate": 0.5})

    last = RolloutAuditEvent.objects.filter(rollout=rollout).order_by("pk").last()
    assert last is not None
    assert (last.actor, last.actor_name, last.figures) == (None, "engine", {"rate": 0.5})


def test_an_anonymous_caller_is_refused():
    rollout = _rollout_in(S.RUNNING)

    with pytest.raises(ServiceError) as refused:
        rollouts.rollout_pause(rollout=rollout, by=AnonymousUser(), reason="x")

    assert refused.value.code == ErrorCode.UNAUTHORIZED
    assert Rollout.objects.get(pk=rollout.pk).status == S.RUNNING


def test_a_stale_instance_cannot_repeat_a_transition():
    # two operators load the same running rollout; both press pause
    rollout = _rollout_in(S.RUNNING)
    stale = Rollout.objects.get(pk=rollout.pk)
    rollouts.rollout_pause(rollout=rollout, by=operator(), reason="first")

    # the second is judged on the row as it is now, not on its stale copy
    with pytest.raises(ServiceError) as refused:
        rollouts.rollout_pause(rollout=stale, by=operator(), reason="second")
    assert refused.value.code == ErrorCode.CONFLICT
    assert RolloutAuditEvent.objects.filter(rollout=rollout, to_status=S.PAUSED).count() == 1


SERVICES = {
    "schedule": (
        lambda r, by: rollouts.rollout_schedule(rollout=r, by=by),
        {S.DRAFT: S.SCHEDULED},
    ),
    "unschedule": (
        lambda r, by: rollouts.rollout_unschedule(rollout=r, by=by),
        {S.SCHEDULED: S.DRAFT},
    ),
    "start": (
        lambda r, by: rollouts.rollout_start(rollout=r, by=by),
        {S.DRAFT: S.RUNNING, S.SCHEDULED: S.RUNNING},
    ),
    "pause": (
        lambda r, by: rollouts.rollout_pause(rollout=r, by=by, reason="p"),
        {S.RUNNING: S.PAUSED},
    ),
    "resume": (
        lambda r, by: rollouts.rollout_resume(rollout=r, by=by),
        {S.PAUSED: S.RUNNING},
    ),
    "abort": (
        lambda r, by: rollouts.rollout_abort(rollout=r, by=by, reason="a"),
        {s: S.ABORTED for s in (S.DRAFT, S.SCHEDULED, S.RUNNING, S.PAUSED)},
    ),
}


@pytest.mark.parametrize("source", list(S))
@pytest.mark.parametrize("service", sorted(SERVICES))
def test_each_service_acts_only_from_its_own_statuses(service, source):
    # e.g. resuming a scheduled rollout must not start it (running without devices)
    call, moves = SERVICES[service]
    rollout = _rollout_in(source)
    before = RolloutAuditEvent.objects.filter(rollout=rollout).count()

    if source in moves:
        assert call(rollout, operator()).status == moves[source]
        assert RolloutAuditEvent.objects.filter(rollout=rollout).count() > before
    else:
        with pytest.raises(ServiceError) as refused:
            call(rollout, operator())
        assert refused.value.code == ErrorCode.CONFLICT
        assert Rollout.objects.get(pk=rollout.pk).status == source
        assert RolloutAuditEvent.objects.filter(rollout=rollout).count() == before
