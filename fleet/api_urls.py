from django.urls import path
from rest_framework.routers import SimpleRouter

from fleet import views
from ota import views as ota_views

# Path converters: the group name lookups use the group-name rule (fleet/identifiers.py).
router = SimpleRouter(trailing_slash=True, use_regex_path=False)
router.register("groups", views.GroupViewSet, basename="group")
router.register("dynamic-groups", views.DynamicGroupViewSet, basename="dynamic-group")

urlpatterns = [
    path("devices/", views.DeviceListView.as_view(), name="device-list"),
    path("devices/<device_id:device_id>/", views.DeviceDetailView.as_view(), name="device-detail"),
    path(
        "devices/<device_id:device_id>/revoke",
        views.DeviceRevokeView.as_view(),
        name="device-revoke",
    ),
    path(
        "devices/<device_id:device_id>/desired",
        ota_views.DeviceDesiredView.as_view(),
        name="device-desired",
    ),
    path(
        "devices/<device_id:device_id>/desired/republish",
        views.DeviceRepublishView.as_view(),
        name="device-republish",
    ),
    path(
        "groups/<group_name:name>/members", views.GroupMembersView.as_view(), name="group-members"
    ),
    path(
        "dynamic-groups/<group_name:name>/devices",
        views.DynamicGroupDevicesView.as_view(),
        name="dynamic-group-devices",
    ),
    path("enrollment-tokens", views.EnrollmentTokenView.as_view(), name="enrollment-token"),
    path("enroll", views.EnrollView.as_view(), name="enroll"),
    *router.urls,
]
