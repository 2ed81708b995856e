from django.apps import AppConfig


class FleetConfig(AppConfig):
    name = "fleet"
    verbose_name = "Fleet"

    def ready(self) -> None:
        from fleet.path_converters import path_converters_register

        path_converters_register()

        # The Bearer token's OpenAPI scheme registers itself on import. The bridge hands
        # device reports to the registry and publishes the director's queue through what
        # is registered here (fleet/bridge/services.py, docs/architecture.md).
        from fleet import director, reports, schema  # noqa: F401
        from fleet.bridge.services import desired_queue_from, device_reports_from

        device_reports_from(reports)
        desired_queue_from(director)
