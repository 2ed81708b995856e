"""REST API of rollouts: thin views, one service call each.

Permissions (Django model permissions of ``ota.Rollout``):

- ``ota.view_rollout``: read rollouts and their audit trail (their devices: with
  ``fleet.view_device`` too);
- ``ota.add_rollout`` (CI's token): create a rollout as ``draft``, or ``scheduled`` to wait
  for an operator; schedule a draft; move a scheduled one back to draft;
- ``ota.start_rollout`` (operators): start now, or give a ``starts_at`` at which the engine
  starts it;
- ``ota.control_rollout`` (operators): pause, resume, abort, promote.

So CI can open a canary right after publishing, and a person decides that it runs
(grant CI ``ota.start_rollout`` to let it start canaries by itself).
"""

from collections.abc import Sequence
from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import generics, permissions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from device_agent.protocol.errors import ErrorCode
from fleet.auth import token_model_check
from fleet.errors import ServiceError
from fleet.pagination import Cursor
from ota import rollout_selectors, rollouts
from ota.models import Rollout, RolloutAuditEvent, RolloutDevice
from ota.rollout_serializers import (
    RolloutActionSerializer,
    RolloutAuditEventSerializer,
    RolloutCreateSerializer,
    RolloutDeviceSerializer,
    RolloutDevicesQuery,
    RolloutListQuery,
    RolloutListSerializer,
    RolloutPromoteSerializer,
    RolloutScheduleSerializer,
    RolloutSerializer,
)
from ota.views import has_perm

VIEW = "ota.view_rollout"
ADD = "ota.add_rollout"
START = "ota.start_rollout"
CONTROL = "ota.control_rollout"


class ByNewest(Cursor):
    ordering = "-id"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


class ById(Cursor):
    ordering = "id"
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000


def _needs(request: Request, perm: str, what: str) -> None:
    if not request.user.has_perm(perm):
        raise ServiceError(ErrorCode.FORBIDDEN, f"{what} needs the {perm} permission")


def _detail(rollout: Rollout, code: int = status.HTTP_200_OK) -> Response:
    fresh = rollout_selectors.rollout_get(rollout.public_id)
    return Response(RolloutSerializer(fresh).data, status=code)


@extend_schema_view(get=extend_schema(parameters=[RolloutListQuery]))
class RolloutListView(generics.ListCreateAPIView[Rollout]):
    """List rollouts, or create one (draft, or scheduled with ``schedule``)."""

    serializer_class = RolloutListSerializer
    pagination_class = ByNewest

    def get_permissions(self) -> Sequence[permissions.BasePermission]:
        return [has_perm(ADD if self.request.method == "POST" else VIEW)()]

    def get_queryset(self) -> QuerySet[Rollout]:
        query = RolloutListQuery(data=self.request.query_params)
        query.is_valid(raise_exception=True)
        p = query.validated_data
        return rollout_selectors.rollout_list(model=p.get("model"), status=p.get("status"))

    @extend_schema(request=RolloutCreateSerializer, responses={201: RolloutSerializer})
    def post(self, request: Request) -> Response:
        rollout = rollout_create_checked(request.data, request.user)
        return _detail(rollout, status.HTTP_201_CREATED)


def rollout_create_checked(data: object, user: Any) -> Rollout:
    """Validate a create request's body and create the rollout: the API's POST and the
    admin's New rollout form both call this, so they accept and refuse the same things
    with the same messages (``serializers.ValidationError`` or ``ServiceError``)."""
    body = RolloutCreateSerializer(data=data)
    body.is_valid(raise_exception=True)
    checked = body.validated_data
    token_model_check(user, checked["model"])
    if checked["starts_at"] is not None and not user.has_perm(START):
        raise ServiceError(ErrorCode.FORBIDDEN, f"a start time needs the {START} permission")
    return rollouts.rollout_create(
        model_name=checked["model"],
        strategy=checked["strategy"],
        version=checked["version"],
        arms=checked["arms"],
        stages=checked["stages"],
        selection=checked["selection"],
        policy=checked["policy"],
        description=checked["description"],
        schedule=checked["schedule"] or checked["starts_at"] is not None,
        starts_at=checked["starts_at"],
        by=user,
    )


class RolloutDetailView(APIView):
    permission_classes = [has_perm(VIEW)]

    @extend_schema(responses=RolloutSerializer)
    def get(self, request: Request, rollout_id: str) -> Response:
        return Response(RolloutSerializer(rollout_selectors.rollout_get(rollout_id)).data)


