from rest_framework import serializers

from ota.models import Artifact, Model, ReleaseKey


class ReleaseKeySerializer(serializers.ModelSerializer[ReleaseKey]):
    model = serializers.CharField(source="model.name", read_only=True)

    class Meta:
        model = ReleaseKey
        fields = ["keyid", "model", "public_key", "created_at", "revoked_at", "revoked_reason"]


class ModelSerializer(serializers.ModelSerializer[Model]):
    release_keys = ReleaseKeySerializer(many=True, read_only=True)

    class Meta:
        model = Model
        fields = ["name", "description", "threshold", "created_at", "release_keys"]


class ArtifactSerializer(serializers.ModelSerializer[Artifact]):
    model = serializers.CharField(source="model.name", read_only=True)
    published_by = serializers.CharField(source="published_by.get_username", read_only=True)
    download_url = serializers.SerializerMethodField()

    class Meta:
        model = Artifact
        fields = [
            "id",
            "model",
            "version",
            "hardware",
            "format",
            "release_counter",
            "floor",
            "target_path",
            "sha256",
            "length",
            "facts",
            "published_by",
            "published_at",
            "metadata_version",
            "download_url",
        ]

    def get_download_url(self, obj: Artifact) -> str:
        return f"/api/v1/artifacts/{obj.pk}/download"


class VersionSerializer(serializers.Serializer[dict[str, object]]):
    version = serializers.CharField()
    release_counter = serializers.IntegerField()
    artifacts = ArtifactSerializer(many=True)


class PublishRequestSerializer(serializers.Serializer[dict[str, object]]):
    metadata = serializers.FileField(
        help_text="the model's next targets metadata (JSON), signed with a release key"
    )
    file = serializers.FileField(help_text="the artifact bytes")


class MetadataUpdateSerializer(serializers.Serializer[dict[str, object]]):
    metadata = serializers.JSONField()


class RevokeSerializer(serializers.Serializer[dict[str, object]]):
    reason = serializers.CharField(max_length=200)
