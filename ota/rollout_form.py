"""The admin's New rollout form: its fields turned into the API's create document, and the
live preview of what a selection targets.

The form builds the very body a client would POST to ``/api/v1/rollouts/`` and hands it
to ``ota.rollout_views.rollout_create_checked``, so it accepts and refuses what the API
does, with the same messages. A number field that does not parse is passed on as typed,
for the service to refuse by the field's name.
"""

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Count

from fleet.errors import ServiceError
from ota.models import Artifact
from ota.rollout_config import DAYS, STATISTICS, Selection
from ota.rollout_selectors import selection_devices
from ota.rollouts import selection_exists

ARM_ROWS = 3
STAGE_ROWS = 5
_SPLIT_RE = re.compile(r"[\s,]+")
# What the form shows before an operator changes anything: a cautious canary.
STAGE_DEFAULTS = (("10", "30"), ("50", "30"), ("100", ""), ("", ""), ("", ""))
ARM_DEFAULTS = (("a", "", "1"), ("b", "", "1"), ("", "", ""))
# The policy's plain numbers: the form uses the API's names and units.
POLICY_NUMBERS = (
    "max_failure_rate",
    "min_finished",
    "device_timeout_minutes",
    "retries",
    "rate_per_minute",
    "rate_burst",
)


def split_names(text: str) -> list[str]:
    """Names typed separated by commas, spaces or lines, each once, in order."""
    return list(dict.fromkeys(n for n in _SPLIT_RE.split(text.strip()) if n))


def _number(text: str) -> object:
    """An int or float when the text is one; otherwise the text, for the service to refuse."""
    text = text.strip()
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def _numbers(
    form: Mapping[str, str], into: dict[str, Any], keys: Sequence[str], prefix: str = ""
) -> None:
    for key in keys:
        raw = form.get(prefix + key, "").strip()
        if raw:
            into[key] = _number(raw)


def selection_document(form: Mapping[str, str]) -> dict[str, Any]:
    selection: dict[str, Any] = {}
    if form.get("select_all"):
        selection["all"] = True
    for key in ("groups", "tags", "hardware", "devices"):
        names = split_names(form.get(f"select_{key}", ""))
        if names:
            selection[key] = names
    return selection


def _policy(form: Any) -> dict[str, Any]:
    policy: dict[str, Any] = {}
    if form.get("on_breach"):
        policy["on_breach"] = form.get("on_breach")
    _numbers(form, policy, POLICY_NUMBERS)
    days = [d for d in form.getlist("window_days") if d]
    if form.get("window_start", "").strip() or form.get("window_end", "").strip():
        window: dict[str, Any] = {
            "start": form.get("window_start", "").strip(),
            "end": form.get("window_end", "").strip(),
        }
        if days:
            window["days"] = days
        if form.get("window_timezone", "").strip():
            window["timezone"] = form.get("window_timezone", "").strip()
        policy["window"] = window
    metric = form.get("gate_metric", "").strip()
    if metric:
        gate: dict[str, Any] = {"metric": metric}
        for key in ("statistic", "better"):
            if form.get(f"gate_{key}"):
                gate[key] = form.get(f"gate_{key}")
        _numbers(form, gate, ("max_relative_change", "alpha", "min_devices"), "gate_")
        gate["required"] = bool(form.get("gate_required"))
        policy["telemetry_gates"] = [gate]
    if form.get("strategy") == "ab" and form.get("promotion_mode") == "auto":
        promotion: dict[str, Any] = {"mode": "auto"}
        for key in ("metric", "statistic", "better"):
            if form.get(f"promotion_{key}", "").strip():
                promotion[key] = form.get(f"promotion_{key}", "").strip()
        _numbers(form, promotion, ("min_relative_change",), "promotion_")
        policy["promotion"] = promotion
    return policy


