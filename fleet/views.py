"""REST API of the fleet registry and enrollment: thin views, one service call each."""

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import generics, permissions, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import AnonRateThrottle
from rest_framework.views import APIView

from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.identifiers import (
    DEVICE_ID,
    GROUP_NAME,
    HARDWARE,
    TAG_NAME,
    IdentifierKind,
)
from fleet import director, enrollment, registry, selectors
from fleet.client_ip import client_ip
from fleet.errors import ServiceError
from fleet.identifiers import identifier_check
from fleet.models import Device, DynamicGroup, Group
from fleet.pagination import ByName, Cursor
from fleet.serializers import (
    DeviceLabelsSerializer,
    DeviceListQuery,
    DeviceSerializer,
    DynamicGroupSerializer,
    EnrollmentTokenRequestSerializer,
    EnrollRequestSerializer,
    GroupMembersSerializer,
    GroupSerializer,
    RevokeDeviceSerializer,
)


class ModelPermissions(permissions.DjangoModelPermissions):
    """Django model permissions, with ``view`` required for reads too."""

    perms_map = {
        **permissions.DjangoModelPermissions.perms_map,
        "GET": ["%(app_label)s.view_%(model_name)s"],
        "HEAD": ["%(app_label)s.view_%(model_name)s"],
    }


