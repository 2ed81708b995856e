from django.contrib.admin.apps import AdminConfig


class FleetAdminConfig(AdminConfig):
    """``django.contrib.admin`` with the fleet overview as its landing page (INSTALLED_APPS
    names this instead of ``django.contrib.admin``)."""

    default_site = "ota.admin_site.FleetAdminSite"