def create_document(form: Any) -> dict[str, Any]:
    """The API's create body from the form's fields (``form`` is a QueryDict)."""
    strategy = form.get("strategy", "phased")
    body: dict[str, Any] = {
        "model": form.get("model", ""),
        "strategy": strategy,
        "description": form.get("description", ""),
        "selection": selection_document(form),
        "policy": _policy(form),
        "schedule": form.get("then") in ("schedule", "start"),
    }
    if strategy == "ab":
        arms = []
        for i in range(ARM_ROWS):
            name = form.get(f"arm_name_{i}", "").strip()
            version = form.get(f"arm_version_{i}", "").strip()
            if not (name or version):
                continue
            arm: dict[str, Any] = {"name": name, "version": version}
            weight = form.get(f"arm_weight_{i}", "").strip()
            if weight:
                arm["weight"] = _number(weight)
            if form.get("baseline") == str(i):
                arm["baseline"] = True
            arms.append(arm)
        body["arms"] = arms
    else:
        body["version"] = form.get("version", "").strip()
    stages = []
    for i in range(STAGE_ROWS):
        percent = form.get(f"stage_percent_{i}", "").strip()
        if not percent:
            continue
        stage: dict[str, Any] = {"percent": _number(percent)}
        bake = form.get(f"stage_bake_{i}", "").strip()
        if bake:
            stage["bake_minutes"] = _number(bake)
        stages.append(stage)
    if stages:
        body["stages"] = stages
    return body


def form_rows(form: Any) -> dict[str, Any]:
    """The repeated rows (arms, stages) and checkboxes with what the operator typed."""
    fresh = not form
    return {
        "arm_rows": [
            {
                "i": i,
                "name": ARM_DEFAULTS[i][0] if fresh else form.get(f"arm_name_{i}", ""),
                "version": ARM_DEFAULTS[i][1] if fresh else form.get(f"arm_version_{i}", ""),
                "weight": ARM_DEFAULTS[i][2] if fresh else form.get(f"arm_weight_{i}", ""),
                "baseline": (i == 0) if fresh else form.get("baseline") == str(i),
            }
            for i in range(ARM_ROWS)
        ],
        "stage_rows": [
            {
                "i": i,
                "number": i + 1,
                "percent": STAGE_DEFAULTS[i][0] if fresh else form.get(f"stage_percent_{i}", ""),
                "bake": STAGE_DEFAULTS[i][1] if fresh else form.get(f"stage_bake_{i}", ""),
            }
            for i in range(STAGE_ROWS)
        ],
        "days": [(d, d in form.getlist("window_days")) if form else (d, False) for d in DAYS],
        "statistics": STATISTICS,
    }


# --- the live preview ------------------------------------------------------------------


@dataclass
class Preview:
    targets: int = 0
    by_hardware: list[tuple[str, int]] = field(default_factory=list)
    # (version, devices that can take it: a build exists for their hardware)
    versions: list[tuple[str, int]] = field(default_factory=list)
    error: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "targets": self.targets,
            "by_hardware": [{"hardware": h, "devices": n} for h, n in self.by_hardware],
            "versions": [{"version": v, "can_take": n} for v, n in self.versions],
            "error": self.error,
            "text": self.text(),
        }

    def text(self) -> str:
        if self.error:
            return self.error
        hardware = ", ".join(f"{h} {n}" for h, n in self.by_hardware)
        out = f"Targets {self.targets} enabled device{'s' if self.targets != 1 else ''}"
        out += f" ({hardware})." if hardware else "."
        for version, n in self.versions:
            out += f" {n} of them can take {version}"
            out += "." if n == self.targets else " (no build for the others' hardware)."
        return out


def selection_preview(form: Any) -> Preview:
    """What the form's selection targets now, and how many of those devices have a build
    of each chosen version for their hardware (three queries, whatever the fleet size)."""
    try:
        selection = Selection.from_dict(selection_document(form), new=True)
        selection_exists(selection)
    except ServiceError as exc:
        return Preview(error=exc.detail)
    by_hardware = list(
        selection_devices(selection)
        .values_list("hardware")
        .annotate(n=Count("pk"))
        .order_by("-n", "hardware")
    )
    if form.get("strategy") == "ab":
        versions = [form.get(f"arm_version_{i}", "").strip() for i in range(ARM_ROWS)]
    else:
        versions = [form.get("version", "").strip()]
    versions = list(dict.fromkeys(v for v in versions if v))
    builds: dict[str, set[str]] = {v: set() for v in versions}
    for version, hardware in Artifact.objects.filter(
        model__name=form.get("model", ""), version__in=versions
    ).values_list("version", "hardware"):
        builds[version].add(hardware)
    return Preview(
        targets=sum(n for _, n in by_hardware),
        by_hardware=by_hardware,
        versions=[(v, sum(n for hw, n in by_hardware if hw in builds[v])) for v in versions],
    )
