"""REST API for CI and operators: thin views, one service call each."""

import json
from typing import Any

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import permissions, status
from rest_framework.exceptions import ParseError
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from device_agent.protocol.errors import ErrorCode
from fleet import director
from fleet.auth import token_model_check
from fleet.errors import ServiceError
from fleet.models import DesiredState, Device
from fleet.parsers import JSONParser
from fleet.serializers import DesiredRequestSerializer
from ota import publishing, repository, selectors
from ota.downloads import artifact_response
from ota.models import Artifact, Model
from ota.serializers import (
    ArtifactSerializer,
    MetadataUpdateSerializer,
    ModelSerializer,
    PublishRequestSerializer,
    RevokeSerializer,
    VersionSerializer,
)


def has_perm(perm: str) -> type[permissions.BasePermission]:
    class HasPerm(permissions.BasePermission):
        message = f"needs the {perm} permission"

        def has_permission(self, request: Request, view: APIView) -> bool:
            return bool(request.user and request.user.has_perm(perm))

    return HasPerm


class ModelListView(APIView):
    permission_classes = [has_perm("ota.view_model")]

    @extend_schema(responses=ModelSerializer(many=True))
    def get(self, request: Request) -> Response:
        return Response(ModelSerializer(selectors.model_list(), many=True).data)


class ModelDetailView(APIView):
    permission_classes = [has_perm("ota.view_model")]

    @extend_schema(responses=ModelSerializer)
    def get(self, request: Request, name: str) -> Response:
        return Response(ModelSerializer(selectors.model_get(name)).data)


class ModelMetadataView(APIView):
    """The model's current delegated targets metadata, which CI extends and re-signs."""

    permission_classes = [has_perm("ota.view_model")]
    parser_classes = [JSONParser]

    @extend_schema(responses={200: OpenApiResponse(description="TUF targets metadata")})
    def get(self, request: Request, name: str) -> Response:
        model = selectors.model_get(name)
        raw = selectors.tuf_metadata_bytes(model.name, None)
        return Response(
            {"role": model.name, "metadata": json.loads(raw) if raw is not None else None}
        )

    @extend_schema(request=MetadataUpdateSerializer, responses={200: None})
    def put(self, request: Request, name: str) -> Response:
        if not request.user.has_perm("ota.add_artifact"):
            raise ServiceError(ErrorCode.FORBIDDEN, "needs the ota.add_artifact permission")
        token_model_check(request.user, name)
        body = MetadataUpdateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        raw = json.dumps(body.validated_data["metadata"]).encode()
        version = publishing.model_metadata_update(model_name=name, metadata=raw)
        return Response({"role": name, "version": version})


class PublishView(APIView):
    """Publish one artifact: multipart ``metadata`` (signed JSON) then ``file`` (bytes)."""

    permission_classes = [has_perm("ota.add_artifact")]
    parser_classes = [MultiPartParser]

    @extend_schema(
        request={"multipart/form-data": PublishRequestSerializer},
        responses={201: ArtifactSerializer},
    )
    def post(self, request: Request, name: str) -> Response:
        token_model_check(request.user, name)
        limit = settings.FLEET_MAX_ARTIFACT_BYTES + settings.FLEET_MAX_METADATA_BYTES + 65536
        try:
            declared = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            declared = 0
        if declared > limit:
            raise ServiceError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"the request is {declared} bytes; artifacts may be at most "
                f"{settings.FLEET_MAX_ARTIFACT_BYTES} bytes (FLEET_MAX_ARTIFACT_BYTES)",
            )
        try:
            files = request.FILES
            data = request.data
        except ParseError as exc:
            raise ServiceError(ErrorCode.MALFORMED, f"bad multipart body: {exc.detail}") from None
        if request.META.get("fleet.upload_too_large"):
            raise ServiceError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"artifacts may be at most {settings.FLEET_MAX_ARTIFACT_BYTES} bytes",
            )
        upload = files.get("file")
        if not isinstance(upload, UploadedFile) or not hasattr(upload, "sha256"):
            raise ServiceError(ErrorCode.MALFORMED, "the 'file' part with the artifact is missing")
        field = data.get("metadata") if hasattr(data, "get") else None
        metadata = _metadata_bytes(files.get("metadata"), field)
        artifact = publishing.artifact_publish(
            model_name=name,
            metadata=metadata,
            upload=publishing.Upload(file=upload, sha256=upload.sha256, length=upload.size or 0),
            by=request.user,  # type: ignore[arg-type]
        )
        return Response(ArtifactSerializer(artifact).data, status=status.HTTP_201_CREATED)


