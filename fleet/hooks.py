"""What the registry tells the parts above it, without importing them (docs/architecture.md).

The registry (devices, their reports, enrollment) sits below models and rollouts: it
calls these hooks, and the apps above fill them in from their ``AppConfig.ready``
(``ota/apps.py``). A hook no app registered does nothing (or, for a question, answers
that nothing is there), so the registry works on its own.
"""

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol


class DeviceNewsHook(Protocol):
    def __call__(self, *, device_pks: Collection[int]) -> None: ...


class EventStoredHook(Protocol):
    def __call__(self, *, rollout_id: str, phase: str) -> None: ...


@dataclass(frozen=True, slots=True)
class LiveRollout:
    """A rollout that is running or paused: its model's name and its arms' names."""

    model: str
    arms: frozenset[str]


@dataclass
class _Hooks:
    device_news: list[DeviceNewsHook] = field(default_factory=list)
    event_stored: list[EventStoredHook] = field(default_factory=list)
    tuf_root: Callable[[], bytes | None] | None = None
    model_names: Callable[[], Collection[str]] | None = None
    tuf_expiries: Callable[[], list[tuple[str, datetime]]] | None = None
    live_rollouts: Callable[[], Mapping[str, LiveRollout]] | None = None


_hooks = _Hooks()


def on_device_news(hook: DeviceNewsHook) -> None:
    """``hook(device_pks=...)`` runs when devices stored a report or a new event, in the
    transaction that stored it (rollout tracking news: ``ota.tracking``). Registering the
    same hook again changes nothing."""
    if hook not in _hooks.device_news:
        _hooks.device_news.append(hook)


def on_event_stored(hook: EventStoredHook) -> None:
    """``hook(rollout_id=..., phase=...)`` runs for each new event that names a rollout, in
    the transaction that stored it (``ota.tasks`` queues an evaluation at commit)."""
    if hook not in _hooks.event_stored:
        _hooks.event_stored.append(hook)


def tuf_root_from(answer: Callable[[], bytes | None]) -> None:
    """Where enrollment reads the TUF root a new device pins (``ota.selectors``)."""
    _hooks.tuf_root = answer


def model_names_from(answer: Callable[[], Collection[str]]) -> None:
    """Where the names of the registered models are read (``ota.models.Model``)."""
    _hooks.model_names = answer


def tuf_expiries_from(answer: Callable[[], list[tuple[str, datetime]]]) -> None:
    """Where ``/metrics`` reads when each TUF role's newest metadata expires."""
    _hooks.tuf_expiries = answer


def live_rollouts_from(answer: Callable[[], Mapping[str, LiveRollout]]) -> None:
    """Where the running and paused rollouts are read, by public id (``ota.selectors``)."""
    _hooks.live_rollouts = answer


def device_news(device_pks: Collection[int]) -> None:
    if device_pks:
        for hook in _hooks.device_news:
            hook(device_pks=device_pks)


def event_stored(*, rollout_id: str, phase: str) -> None:
    for hook in _hooks.event_stored:
        hook(rollout_id=rollout_id, phase=phase)


def tuf_root() -> bytes | None:
    """The current TUF root metadata, or None when there is none (or no repository)."""
    return _hooks.tuf_root() if _hooks.tuf_root is not None else None


def model_names() -> frozenset[str]:
    """The names of the registered models (none without a model registry)."""
    return frozenset(_hooks.model_names()) if _hooks.model_names is not None else frozenset()


def tuf_expiries() -> list[tuple[str, datetime]]:
    """(role, expires) of each TUF role's newest metadata (none without a repository)."""
    return _hooks.tuf_expiries() if _hooks.tuf_expiries is not None else []


def live_rollouts() -> dict[str, LiveRollout]:
    """The running and paused rollouts by public id (none without a rollout engine)."""
    return dict(_hooks.live_rollouts()) if _hooks.live_rollouts is not None else {}
