from django.conf import settings
from django.db import models


class Model(models.Model):
    """A model name registered for publishing, e.g. ``kws``.

    It is also the name of the TUF role that top-level targets delegates
    ``models/<name>/*/*/*`` to, signed by the model's release keys.
    """

    name = models.CharField(max_length=64, unique=True)
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
    version = models.CharField(max_length=64)
    hardware = models.CharField(max_length=64)
    format = models.CharField(max_length=32)
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
