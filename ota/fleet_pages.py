"""What the admin's device and model pages show, read in a bounded number of queries.

They live with the rollouts (not in ``fleet``) because they show the rollouts that
touched a device and the devices running each version of a model.
"""

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import Max, OuterRef, QuerySet, Subquery, Value

from device_agent.protocol.messages import Phase
from fleet.models import DesiredState, Device, DeviceCertificate, DeviceEvent, Group, Tag
from fleet.selectors import installed_counts
from ota.models import Artifact, Model, ReleaseKey, Rollout, RolloutDevice
from ota.rollout_selectors import rollout_pk

HISTORY = 50
ROLLOUTS = 20
LABEL_CHOICES = 200
FAILED_PHASES = {Phase.FAILED, Phase.REJECTED, Phase.ROLLED_BACK}


@dataclass
class InstalledRow:
    name: str
    reported: str  # version the device reports, "" when it reports none
    slot: str
    status: str
    release_counter: str
    since: datetime | None
    desired: str  # version the director asks for, "" when none

    @property
    def in_step(self) -> bool:
        return bool(self.desired) and self.desired == self.reported


def _reported_entries(reported: object) -> dict[str, dict[str, Any]]:
    models = reported.get("models") if isinstance(reported, dict) else None
    out: dict[str, dict[str, Any]] = {}
    for entry in models if isinstance(models, list) else ():
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            out[entry["name"]] = entry
    return out


def page_devices() -> QuerySet[Device]:
    """Devices as ``device_page`` reads them: each with the payload of its desired state
    (once the director has written one), in the same query."""
    return Device.objects.annotate(
        desired_payload=Subquery(
            DesiredState.objects.filter(device=OuterRef("pk"), seq__gt=0).values("payload")[:1]
        )
    )


def _desired_versions(device: Device) -> dict[str, str]:
    if hasattr(device, "desired_payload"):
        payload = device.desired_payload
    else:
        row = DesiredState.objects.filter(device=device).only("payload", "seq").first()
        payload = row.payload if row is not None and row.seq else {}
    models = payload.get("models") if isinstance(payload, dict) else None
    return {
        str(m["name"]): str(m.get("version", ""))
        for m in (models if isinstance(models, list) else ())
        if isinstance(m, dict) and isinstance(m.get("name"), str)
    }


@dataclass
class HistoryRow:
    at: datetime
    received_at: datetime
    model: str
    phase: str
    code: str
    detail: str
    rollout_id: str
    rollout_pk: int | None

    @property
    def failed(self) -> bool:
        return self.phase in FAILED_PHASES


# What a row of "Rollouts that touched it" shows, read as plain values.
TOUCHED_COLUMNS = (
    "rollout_id",
    "rollout__status",
    "rollout__model__name",
    "arm",
    "artifact__version",
    "state",
    "last_code",
    "attempts",
)
CERTIFICATE_COLUMNS = ("serial", "issued_at", "not_after", "revoked_at")


def device_page(device: Device, *, label_choices: bool = True) -> dict[str, Any]:
    """The device page's figures: five queries whatever its history (``device`` read
    through ``page_devices``); ``label_choices`` adds the tag and group names offered when
    editing them, in the same query as the device's own."""
    events = list(
        DeviceEvent.objects.filter(device=device)
        .order_by("-received_at", "-pk")
        .values_list("ts", "received_at", "model", "phase", "code", "detail", "rollout_id")[
            :HISTORY
        ]
    )
    # When each model's installed version was committed: its newest "committed" event.
    since = dict(
        DeviceEvent.objects.filter(device=device, phase=Phase.COMMITTED)
        .values_list("model")
        .annotate(at=Max("ts"))
        .order_by()
    )
    reported = _reported_entries(device.reported)
    desired = _desired_versions(device)
    installed = [
        InstalledRow(
            name=name,
            reported=str(reported.get(name, {}).get("version", "")),
            slot=str(reported.get(name, {}).get("slot", "")),
            status=str(reported.get(name, {}).get("status", "")),
            release_counter=str(reported.get(name, {}).get("release_counter", "")),
            since=since.get(name) if name in reported else None,
            desired=desired.get(name, ""),
        )
        for name in sorted(set(reported) | set(desired))
    ]
    # Its tags and groups, and the names offered when editing them, in one query.
    kinds = [
        Tag.objects.filter(devices=device).values_list(Value("tag"), "name"),
        Group.objects.filter(devices=device).values_list(Value("group"), "name"),
    ]
    if label_choices:
        first_tags = Tag.objects.order_by("name").values("pk")[:LABEL_CHOICES]
        first_groups = Group.objects.order_by("name").values("pk")[:LABEL_CHOICES]
        kinds += [
            Tag.objects.filter(pk__in=first_tags).values_list(Value("tag_choice"), "name"),
            Group.objects.filter(pk__in=first_groups).values_list(Value("group_choice"), "name"),
        ]
    labels: dict[str, list[str]] = {"tag": [], "group": [], "tag_choice": [], "group_choice": []}
    for kind, name in kinds[0].union(*kinds[1:], all=True):
        labels[kind].append(name)
    return {
        "installed": installed,
        "history": [
            HistoryRow(ts, received, model, phase, code, detail, rid, rollout_pk(rid))
            for ts, received, model, phase, code, detail, rid in events
        ],
        "touched": list(
            RolloutDevice.objects.filter(device=device)
            .order_by("-rollout_id")
            .values_list(*TOUCHED_COLUMNS)[:ROLLOUTS]
        ),
        "certificates": list(
            DeviceCertificate.objects.filter(device=device)
            .order_by("-issued_at")
            .values_list(*CERTIFICATE_COLUMNS)
        ),
        "tags": sorted(labels["tag"]),
        "groups": sorted(labels["group"]),
        "tag_choices": sorted(labels["tag_choice"]),
        "group_choices": sorted(labels["group_choice"]),
    }


# --- the model page ---------------------------------------------------------------------


@dataclass
class VersionRow:
    version: str
    release_counter: int
    variants: list[Artifact]
    devices: int


def model_page(model: Model) -> dict[str, Any]:
    """Versions x hardware variants, devices per installed version, release keys and the
    newest rollouts: five queries (versions counted by installed_counts)."""
    variants = list(
        Artifact.objects.filter(model=model)
        .select_related("published_by")
        .order_by("-release_counter", "hardware")
    )
    running: Counter[str] = Counter(
        {version: n for (name, version), n in installed_counts()[0].items() if name == model.name}
    )
    versions: dict[str, VersionRow] = {}
    for variant in variants:
        row = versions.setdefault(
            variant.version,
            VersionRow(
                variant.version, variant.release_counter, [], running.get(variant.version, 0)
            ),
        )
        row.variants.append(variant)
    unpublished = sorted(v for v in running if v not in versions)
    keys = list(ReleaseKey.objects.filter(model=model).order_by("created_at"))
    hardware = sorted({v.hardware for v in variants})
    return {
        "versions": list(versions.values()),
        "hardware": hardware,
        "unpublished": [(v, running[v]) for v in unpublished],
        "keys": keys,
        "device_total": sum(running.values()),
        "rollouts": list(Rollout.objects.filter(model=model).order_by("-pk")[:10]),
    }