def _metadata_bytes(as_file: Any, as_field: Any) -> bytes:
    limit = settings.FLEET_MAX_METADATA_BYTES
    if isinstance(as_file, UploadedFile):
        if (as_file.size or 0) > limit:
            raise ServiceError(ErrorCode.PAYLOAD_TOO_LARGE, f"metadata is over {limit} bytes")
        return as_file.read()
    if isinstance(as_field, str):
        return as_field.encode()
    raise ServiceError(ErrorCode.MALFORMED, "the 'metadata' part with the signed JSON is missing")


class VersionListView(APIView):
    permission_classes = [has_perm("ota.view_artifact")]

    @extend_schema(responses=VersionSerializer(many=True))
    def get(self, request: Request, name: str) -> Response:
        return Response(_versions(selectors.model_get(name), None))


class VersionDetailView(APIView):
    permission_classes = [has_perm("ota.view_artifact")]

    @extend_schema(responses=VersionSerializer)
    def get(self, request: Request, name: str, version: str) -> Response:
        versions = _versions(selectors.model_get(name), version)
        if not versions:
            raise ServiceError(ErrorCode.NOT_FOUND, f"{name} {version} is not published")
        return Response(versions[0])


def _versions(model: Model, version: str | None) -> list[dict[str, Any]]:
    grouped: dict[str, list[Artifact]] = {}
    for artifact in selectors.artifact_list(model=model, version=version):
        grouped.setdefault(artifact.version, []).append(artifact)
    return [
        {
            "version": v,
            "release_counter": arts[0].release_counter,
            "artifacts": ArtifactSerializer(arts, many=True).data,
        }
        for v, arts in grouped.items()
    ]


class ArtifactDownloadView(APIView):
    permission_classes = [has_perm("ota.view_artifact")]

    @extend_schema(
        responses={
            (200, "application/octet-stream"): bytes,
            (206, "application/octet-stream"): bytes,
            302: None,
            416: None,
        }
    )
    def get(self, request: Request, pk: int) -> HttpResponseBase:
        return artifact_response(request, get_object_or_404(Artifact, pk=pk))


class ReleaseKeyRevokeView(APIView):
    """Revoke a release key; needs the targets key online (the embedded default)."""

    permission_classes = [permissions.IsAdminUser]

    @extend_schema(request=RevokeSerializer, responses={200: None})
    def post(self, request: Request, keyid: str) -> Response:
        body = RevokeSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        row = repository.release_key_revoke(
            keyid=keyid,
            reason=body.validated_data["reason"],
            targets_signer=repository.signer_for("targets"),
            by=request.user,
        )
        return Response({"keyid": row.keyid, "revoked_at": row.revoked_at})


class DeviceDesiredView(APIView):
    """What a device should run: read it, assign model versions directly, or re-publish.

    Rollouts assign models to many devices at once; this is the operator's direct tool.
    """

    permission_classes = [permissions.IsAdminUser]

    def _device(self, device_id: str) -> Device:
        device = Device.objects.filter(device_id=device_id).first()
        if device is None:
            raise ServiceError(ErrorCode.NOT_FOUND, f"no device {device_id}")
        return device

    @extend_schema(responses={200: None})
    def get(self, request: Request, device_id: str) -> Response:
        desired = DesiredState.objects.filter(device=self._device(device_id)).first()
        if desired is None:
            return Response({"seq": 0, "payload": None, "published_seq": 0})
        return Response(
            {"seq": desired.seq, "payload": desired.payload, "published_seq": desired.published_seq}
        )

    @extend_schema(request=DesiredRequestSerializer, responses={200: None})
    def post(self, request: Request, device_id: str) -> Response:
        device = self._device(device_id)
        body = DesiredRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        assignments = [
            director.ModelAssignment(
                artifact=selectors.artifact_for_device(
                    model_name=item["model"], version=item["version"], hardware=device.hardware
                )
            )
            for item in body.validated_data["models"]
        ]
        desired = director.device_desired_set(device=device, assignments=assignments)
        return Response({"seq": desired.seq, "payload": desired.payload})
