"""The services the bridge hands messages to, registered by the apps that own them.

The bridge imports no app above it (docs/architecture.md): an app registers its service
here from its ``AppConfig.ready`` and the bridge asks for it when it starts:

- the device reports (``fleet.reports``, registered by ``fleet/apps.py``): the devices a
  message comes from, and the writes of their state, events, presence and last contact;
- the desired-state queue (``fleet.director``, registered by ``fleet/apps.py``): what the
  outbox publishes, and the record of what the broker acknowledged;
- the telemetry sink (``telemetry.ingest``, registered by ``telemetry/apps.py``).

Each is a Protocol the owner's module satisfies as it is (the module itself is
registered), so the bridge calls the owner's functions with no layer between.
"""

from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from device_agent.protocol.messages import ReportedState, UpdateEvent

if TYPE_CHECKING:
    # Only a type: the rows the registry hands the bridge and gets back.
    from fleet.bridge.handlers import TelemetrySink
    from fleet.models import Device


class DeviceReports(Protocol):
    """What the bridge needs of the device registry (``fleet.reports``)."""

    def devices_for_reports(self, *, device_ids: Collection[str]) -> "dict[str, Device]": ...

    def device_state_record(self, *, device: "Device", state: ReportedState) -> object: ...

    def devices_state_record(
        self, *, reports: "Sequence[tuple[Device, ReportedState]]", news: bool = True
    ) -> None: ...

    def device_event_record(
        self, *, device: "Device", event: UpdateEvent
    ) -> tuple[object, bool]: ...

    def devices_event_record(
        self, *, reports: "Sequence[tuple[Device, UpdateEvent]]", news: bool = True
    ) -> list[bool]: ...

    def devices_news_record(self, *, device_pks: Collection[int]) -> None: ...

    def device_presence_set(self, *, device: "Device", online: bool, at: datetime) -> object: ...

    def devices_seen_record(self, *, device_pks: Collection[int], at: datetime) -> int: ...


class DesiredQueue(Protocol):
    """What the outbox needs of the director's queue of desired states (``fleet.director``).

    A queued row is a desired state's primary key and the seq it was queued with.
    """

    @property
    def OUTBOX_CHANNEL(self) -> str:  # noqa: N802 - the module constant that satisfies it
        """The NOTIFY channel the director wakes the outbox on."""
        ...

    def desired_outbox_keys(self, *, after: int, limit: int) -> list[tuple[int, int]]:
        """(pk, seq) of up to ``limit`` queued rows with pk > ``after``, by pk."""
        ...

    def desired_outbox_envelopes(self, *, pks: Sequence[int]) -> list[tuple[int, int, str, bytes]]:
        """(pk, seq, device id, envelope) of those desired states as they are now."""
        ...

    def desired_outbox_forget(self, *, pks: Sequence[int]) -> None:
        """Unqueue rows whose desired state is gone."""
        ...

    def desired_states_mark_published(
        self, *, published: Iterable[tuple[int, int]], at: datetime
    ) -> int:
        """Record the broker's acknowledgements of (pk, seq) and unqueue those rows."""
        ...

    def desired_states_requeue_since(self, *, recorded_since: datetime | None) -> int:
        """Queue again what was recorded as published after ``recorded_since``."""
        ...


_telemetry_sink: "Callable[[], TelemetrySink] | None" = None
_device_reports: DeviceReports | None = None
_desired_queue: DesiredQueue | None = None


def telemetry_sink_from(factory: "Callable[[], TelemetrySink]") -> None:
    """Where the bridge gets its telemetry sink (one per bridge)."""
    global _telemetry_sink
    _telemetry_sink = factory


def telemetry_sink() -> "TelemetrySink":
    if _telemetry_sink is None:
        raise RuntimeError("no telemetry sink registered (is the telemetry app installed?)")
    return _telemetry_sink()


def device_reports_from(reports: DeviceReports) -> None:
    """Where the bridge reads devices and writes what they report."""
    global _device_reports
    _device_reports = reports


def device_reports() -> DeviceReports:
    if _device_reports is None:
        raise RuntimeError("no device reports registered (is the fleet app installed?)")
    return _device_reports


def desired_queue_from(queue: DesiredQueue) -> None:
    """Where the outbox reads the queued desired states and records their publishes."""
    global _desired_queue
    _desired_queue = queue


def desired_queue() -> DesiredQueue:
    if _desired_queue is None:
        raise RuntimeError("no desired-state queue registered (is the fleet app installed?)")
    return _desired_queue
