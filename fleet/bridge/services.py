"""The services the bridge hands messages to, registered by the apps that own them.

The bridge imports no app above it (docs/architecture.md): an app registers its handler
here from its ``AppConfig.ready`` (``telemetry/apps.py`` registers the telemetry sink),
and the bridge asks for it when it starts.
"""

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fleet.bridge.handlers import TelemetrySink

_telemetry_sink: "Callable[[], TelemetrySink] | None" = None


def telemetry_sink_from(factory: "Callable[[], TelemetrySink]") -> None:
    """Where the bridge gets its telemetry sink (one per bridge)."""
    global _telemetry_sink
    _telemetry_sink = factory


def telemetry_sink() -> "TelemetrySink":
    if _telemetry_sink is None:
        raise RuntimeError("no telemetry sink registered (is the telemetry app installed?)")
    return _telemetry_sink()
