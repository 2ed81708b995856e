from django.apps import AppConfig


class FleetConfig(AppConfig):
    name = "fleet"
    verbose_name = "Fleet"

    def ready(self) -> None:
        from fleet.path_converters import path_converters_register

        path_converters_register()

        from fleet import schema  # noqa: F401 - registers the Bearer token's OpenAPI scheme
