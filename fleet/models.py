from django.conf import settings
from django.db import models

from device_agent.protocol.messages import FAILURE_PHASES, Phase
from fleet.identifiers import IdentifierListValidator, IdentifierValidator

# Update events that say an update did not work (a device-side roll-back included).
UPDATE_FAILURE_PHASES = tuple(str(p) for p in (*sorted(FAILURE_PHASES), Phase.ROLLED_BACK))


class ApiToken(models.Model):
    """A bearer token for CI or a script; only a hash is stored.

    It acts as its user, limited to its scopes and, for the scopes that act on a model,
    to ``model_names`` (``*``: every model); see fleet/auth.py and docs/security.md.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100)
    lookup = models.CharField(max_length=16, unique=True)
    secret_hash = models.CharField(max_length=64)
    scopes = models.JSONField(
        default=list, blank=True, help_text="publish, rollouts:create, rollouts:operate, fleet:read"
    )
    model_names = models.JSONField(
        default=list, blank=True, help_text="models the token may act on; * for every model"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="empty: never")
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.user})"


# The admin's forms check identifiers with the API's rules (device_agent/protocol/identifiers.py).
DEVICE_ID_VALIDATOR = IdentifierValidator("DEVICE_ID")


class Tag(models.Model):
    """A free-form label on devices (``site-berlin``, ``camera``), used in selections."""

    name = models.CharField(
        max_length=64, unique=True, validators=[IdentifierValidator("TAG_NAME")]
    )

    def __str__(self) -> str:
        return self.name


class Group(models.Model):
    """A static group: an operator-chosen set of devices."""

    name = models.CharField(
        max_length=100, unique=True, validators=[IdentifierValidator("GROUP_NAME")]
    )
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class DynamicGroup(models.Model):
    """A saved selection (hardware and tags), evaluated whenever it is used."""

    name = models.CharField(
        max_length=100, unique=True, validators=[IdentifierValidator("GROUP_NAME")]
    )
    description = models.TextField(blank=True)
    hardware = models.JSONField(
        default=list,
        blank=True,
        help_text="any of these; empty: any",
        validators=[IdentifierListValidator("HARDWARE")],
    )
    tags = models.JSONField(
        default=list,
        blank=True,
        help_text="all of these tags",
        validators=[IdentifierListValidator("TAG_NAME")],
    )
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class DeviceQuerySet(models.QuerySet["Device"]):
    def online(self) -> "DeviceQuerySet":
        return self.filter(online=True)

    def enabled(self) -> "DeviceQuerySet":
        return self.filter(revoked_at__isnull=True)


class Device(models.Model):
    """An enrolled edge device, identified on MQTT by its client certificate's CN."""

    device_id = models.CharField(max_length=64, unique=True, validators=[DEVICE_ID_VALIDATOR])
    hardware = models.CharField(
        max_length=64, db_index=True, validators=[IdentifierValidator("HARDWARE")]
    )
    tags = models.ManyToManyField(Tag, blank=True, related_name="devices")
    groups = models.ManyToManyField(Group, blank=True, related_name="devices")
    agent_version = models.CharField(max_length=64, blank=True)
    reported = models.JSONField(
        default=dict, blank=True, help_text="the last reported state (models, slots, statuses)"
    )
    reported_seq = models.PositiveBigIntegerField(default=0, help_text="last_seq it reported")
    online = models.BooleanField(default=False, db_index=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    enrolled_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = DeviceQuerySet.as_manager()

    class Meta:
        ordering = ["device_id"]
        indexes = [models.Index(fields=["hardware", "device_id"])]

    def __str__(self) -> str:
        return self.device_id


class DeviceCertificate(models.Model):
    """An X.509 client certificate the fleet CA issued; revoked ones go into the CRL."""

    serial = models.CharField(max_length=40, unique=True, help_text="hex")
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="certificates")
    not_after = models.DateTimeField()
    issued_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.device_id}:{self.serial}"


class EnrollmentToken(models.Model):
    """A one-time, expiring secret a device presents with its CSR; only a hash is kept."""

    lookup = models.CharField(max_length=16, unique=True)
    secret_hash = models.CharField(max_length=64)
    expires_at = models.DateTimeField()
    hardware = models.CharField(
        max_length=64,
        blank=True,
        help_text="empty: any",
        validators=[IdentifierValidator("HARDWARE")],
    )
    group = models.ForeignKey(Group, null=True, blank=True, on_delete=models.SET_NULL)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    used_at = models.DateTimeField(null=True, blank=True)
    device = models.OneToOneField(
        Device, null=True, blank=True, on_delete=models.SET_NULL, related_name="enrollment"
    )

    def __str__(self) -> str:
        return f"enrollment {self.lookup}"


