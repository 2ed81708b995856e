from django.conf import settings
from django.db import models

from fleet.identifiers import IdentifierValidator


class Model(models.Model):
    """A model name registered for publishing, e.g. ``kws``.

    It is also the name of the TUF role that top-level targets delegates
    ``models/<name>/*/*/*`` to, signed by the model's release keys.
    """

    name = models.CharField(
        max_length=64, unique=True, validators=[IdentifierValidator("MODEL_NAME")]
    )
    description = models.TextField(blank=True)
    threshold = models.PositiveSmallIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ReleaseKey(models.Model):
    """The public half of a CI release key allowed to sign a model's targets metadata."""

    keyid = models.CharField(max_length=64, unique=True)
    public_key = models.JSONField(help_text="TUF key dict (public part only)")
    model = models.ForeignKey(Model, on_delete=models.PROTECT, related_name="release_keys")
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_reason = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"{self.model.name}:{self.keyid[:12]}"


class Artifact(models.Model):
    """One published, signed variant of a model version for one hardware target."""

    model = models.ForeignKey(Model, on_delete=models.PROTECT, related_name="artifacts")
    version = models.CharField(max_length=64, validators=[IdentifierValidator("VERSION")])
    hardware = models.CharField(max_length=64, validators=[IdentifierValidator("HARDWARE")])
    format = models.CharField(max_length=32, validators=[IdentifierValidator("ARTIFACT_FORMAT")])
    release_counter = models.PositiveBigIntegerField()
    floor = models.PositiveBigIntegerField(default=0)
    target_path = models.CharField(max_length=400, unique=True)
    sha256 = models.CharField(max_length=64)
    length = models.PositiveBigIntegerField()
    storage_key = models.CharField(max_length=500)
    facts = models.JSONField(default=dict, blank=True)
    published_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    published_at = models.DateTimeField(auto_now_add=True)
    metadata_version = models.PositiveIntegerField(
        help_text="version of the model's targets metadata that first listed this artifact"
    )

    class Meta:
        ordering = ["model", "-release_counter", "hardware"]
        constraints = [
            models.UniqueConstraint(
                fields=["model", "version", "hardware"], name="artifact_unique_variant"
            ),
        ]
        indexes = [models.Index(fields=["model", "release_counter"])]

    def __str__(self) -> str:
        return f"{self.model.name} {self.version} ({self.hardware})"


class TufMetadata(models.Model):
    """One signed version of one TUF role, exactly as served under ``/tuf/``.

    Stored in the database so a publish changes artifact rows and metadata in one
    transaction; rows are never updated, only added.
    """

    role = models.CharField(max_length=64)
    version = models.PositiveIntegerField()
    data = models.BinaryField()
    expires = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["role", "version"], name="tuf_role_version"),
        ]

    def __str__(self) -> str:
        return f"{self.version}.{self.role}.json"


class RepositoryLock(models.Model):
    """A single row locked by every metadata write so snapshot versions never race."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    initialized_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return "TUF repository"


# --- rollouts (docs/rollouts.md) ------------------------------------------------------------


class RolloutStatus(models.TextChoices):
    """A rollout's lifecycle; only ``ota/rollouts.py`` moves a rollout between these."""

    DRAFT = "draft"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    # Every stage finished, but more devices failed than the install gate allows (the
    # operator resumed past the failures): never called plain "completed".
    COMPLETED_WITH_FAILURES = "completed_with_failures", "Completed with failures"
    ABORTED = "aborted"
    ROLLED_BACK = "rolled_back"


class RolloutStrategy(models.TextChoices):
    PHASED = "phased"
    AB = "ab", "A/B"


