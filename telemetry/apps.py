from django.apps import AppConfig


class TelemetryConfig(AppConfig):
    name = "telemetry"
    verbose_name = "Telemetry"

    def ready(self) -> None:
        # The bridge's telemetry channel hands its batches to this app's sink
        # (fleet/bridge/services.py, docs/architecture.md).
        from fleet.bridge.services import telemetry_sink_from
        from telemetry.ingest import telemetry_sink_from_settings

        telemetry_sink_from(telemetry_sink_from_settings)