class CanViewDevices(permissions.BasePermission):
    """``fleet.view_device``, checked before the view looks anything up (ModelPermissions
    calls ``get_queryset``, which answered ``not_found`` to callers without the right)."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        return bool(request.user and request.user.has_perm("fleet.view_device"))


class ByDeviceId(Cursor):
    ordering = "device_id"


def _bool(value: str | None) -> bool | None:
    if value is None or value == "":
        return None
    if value.lower() in {"true", "1", "yes"}:
        return True
    if value.lower() in {"false", "0", "no"}:
        return False
    raise ServiceError(ErrorCode.MALFORMED, f"{value!r} is not a boolean")


def _filter(kind: IdentifierKind, value: str | None, name: str) -> str | None:
    """An optional identifier filter from the query string ("" or absent: no filter)."""
    return identifier_check(kind, value, field=name) if value else None


@extend_schema(parameters=[DeviceListQuery])
class DeviceListView(generics.ListAPIView[Device]):
    serializer_class = DeviceSerializer
    permission_classes = [CanViewDevices]
    pagination_class = ByDeviceId
    queryset = Device.objects.none()  # for the permission class

    def get_queryset(self) -> QuerySet[Device]:
        p = self.request.query_params  # DeviceListQuery documents them
        return selectors.device_list(
            hardware=_filter(HARDWARE, p.get("hardware"), "hardware"),
            tags=[identifier_check(TAG_NAME, t, field="tag") for t in p.getlist("tag")],
            group=_filter(GROUP_NAME, p.get("group"), "group"),
            online=_bool(p.get("online")),
            revoked=_bool(p.get("revoked")),
            prefix=_filter(DEVICE_ID, p.get("q"), "q"),  # a prefix of a device id is one
        ).prefetch_related("tags", "groups")


class DeviceDetailView(APIView):
    permission_classes = [ModelPermissions]
    queryset = Device.objects.none()

    def _device(self, device_id: str) -> Device:
        device = Device.objects.filter(device_id=device_id).first()
        if device is None:
            raise ServiceError(ErrorCode.NOT_FOUND, f"no device {device_id}")
        return device

    @extend_schema(responses=DeviceSerializer)
    def get(self, request: Request, device_id: str) -> Response:
        return Response(DeviceSerializer(self._device(device_id)).data)

    @extend_schema(request=DeviceLabelsSerializer, responses=DeviceSerializer)
    def patch(self, request: Request, device_id: str) -> Response:
        body = DeviceLabelsSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        device = registry.device_labels_set(
            device=self._device(device_id),
            tags=body.validated_data.get("tags"),
            groups=body.validated_data.get("groups"),
        )
        return Response(DeviceSerializer(device).data)


class DeviceRevokeView(APIView):
    permission_classes = [permissions.IsAdminUser]

    @extend_schema(request=RevokeDeviceSerializer, responses=DeviceSerializer)
    def post(self, request: Request, device_id: str) -> Response:
        body = RevokeDeviceSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        device = Device.objects.filter(device_id=device_id).first()
        if device is None:
            raise ServiceError(ErrorCode.NOT_FOUND, f"no device {device_id}")
        revoked = enrollment.device_revoke(
            device=device, reason=body.validated_data["reason"], by=request.user
        )
        return Response(DeviceSerializer(revoked).data)


class GroupViewSet(viewsets.ModelViewSet[Group]):
    serializer_class = GroupSerializer
    permission_classes = [ModelPermissions]
    queryset = Group.objects.order_by("name")
    lookup_field = "name"
    pagination_class = ByName
    lookup_value_converter = "group_name"


class GroupMembersView(APIView):
    permission_classes = [ModelPermissions]
    queryset = Group.objects.none()

    @extend_schema(request=GroupMembersSerializer, responses={200: None})
    def post(self, request: Request, name: str) -> Response:
        group = Group.objects.filter(name=name).first()
        if group is None:
            raise ServiceError(ErrorCode.NOT_FOUND, f"no group {name}")
        body = GroupMembersSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        count = registry.group_members_change(
            group=group, add=body.validated_data["add"], remove=body.validated_data["remove"]
        )
        return Response({"group": name, "devices": count})


class DynamicGroupViewSet(viewsets.ModelViewSet[DynamicGroup]):
    serializer_class = DynamicGroupSerializer
    permission_classes = [ModelPermissions]
    queryset = DynamicGroup.objects.order_by("name")
    lookup_field = "name"
    pagination_class = ByName
    lookup_value_converter = "group_name"


class DynamicGroupDevicesView(generics.ListAPIView[Device]):
    serializer_class = DeviceSerializer
    permission_classes = [CanViewDevices]
    pagination_class = ByDeviceId
    queryset = Device.objects.none()

    def get_queryset(self) -> QuerySet[Device]:
        group = DynamicGroup.objects.filter(name=self.kwargs["name"]).first()
        if group is None:
            raise ServiceError(ErrorCode.NOT_FOUND, f"no dynamic group {self.kwargs['name']}")
        return selectors.dynamic_group_devices(group).prefetch_related("tags", "groups")


class EnrollmentTokenView(APIView):
    permission_classes = [ModelPermissions]
    queryset = Group.objects.none()

    def get_queryset(self) -> Any:
        from fleet.models import EnrollmentToken

        return EnrollmentToken.objects.none()

    @extend_schema(request=EnrollmentTokenRequestSerializer, responses={201: None})
    def post(self, request: Request) -> Response:
        body = EnrollmentTokenRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        group = None
        if body.validated_data["group"]:
            group = Group.objects.filter(name=body.validated_data["group"]).first()
            if group is None:
                raise ServiceError(ErrorCode.NOT_FOUND, f"no group {body.validated_data['group']}")
        token, secret = enrollment.enrollment_token_create(
            by=request.user,  # type: ignore[arg-type]
            hours=body.validated_data.get("hours"),
            hardware=body.validated_data["hardware"],
            group=group,
        )
        return Response(
            {
                "token": secret,
                "expires_at": token.expires_at,
                "hardware": token.hardware,
                "group": group.name if group else None,
            },
            status=status.HTTP_201_CREATED,
        )


class EnrollThrottle(AnonRateThrottle):
    """Per client address, counted in the shared cache (settings.CACHES) by every worker."""

    rate = "60/min"

    def get_ident(self, request: Request) -> str:
        return client_ip(request)


class EnrollView(APIView):
    """A device trades a one-time token and its CSR for a certificate and pinned trust.

    Public: the device has no credential yet; the token is the credential.
    """

    authentication_classes: list[type] = []
    permission_classes = [permissions.AllowAny]
    throttle_classes = [EnrollThrottle]

    @extend_schema(request=EnrollRequestSerializer, responses={201: None})
    def post(self, request: Request) -> Response:
        body = EnrollRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        result = enrollment.device_enroll(
            token=data["token"],
            device_id=data["device_id"],
            hardware=data["hardware"],
            csr_pem=data["csr"].encode(),
            agent_version=data["agent_version"],
        )
        return Response(
            {
                "device_id": result.device.device_id,
                "certificate": result.certificate_pem.decode(),
                "ca_certificate": result.ca_certificate_pem.decode(),
                "director_public_key": result.director_public_key_pem.decode(),
                "tuf_root": result.tuf_root,
                "tuf_url": result.tuf_url,
                "broker_url": result.broker_url,
            },
            status=status.HTTP_201_CREATED,
        )


class DeviceRepublishView(APIView):
    permission_classes = [permissions.IsAdminUser]

    @extend_schema(request=None, responses={202: None})
    def post(self, request: Request, device_id: str) -> Response:
        device = Device.objects.filter(device_id=device_id).first()
        if device is None:
            raise ServiceError(ErrorCode.NOT_FOUND, f"no device {device_id}")
        director.device_desired_republish(device=device)
        return Response(status=status.HTTP_202_ACCEPTED)
