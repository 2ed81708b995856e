"""The admin's fleet-wide audit log: rollout changes (``RolloutAuditEvent``) and the rest
(``fleet.AuditEvent``: publishes, keys, revocations, tokens) in one list, newest first,
filtered by who, what, when and reason. Two queries a page (count and rows: one UNION),
whatever the number of rows; the rows' HTML is written in one pass (rows_html), not cell
by cell through the template engine."""

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.db.models import BigIntegerField, CharField, F, QuerySet, Value
from django.db.models.functions import Cast, Concat
from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from fleet.audit import ACTIONS
from fleet.models import AuditEvent
from ota.models import RolloutAuditEvent

ROLLOUT = "rollout"
# "what" choices: every rollout change, or one fleet action
WHAT_CHOICES: tuple[tuple[str, str], ...] = (
    (ROLLOUT, "changed a rollout"),
    *ACTIONS.items(),
)
MAX_FILTER = 150


@dataclass(frozen=True)
class AuditFilters:
    who: str = ""
    what: str = ""
    since: date | None = None
    until: date | None = None
    reason: str = ""

    @classmethod
    def parse(cls, query: Any) -> tuple["AuditFilters", list[str]]:
        """The filters from the query string, and what was ignored (said on the page)."""
        problems: list[str] = []

        def day(name: str) -> date | None:
            raw = query.get(name, "").strip()
            if not raw:
                return None
            try:
                return date.fromisoformat(raw)
            except ValueError:
                problems.append(f"{name} must be a date (YYYY-MM-DD): {raw[:20]!r} ignored")
                return None

        what = query.get("what", "").strip()
        if what and what not in dict(WHAT_CHOICES):
            problems.append(f"unknown action {what[:40]!r} ignored")
            what = ""
        return (
            cls(
                who=query.get("who", "").strip()[:MAX_FILTER],
                what=what,
                since=day("since"),
                until=day("until"),
                reason=query.get("reason", "").strip()[:MAX_FILTER],
            ),
            problems,
        )

    def as_query(self) -> dict[str, str]:
        out = {"who": self.who, "what": self.what, "reason": self.reason}
        out["since"] = self.since.isoformat() if self.since else ""
        out["until"] = self.until.isoformat() if self.until else ""
        return {k: v for k, v in out.items() if v}


def _moment(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min), timezone.get_current_timezone())


def _common(qs: QuerySet[Any], f: AuditFilters) -> QuerySet[Any]:
    if f.who:
        qs = qs.filter(actor_name__icontains=f.who)
    if f.reason:
        qs = qs.filter(reason__icontains=f.reason)
    if f.since:
        qs = qs.filter(at__gte=_moment(f.since))
    if f.until:
        qs = qs.filter(at__lt=_moment(f.until + timedelta(days=1)))
    return qs


FIELDS = (
    "at",
    "actor_name",
    "action",
    "target",
    "reason",
    "rollout_pk",
    "from_status",
    "to_status",
)


def audit_rows(f: AuditFilters, *, fleet_wide: bool) -> QuerySet[Any]:
    """The audit rows as dicts of FIELDS, newest first. ``fleet_wide`` False: rollouts only
    (for those who may read rollouts but not the fleet's own trail)."""
    text = CharField()
    rollouts = _common(RolloutAuditEvent.objects.all(), f).annotate(
        action=Value(ROLLOUT, output_field=text),
        target=Concat(Value("r-"), Cast("rollout_id", output_field=text), output_field=text),
        rollout_pk=F("rollout_id"),
    )
    if f.what and f.what != ROLLOUT:
        rollouts = rollouts.none()
    rollouts = rollouts.values(*FIELDS).order_by()
    if not fleet_wide or f.what == ROLLOUT:
        return rollouts.order_by("-at")
    others = _common(AuditEvent.objects.all(), f)
    if f.what:
        others = others.filter(action=f.what)
    others = others.annotate(
        rollout_pk=Value(None, output_field=BigIntegerField()),
        from_status=Value("", output_field=text),
        to_status=Value("", output_field=text),
    )
    return rollouts.union(others.values(*FIELDS).order_by(), all=True).order_by("-at")


def describe(row: dict[str, Any]) -> str:
    """What happened, in words (a rollout's status change, or the fleet action's label)."""
    if row["action"] == ROLLOUT:
        before, after = row["from_status"], row["to_status"]
        if not before:
            return f"created rollout {row['target']} ({after})"
        if before == after:
            return f"changed rollout {row['target']} (still {after})"
        return f"moved rollout {row['target']} from {before} to {after}"
    return f"{ACTIONS.get(row['action'], row['action'])}: {row['target']}"


def rows_html(rows: list[dict[str, Any]], *, rollout_prefix: str) -> SafeString:
    """The table's rows, every value escaped; a rollout's change links to its page
    (``rollout_prefix``: the rollouts list's URL). Times as the dashboard's ``when`` tag
    writes them (UTC, rewritten by ota/dashboard.js)."""
    out = []
    for row in rows:
        what: str = escape(describe(row))
        if row["rollout_pk"] is not None:
            what = f'<a href="{rollout_prefix}{int(row["rollout_pk"])}/change/">{what}</a>'
        at = row["at"].astimezone(UTC)
        out.append(
            f'<tr data-action="{escape(row["action"])}">'
            f'<td><time class="dash-time" datetime="{at.isoformat()}">'
            f"{at.strftime('%Y-%m-%d %H:%M UTC')}</time></td>"
            f"<td>{escape(row['actor_name'])}</td><td>{what}</td>"
            f"<td>{escape(row['reason']) or '-'}</td></tr>"
        )
    return mark_safe("\n".join(out))  # noqa: S308 - every value above is escaped
