"""What the admin's device and model pages show, read in a bounded number of queries.

They live with the rollouts (not in ``fleet``) because they show the rollouts that
touched a device and the devices running each version of a model.
"""

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import Max

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


def _desired_versions(device: Device) -> dict[str, str]:
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


def device_page(device: Device) -> dict[str, Any]:
    """The device page's figures: seven queries, whatever its history."""
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
    touched = list(
        RolloutDevice.objects.filter(device=device)
        .select_related("rollout__model", "artifact")
        .order_by("-rollout_id")[:ROLLOUTS]
    )
    return {
        "installed": installed,
        "history": [
            HistoryRow(ts, received, model, phase, code, detail, rid, rollout_pk(rid))
            for ts, received, model, phase, code, detail, rid in events
        ],
        "touched": touched,
        "certificates": list(
            DeviceCertificate.objects.filter(device=device).order_by("-issued_at")
        ),
        "tags": sorted(device.tags.values_list("name", flat=True)),
        "groups": sorted(device.groups.values_list("name", flat=True)),
        "tag_choices": list(
            Tag.objects.order_by("name").values_list("name", flat=True)[:LABEL_CHOICES]
        ),
        "group_choices": list(
            Group.objects.order_by("name").values_list("name", flat=True)[:LABEL_CHOICES]
        ),
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