class _Action(APIView):
    """POST /rollouts/<id>/<action> with ``{"reason": ...}``."""

    permission = CONTROL
    body_class: type[serializers.Serializer[dict[str, Any]]] = RolloutActionSerializer

    def get_permissions(self) -> Sequence[permissions.BasePermission]:
        return [has_perm(self.permission)()]

    def act(self, request: Request, rollout: Rollout, data: dict[str, object]) -> Rollout:
        raise NotImplementedError

    def post(self, request: Request, rollout_id: str) -> Response:
        body = self.body_class(data=request.data)
        body.is_valid(raise_exception=True)
        rollout = rollout_selectors.rollout_get(rollout_id)
        token_model_check(request.user, rollout.model.name)
        return _detail(self.act(request, rollout, body.validated_data))


@extend_schema(request=RolloutScheduleSerializer, responses=RolloutSerializer)
class RolloutScheduleView(_Action):
    permission = ADD
    body_class = RolloutScheduleSerializer

    def act(self, request: Request, rollout: Rollout, data: dict[str, object]) -> Rollout:
        starts_at = data["starts_at"]
        if starts_at is not None:
            _needs(request, START, "a start time")
        return rollouts.rollout_schedule(
            rollout=rollout,
            by=request.user,
            starts_at=starts_at,  # type: ignore[arg-type]
            reason=str(data["reason"]),
        )


@extend_schema(request=RolloutActionSerializer, responses=RolloutSerializer)
class RolloutUnscheduleView(_Action):
    permission = ADD

    def act(self, request: Request, rollout: Rollout, data: dict[str, object]) -> Rollout:
        return rollouts.rollout_unschedule(
            rollout=rollout, by=request.user, reason=str(data["reason"])
        )


@extend_schema(request=RolloutActionSerializer, responses=RolloutSerializer)
class RolloutStartView(_Action):
    permission = START

    def act(self, request: Request, rollout: Rollout, data: dict[str, object]) -> Rollout:
        return rollouts.rollout_start(rollout=rollout, by=request.user, reason=str(data["reason"]))


@extend_schema(request=RolloutActionSerializer, responses=RolloutSerializer)
class RolloutPauseView(_Action):
    def act(self, request: Request, rollout: Rollout, data: dict[str, object]) -> Rollout:
        reason = str(data["reason"]) or f"paused by {request.user.get_username()}"
        return rollouts.rollout_pause(rollout=rollout, by=request.user, reason=reason)


@extend_schema(request=RolloutActionSerializer, responses=RolloutSerializer)
class RolloutResumeView(_Action):
    def act(self, request: Request, rollout: Rollout, data: dict[str, object]) -> Rollout:
        return rollouts.rollout_resume(rollout=rollout, by=request.user, reason=str(data["reason"]))


@extend_schema(request=RolloutActionSerializer, responses=RolloutSerializer)
class RolloutAbortView(_Action):
    def act(self, request: Request, rollout: Rollout, data: dict[str, object]) -> Rollout:
        reason = str(data["reason"]) or f"aborted by {request.user.get_username()}"
        return rollouts.rollout_abort(rollout=rollout, by=request.user, reason=reason)


@extend_schema(request=RolloutPromoteSerializer, responses=RolloutSerializer)
class RolloutPromoteView(_Action):
    body_class = RolloutPromoteSerializer

    def act(self, request: Request, rollout: Rollout, data: dict[str, object]) -> Rollout:
        return rollouts.rollout_promote(
            rollout=rollout, arm=str(data["arm"]), by=request.user, reason=str(data["reason"])
        )


@extend_schema(parameters=[RolloutDevicesQuery])
class RolloutDevicesView(generics.ListAPIView[RolloutDevice]):
    serializer_class = RolloutDeviceSerializer
    # It lists devices: whoever may not list /devices/ may not list them here either.
    permission_classes = [has_perm(VIEW), has_perm("fleet.view_device")]
    pagination_class = ById

    def get_queryset(self) -> QuerySet[RolloutDevice]:
        rollout = rollout_selectors.rollout_get(self.kwargs["rollout_id"])
        query = RolloutDevicesQuery(data=self.request.query_params)
        query.is_valid(raise_exception=True)
        p = query.validated_data
        return rollout_selectors.rollout_devices(rollout, state=p.get("state"), arm=p.get("arm"))


class RolloutAuditView(generics.ListAPIView[RolloutAuditEvent]):
    serializer_class = RolloutAuditEventSerializer
    permission_classes = [has_perm(VIEW)]
    pagination_class = None

    def get_queryset(self) -> QuerySet[RolloutAuditEvent]:
        return rollout_selectors.rollout_audit(
            rollout_selectors.rollout_get(self.kwargs["rollout_id"])
        )
