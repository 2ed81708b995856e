"""Reads of the model registry."""

from datetime import datetime

from django.db.models import Max, Q, QuerySet

from device_agent.protocol.errors import ErrorCode
from fleet.errors import ServiceError
from fleet.hooks import LiveRollout
from fleet.identifiers import PHASED_ARM
from ota.models import Artifact, Model, Rollout, RolloutStatus, RolloutStrategy, TufMetadata


def model_get(name: str) -> Model:
    """The registered model, or an ``unknown_model`` refusal."""
    model = Model.objects.filter(name=name).first()
    if model is None:
        raise ServiceError(ErrorCode.UNKNOWN_MODEL, f"model {name!r} is not registered")
    return model


def model_list() -> QuerySet[Model]:
    return Model.objects.prefetch_related("release_keys").order_by("name")


def artifact_list(*, model: Model, version: str | None = None) -> QuerySet[Artifact]:
    qs = Artifact.objects.filter(model=model).select_related("published_by", "model")
    if version is not None:
        qs = qs.filter(version=version)
    return qs.order_by("-release_counter", "hardware")


def tuf_metadata_bytes(role: str, version: int | None) -> bytes | None:
    qs = TufMetadata.objects.filter(role=role)
    row = qs.filter(version=version).first() if version else qs.order_by("-version").first()
    return bytes(row.data) if row else None


def tuf_root() -> bytes | None:
    """The newest TUF root metadata, None before the repository is initialised."""
    return tuf_metadata_bytes("root", None)


def tuf_expiries() -> list[tuple[str, datetime]]:
    """(role, expires) of each role's newest TUF metadata."""
    newest = TufMetadata.objects.values("role").annotate(version=Max("version"))
    condition = Q()
    for row in newest:
        condition |= Q(role=row["role"], version=row["version"])
    if not condition:
        return []
    rows = TufMetadata.objects.filter(condition).values_list("role", "expires").order_by("role")
    return list(rows)


def live_rollouts() -> dict[str, LiveRollout]:
    """The running and paused rollouts by public id, with their model and arm names (the
    bridge labels model histograms with these alone, so the label stays a small set)."""
    rows = Rollout.objects.filter(
        status__in=[RolloutStatus.RUNNING, RolloutStatus.PAUSED]
    ).values_list("pk", "strategy", "arms", "model__name")
    live = {}
    for pk, strategy, arms, model in rows:
        names = {a["name"] for a in arms if isinstance(a, dict) and isinstance(a.get("name"), str)}
        if strategy == RolloutStrategy.PHASED:
            names = {PHASED_ARM}
        live[f"r-{pk}"] = LiveRollout(model=model, arms=frozenset(names))
    return live


def model_names() -> list[str]:
    return list(Model.objects.values_list("name", flat=True))


def artifact_for_target(target_path: str, sha256: str | None) -> Artifact | None:
    qs = Artifact.objects.filter(target_path=target_path)
    if sha256 is not None:
        qs = qs.filter(sha256=sha256)
    return qs.first()


def artifact_for_device(*, model_name: str, version: str, hardware: str) -> Artifact:
    """The variant of ``model_name`` ``version`` built for ``hardware``, or a refusal."""
    model = model_get(model_name)
    artifact = Artifact.objects.filter(model=model, version=version, hardware=hardware).first()
    if artifact is not None:
        return artifact
    if Artifact.objects.filter(model=model, version=version).exists():
        raise ServiceError(
            ErrorCode.HW_MISMATCH, f"{model_name} {version} has no variant for {hardware}"
        )
    raise ServiceError(ErrorCode.NOT_FOUND, f"{model_name} {version} is not published")