class Rollout(models.Model):
    """Deploys one model to a selection of devices, phased or as an A/B experiment.

    Devices and other models see it by its public id ``r-<pk>``, the ``rollout_id`` of
    desired-state entries, update events and telemetry. ``stages``, ``arms``, ``selection``
    and ``policy`` are JSON validated by ``ota/rollout_config.py``; a phased rollout has one
    arm, ``main``. The engine's bookkeeping (stage, bake clock, last gate figures) lives
    here too so one row lock orders every evaluation; ``wake_at`` keeps a paced rollout to
    one pending wake-up however many evaluations device events trigger.
    """

    model = models.ForeignKey(Model, on_delete=models.PROTECT, related_name="rollouts")
    strategy = models.CharField(max_length=8, choices=RolloutStrategy.choices)
    version = models.CharField(
        max_length=64, blank=True, help_text="phased: the version deployed; A/B: the winner"
    )
    description = models.TextField(blank=True)
    selection = models.JSONField(default=dict)
    stages = models.JSONField(default=list, help_text="[{percent, bake_minutes}]")
    arms = models.JSONField(default=list, help_text="[{name, version, weight, baseline}]")
    policy = models.JSONField(default=dict)
    status = models.CharField(
        max_length=32, choices=RolloutStatus.choices, default=RolloutStatus.DRAFT, db_index=True
    )
    current_stage = models.PositiveSmallIntegerField(default=0)
    stage_bounds = models.JSONField(
        default=list,
        blank=True,
        help_text="per stage, the highest device bucket it takes (set when it starts)",
    )
    stage_started_at = models.DateTimeField(null=True, blank=True)
    stage_settled_at = models.DateTimeField(
        null=True, blank=True, help_text="when every device of the stage finished: bake starts"
    )
    promoted_arm = models.CharField(max_length=64, blank=True)
    starts_at = models.DateTimeField(null=True, blank=True)
    gate_figures = models.JSONField(default=dict, blank=True, help_text="last gate evaluation")
    gates_since = models.DateTimeField(
        null=True, blank=True, help_text="the failure gate counts devices finished since (resume)"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    evaluated_at = models.DateTimeField(null=True, blank=True)
    wake_at = models.DateTimeField(
        null=True, blank=True, help_text="when the evaluation the pace asked for is due"
    )
    issued_count = models.PositiveIntegerField(
        default=0,
        help_text="envelopes the engine issued for it (notifications, retries, roll-backs)",
    )
    tracked_at = models.DateTimeField(
        null=True, blank=True, help_text="when tracking last read every device in flight"
    )

    class Meta:
        ordering = ["-created_at"]
        permissions = [
            ("start_rollout", "Can start a rollout or schedule its start time"),
            ("control_rollout", "Can pause, resume, abort and promote a rollout"),
        ]

    def __str__(self) -> str:
        return f"{self.public_id} {self.model.name}"

    @property
    def public_id(self) -> str:
        return f"r-{self.pk}"


class RolloutDeviceState(models.TextChoices):
    """Where one device is in a rollout (the engine's own small state machine)."""

    PENDING = "pending"
    NOTIFIED = "notified"
    IN_PROGRESS = "in_progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    SKIPPED = "skipped"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"
    KEPT = "kept", "kept (cannot be rolled back)"


# States of a device the engine waits to hear from: tracked for its events and reports.
IN_FLIGHT = (
    RolloutDeviceState.NOTIFIED,
    RolloutDeviceState.IN_PROGRESS,
    RolloutDeviceState.ROLLING_BACK,
)
# States whose device's events and reports are news to the rollout (ota.tracking): those in
# flight, and a timed-out one, which may come back and finish (a success replaces the
# timeout).
TRACKED = (*IN_FLIGHT, RolloutDeviceState.TIMED_OUT)


class RolloutDevice(models.Model):
    """One device of a rollout: its sticky cohort, what it is sent, and how it went.

    Rows are made when the rollout starts, one per selected device. ``previous_artifact``
    is the device's desired entry for the model before its first notification: what an
    abort re-issues. ``desired_seq`` is the seq of the last envelope this rollout issued
    to it; events and reports older than that belong to an earlier attempt.
    """

    # Every evaluation rewrites rows of a running rollout (their state is indexed, so each
    # update adds an entry to every index): no index of their own for ``rollout`` (the
    # unique constraint's leads with it) or the artifacts (only a deletion of an artifact
    # looks rows up by them, and PROTECT makes that rare).
    rollout = models.ForeignKey(
        Rollout, on_delete=models.CASCADE, related_name="devices", db_index=False
    )
    device = models.ForeignKey(
        "fleet.Device", on_delete=models.CASCADE, related_name="rollout_devices"
    )
    arm = models.CharField(max_length=64)
    bucket = models.FloatField(help_text="sha256(rollout_id + device_id) in [0, 1)")
    artifact = models.ForeignKey(
        Artifact, null=True, blank=True, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    previous_artifact = models.ForeignKey(
        Artifact, null=True, blank=True, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    state = models.CharField(
        max_length=16, choices=RolloutDeviceState.choices, default=RolloutDeviceState.PENDING
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    rollback_attempts = models.PositiveSmallIntegerField(default=0)
    desired_seq = models.PositiveBigIntegerField(default=0)
    notified_at = models.DateTimeField(null=True, blank=True)
    phase_at = models.DateTimeField(
        null=True, blank=True, help_text="when the last phase change was seen (timeouts)"
    )
    last_phase = models.CharField(max_length=16, blank=True)
    last_code = models.CharField(max_length=32, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["rollout", "bucket"]
        constraints = [
            models.UniqueConstraint(fields=["rollout", "device"], name="rolloutdevice_unique"),
        ]
        indexes = [
            models.Index(fields=["rollout", "state", "bucket"], name="rolloutdevice_state"),
            models.Index(fields=["rollout", "notified_at"], name="rolloutdevice_notified"),
            # Tracking news (ota.tracking) looks up the tracked rows of each device that
            # reports: through this, not every row the device ever had.
            models.Index(
                fields=["device"],
                condition=models.Q(state__in=TRACKED),
                name="rolloutdevice_tracked",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.rollout_id}:{self.device_id} {self.state}"


class TrackingNews(models.Model):
    """A device in flight in a rollout stored an update event or a state report since the
    rollout's last evaluation: the next one reads that device's row (and deletes this),
    not every row in flight (``ota.engine._track``, ``ota.tracking``).

    Written in the same transaction as the event or report (``fleet.reports``), so an
    evaluation that sees the one sees the other. Plain keys, no foreign keys: a lookup of
    the rollout and the device per row would cost more than the row; rows of a rollout no
    longer evaluated are pruned by the beat.
    """

    rollout_id = models.BigIntegerField()
    device_id = models.BigIntegerField()

    def __str__(self) -> str:
        return f"r-{self.rollout_id}:{self.device_id}"


class RolloutAuditEvent(models.Model):
    """Who changed a rollout, when and why, with the gate figures behind the decision.

    One row per status change (``from_status`` != ``to_status``) and per stage advance or
    promotion (same status); ``actor`` is empty and ``actor_name`` ``engine`` for the
    engine's own decisions.
    """

    rollout = models.ForeignKey(Rollout, on_delete=models.CASCADE, related_name="audit_events")
    from_status = models.CharField(max_length=32, blank=True)
    to_status = models.CharField(max_length=32)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_name = models.CharField(max_length=150)
    reason = models.TextField(blank=True)
    figures = models.JSONField(default=dict, blank=True)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["rollout", "at", "pk"]

    def __str__(self) -> str:
        return f"{self.rollout_id}: {self.from_status or '-'} -> {self.to_status}"