class DeviceEvent(models.Model):
    """An update progress event a device reported (docs/protocol.md, ``events``)."""

    # No index of its own: the table's full indexes lead with the device, and every event
    # stored would add an entry to another; only failures are indexed by time (below).
    device = models.ForeignKey(
        Device, on_delete=models.CASCADE, related_name="events", db_index=False
    )
    seq = models.PositiveBigIntegerField()
    rollout_id = models.CharField(max_length=64, blank=True)
    model = models.CharField(max_length=64, blank=True)
    phase = models.CharField(max_length=16)
    progress = models.PositiveSmallIntegerField(null=True, blank=True)
    code = models.CharField(max_length=32, blank=True)
    detail = models.CharField(max_length=1024, blank=True)
    ts = models.DateTimeField(help_text="when the device says it happened")
    received_at = models.DateTimeField(auto_now_add=True)
    digest = models.CharField(
        max_length=64,
        default="",
        help_text="sha256 of the event as sent: a redelivery is stored once",
    )
    event_id = models.CharField(
        max_length=32,
        blank=True,
        default="",
        help_text="the agent's id of the event (it sends it until acked): stored once",
    )

    class Meta:
        ordering = ["-received_at"]
        indexes = [
            models.Index(fields=["device", "-received_at"]),
            # The last day's failures (the overview's chart, the devices list's filter)
            # without reading every event; partial, so other events add no entry.
            models.Index(
                fields=["received_at"],
                condition=models.Q(phase__in=UPDATE_FAILURE_PHASES),
                name="deviceevent_failure_time",
            ),
        ]
        constraints = [
            models.UniqueConstraint(fields=["device", "digest"], name="deviceevent_unique_report"),
            # Partial: events of agents that send no id take no entry.
            models.UniqueConstraint(
                fields=["device", "event_id"],
                condition=~models.Q(event_id=""),
                name="deviceevent_unique_event_id",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.device_id} {self.phase}"


class DesiredState(models.Model):
    """The director's signed desired state for one device, and how far it was published.

    The director writes ``seq``/``envelope`` in the same transaction as the change that
    caused them, and queues the row in ``DesiredOutbox``; the bridge publishes the rows
    queued there (an outbox, so nothing is lost when the bridge or broker is down) and
    records ``published_seq`` once the broker acknowledged one.

    Nothing either of them writes here is indexed (``expires_at`` included), so both
    writes are heap-only updates: a new version of the row on the same page (the table
    has fill factor 50) and no index entry. Rows that are behind are found through the
    narrow ``DesiredOutbox`` instead of an index on this table.
    """

    device = models.OneToOneField(Device, on_delete=models.CASCADE, related_name="desired")
    seq = models.PositiveBigIntegerField(default=0)
    payload = models.JSONField(default=dict)
    envelope = models.BinaryField(default=b"")
    issued_at = models.DateTimeField(null=True)
    # Not indexed: the hourly re-signing walks the rows in device order (desired_reissue_expiring).
    expires_at = models.DateTimeField(null=True)
    published_seq = models.PositiveBigIntegerField(default=0)
    published_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.device_id} seq {self.seq}"


class DesiredOutbox(models.Model):
    """A desired state whose ``seq`` the broker has not acknowledged yet: the bridge's queue.

    Written in the director's transaction with the envelope it queues (the seq moves on
    when the row is signed again before it went out); deleted by the bridge once the
    broker acknowledged that seq, not a later one.
    """

    # No foreign key constraint in the database: checking it at commit locked each queued
    # row's DesiredState (FOR KEY SHARE) and cost the director a quarter of its write. The
    # ORM still deletes the queue row with its desired state, and the bridge drops a queued
    # row whose desired state is gone.
    desired = models.OneToOneField(
        DesiredState,
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="outbox",
        db_constraint=False,
    )
    seq = models.PositiveBigIntegerField()

    def __str__(self) -> str:
        return f"{self.desired_id} seq {self.seq}"


class AuditEvent(models.Model):
    """Who did what to the fleet, when and why: publishes, key and token changes,
    revocations (rollouts keep their own trail, ``ota.RolloutAuditEvent``). Only added."""

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_name = models.CharField(max_length=150)
    action = models.CharField(max_length=64, db_index=True)
    target = models.CharField(max_length=200)
    reason = models.TextField(blank=True)

    class Meta:
        ordering = ["-at", "-pk"]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.actor_name} {self.action} {self.target}"
