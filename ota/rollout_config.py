"""What a rollout is configured with: stages, arms, selection and policy, parsed from JSON.

The JSON columns of ``Rollout`` are written only from these dataclasses' ``to_dict()``, and
read back through ``from_dict()``, which refuses anything odd with a ``malformed``
``ServiceError`` naming the field. Defaults live here, once.
"""

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import time
from typing import Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.identifiers import (
    ARM_NAME,
    DEVICE_ID,
    GROUP_NAME,
    HARDWARE,
    TAG_NAME,
    VERSION,
    IdentifierKind,
)
from fleet.errors import ServiceError
from fleet.identifiers import PHASED_ARM, identifier_check, identifiers_check

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM_RE = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
MAX_STAGES = 20
MAX_ARMS = 8
MAX_SELECTION_ITEMS = 1000
# Upper bounds of every number a rollout takes (docs/api.md): beyond them a value is a
# typo, and some (1e18 minutes) overflow the engine's date arithmetic.
MAX_BAKE_MINUTES = 60 * 24 * 90  # 90 days
MAX_DEVICE_TIMEOUT_MINUTES = 60 * 24 * 30  # 30 days
MAX_RATE_PER_MINUTE = 1_000_000.0
MAX_ARM_WEIGHT = 1000.0
MAX_RELATIVE_CHANGE = 100.0  # 10 000 %
MAX_COUNT = 10**9  # min_finished, rate_growth_every, rate_burst
MAX_MIN_DEVICES = 10**6
MAX_RETRIES = 10
MAX_TELEMETRY_GATES = 16
MAX_SELECTION_ITEM_LENGTH = 100
MAX_DESCRIPTION_LENGTH = 2000
MAX_TIMEZONE_LENGTH = 64
METRIC_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def _bad(detail: str) -> ServiceError:
    return ServiceError(ErrorCode.MALFORMED, detail)


def _mapping(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _bad(f"{what} must be an object")
    return value


def _only(obj: Mapping[str, Any], what: str, allowed: set[str]) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise _bad(f"{what} has unknown fields: {', '.join(unknown)}")


def _number(
    value: object, what: str, *, low: float, high: float = math.inf, low_open: bool = False
) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(f"{what} must be a number")
    if value < low or (low_open and value == low) or value > high:
        bound = f"({low:g}" if low_open else f"[{low:g}"
        raise _bad(f"{what} must be in {bound}, {high:g}]")
    return float(value)


def _int(value: object, what: str, *, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad(f"{what} must be an integer in [{low}, {high}]")
    return value


def _choice(value: object, what: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise _bad(f"{what} must be one of {', '.join(choices)}")
    return str(value)


def _strings(
    value: object,
    what: str,
    pattern: re.Pattern[str] | None = None,
    kind: IdentifierKind | None = None,
) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple) or len(value) > MAX_SELECTION_ITEMS:
        raise _bad(f"{what} must be a list of at most {MAX_SELECTION_ITEMS} strings")
    if kind is not None:
        identifiers_check(kind, value, field=f"{what}[]")
    for item in value:
        if not isinstance(item, str) or not item or len(item) > MAX_SELECTION_ITEM_LENGTH:
            raise _bad(
                f"{what} must hold non-empty strings of at most "
                f"{MAX_SELECTION_ITEM_LENGTH} characters"
            )
        if pattern is not None and pattern.fullmatch(item) is None:
            raise _bad(f"{what}: {item!r} must match {pattern.pattern}")
    return tuple(dict.fromkeys(value))  # unique, order kept


def description_parse(value: object) -> str:
    if not isinstance(value, str) or len(value) > MAX_DESCRIPTION_LENGTH:
        raise _bad(f"description must be text of at most {MAX_DESCRIPTION_LENGTH} characters")
    return value


# --- stages and arms ------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """Expose devices with bucket < percent/100, then bake before the next stage."""

    percent: float
    bake_minutes: float = 0.0

    @classmethod
    def from_dict(cls, obj: object, what: str) -> Self:
        data = _mapping(obj, what)
        _only(data, what, {"percent", "bake_minutes"})
        if "percent" not in data:
            raise _bad(f"{what}.percent is required")
        return cls(
            percent=_number(data["percent"], f"{what}.percent", low=0, high=100, low_open=True),
            bake_minutes=_number(
                data.get("bake_minutes", 0), f"{what}.bake_minutes", low=0, high=MAX_BAKE_MINUTES
            ),
        )


def stages_parse(value: object, *, require_full: bool) -> tuple[Stage, ...]:
    """Stages with strictly increasing percents; a phased rollout must end at 100 %."""
    if value is None:
        value = [{"percent": 100}]
    if not isinstance(value, list | tuple) or not 1 <= len(value) <= MAX_STAGES:
        raise _bad(f"stages must be a list of 1 to {MAX_STAGES} stages")
    stages = tuple(Stage.from_dict(s, f"stages[{i}]") for i, s in enumerate(value))
    for before, after in zip(stages, stages[1:], strict=False):
        if after.percent <= before.percent:
            raise _bad("stages must have strictly increasing percents")
    if require_full and stages[-1].percent != 100:
        raise _bad("the last stage of a phased rollout must be 100 percent")
    return stages


@dataclass(frozen=True)
class Arm:
    """One version of an A/B experiment and its share of the exposed devices."""

    name: str
    version: str
    weight: float = 1.0
    baseline: bool = False

    @classmethod
    def from_dict(cls, obj: object, what: str) -> Self:
        data = _mapping(obj, what)
        _only(data, what, {"name", "version", "weight", "baseline"})
        name = identifier_check(ARM_NAME, data.get("name"), field=f"{what}.name")
        version = identifier_check(VERSION, data.get("version"), field=f"{what}.version")
        baseline = data.get("baseline", False)
        if not isinstance(baseline, bool):
            raise _bad(f"{what}.baseline must be true or false")
        weight = _number(
            data.get("weight", 1), f"{what}.weight", low=0, high=MAX_ARM_WEIGHT, low_open=True
        )
        return cls(name=name, version=version, weight=weight, baseline=baseline)


def arms_parse(value: object) -> tuple[Arm, ...]:
    """Two or more arms with distinct names, exactly one of them the baseline."""
    if not isinstance(value, list | tuple) or not 2 <= len(value) <= MAX_ARMS:
        raise _bad(f"an A/B rollout needs a list of 2 to {MAX_ARMS} arms")
    arms = tuple(Arm.from_dict(a, f"arms[{i}]") for i, a in enumerate(value))
    if len({a.name for a in arms}) != len(arms):
        raise _bad("arm names must be distinct")
    if sum(a.baseline for a in arms) != 1:
        raise _bad("exactly one arm must be the baseline")
    return arms


def phased_arms(version: str) -> tuple[Arm, ...]:
    return (Arm(name=PHASED_ARM, version=version, weight=1.0, baseline=False),)


def baseline_arm(arms: Sequence[Arm]) -> Arm | None:
    return next((a for a in arms if a.baseline), None)


# --- selection ------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """Devices in any of the groups, dynamic groups or ids (or the whole fleet with
    ``all``), narrowed to those with all of ``tags`` and any of ``hardware``."""

    groups: tuple[str, ...] = ()
    dynamic_groups: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    hardware: tuple[str, ...] = ()
    all: bool = False

    @classmethod
    def from_dict(cls, obj: object, *, new: bool = False) -> Self:
        """Parse a selection; ``new`` (one being created) also applies the identifier
        rules (invalid_identifier). A stored selection may name a group or hardware from
        before those rules (manage.py identifiers_check lists them) and must still parse.
        """
        data = _mapping(obj, "selection")
        _only(data, "selection", {"groups", "dynamic_groups", "devices", "tags", "hardware", "all"})
        everything = data.get("all", False)
        if not isinstance(everything, bool):
            raise _bad("selection.all must be true or false")

        def names(key: str, kind: IdentifierKind) -> tuple[str, ...]:
            return _strings(data.get(key), f"selection.{key}", kind=kind if new else None)

        selection = cls(
            groups=names("groups", GROUP_NAME),
            dynamic_groups=names("dynamic_groups", GROUP_NAME),
            devices=_strings(
                data.get("devices"),
                "selection.devices",
                DEVICE_ID.regex,
                DEVICE_ID if new else None,
            ),
            tags=names("tags", TAG_NAME),
            hardware=names("hardware", HARDWARE),
            all=everything,
        )
        sources = selection.groups or selection.dynamic_groups or selection.devices
        if everything and sources:
            raise _bad("selection.all cannot be combined with groups, dynamic groups or devices")
        if not (everything or sources or selection.tags or selection.hardware):
            # An empty selection meaning "everything" is one typo away from a fleet-wide
            # rollout: the whole fleet has to be asked for.
            raise _bad("the selection is empty: name groups, tags, hardware, devices or all")
        return selection

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


# --- policy ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """A maintenance window: new devices are notified only inside it.

    ``days`` are the local weekdays on which the window opens; one that ends before it
    starts (22:00-04:00) runs over midnight into the next day; equal times mean all day.
    """

    days: tuple[str, ...]
    start: time
    end: time
    timezone: str

    @classmethod
    def from_dict(cls, obj: object) -> Self:
        data = _mapping(obj, "policy.window")
        _only(data, "policy.window", {"days", "start", "end", "timezone"})
        days = _strings(data.get("days", list(DAYS)), "policy.window.days")
        if not days or any(d not in DAYS for d in days):
            raise _bad(f"policy.window.days must be a non-empty list of {', '.join(DAYS)}")
        tz = data.get("timezone", "UTC")
        if not isinstance(tz, str) or not 0 < len(tz) <= MAX_TIMEZONE_LENGTH:
            raise _bad("policy.window.timezone must be an IANA time zone name")
        try:
            ZoneInfo(str(tz))
        except (ZoneInfoNotFoundError, ValueError):
            raise _bad(f"policy.window.timezone {tz!r} is not an IANA time zone") from None
        return cls(
            days=days,
            start=_hhmm(data.get("start"), "policy.window.start"),
            end=_hhmm(data.get("end"), "policy.window.end"),
            timezone=str(tz),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "days": list(self.days),
            "start": self.start.strftime("%H:%M"),
            "end": self.end.strftime("%H:%M"),
            "timezone": self.timezone,
        }


def _hhmm(value: object, what: str) -> time:
    if not isinstance(value, str) or (match := _HHMM_RE.fullmatch(value)) is None:
        raise _bad(f"{what} must be HH:MM (24 h)")
    return time(int(match[1]), int(match[2]))


Better = Literal["lower", "higher"]
Statistic = Literal["mean", "p50", "p95", "p99"]
STATISTICS: tuple[Statistic, ...] = ("mean", "p50", "p95", "p99")


@dataclass(frozen=True)
class TelemetryGateConfig:
    """Breach when an arm is worse than the baseline on a metric, significantly and by
    more than ``max_relative_change`` (see ``ota/gates.py`` for the test)."""

    metric: str
    statistic: Statistic = "mean"
    better: Better = "lower"
    max_relative_change: float = 0.1
    alpha: float = 0.01
    min_devices: int = 20
    required: bool = False

    @classmethod
    def from_dict(cls, obj: object, what: str) -> Self:
        data = _mapping(obj, what)
        _only(data, what, {f for f in cls.__dataclass_fields__})
        metric = data.get("metric")
        if not isinstance(metric, str) or METRIC_NAME_RE.fullmatch(metric) is None:
            raise _bad(f"{what}.metric must be a metric name")
        required = data.get("required", False)
        if not isinstance(required, bool):
            raise _bad(f"{what}.required must be true or false")
        return cls(
            metric=metric,
            statistic=_choice(data.get("statistic", "mean"), f"{what}.statistic", STATISTICS),  # type: ignore[arg-type]
            better=_choice(data.get("better", "lower"), f"{what}.better", ("lower", "higher")),  # type: ignore[arg-type]
            max_relative_change=_number(
                data.get("max_relative_change", 0.1),
                f"{what}.max_relative_change",
                low=0,
                high=MAX_RELATIVE_CHANGE,
            ),
            alpha=_number(data.get("alpha", 0.01), f"{what}.alpha", low=0, high=0.5, low_open=True),
            min_devices=_int(
                data.get("min_devices", 20), f"{what}.min_devices", low=3, high=MAX_MIN_DEVICES
            ),
            required=required,
        )


@dataclass(frozen=True)
class PromotionConfig:
    """A/B: promote the arm that wins on ``metric`` (automatic, ``ota.gates.pick_winner``)
    or wait for an operator (``mode: operator``). ``on_inconclusive``: once every arm has
    ``min_devices`` and none differs from the baseline, ``wait`` for an operator or
    promote the ``baseline``."""

    mode: Literal["operator", "auto"] = "operator"
    metric: str = ""
    statistic: Statistic = "mean"
    better: Better = "higher"
    min_relative_change: float = 0.0
    alpha: float = 0.05
    min_devices: int = 20
    on_inconclusive: Literal["wait", "baseline"] = "wait"

    @classmethod
    def from_dict(cls, obj: object) -> Self:
        what = "policy.promotion"
        data = _mapping(obj, what)
        _only(data, what, {f for f in cls.__dataclass_fields__})
        mode = _choice(data.get("mode", "operator"), f"{what}.mode", ("operator", "auto"))
        metric = data.get("metric", "")
        if not isinstance(metric, str) or (mode == "auto" and not metric):
            raise _bad(f"{what}.metric is required for automatic promotion")
        if metric and METRIC_NAME_RE.fullmatch(metric) is None:
            raise _bad(f"{what}.metric must be a metric name")
        return cls(
            mode=mode,  # type: ignore[arg-type]
            metric=metric,
            statistic=_choice(data.get("statistic", "mean"), f"{what}.statistic", STATISTICS),  # type: ignore[arg-type]
            better=_choice(data.get("better", "higher"), f"{what}.better", ("lower", "higher")),  # type: ignore[arg-type]
            min_relative_change=_number(
                data.get("min_relative_change", 0.0),
                f"{what}.min_relative_change",
                low=0,
                high=MAX_RELATIVE_CHANGE,
            ),
            alpha=_number(data.get("alpha", 0.05), f"{what}.alpha", low=0, high=0.5, low_open=True),
            min_devices=_int(
                data.get("min_devices", 20), f"{what}.min_devices", low=3, high=MAX_MIN_DEVICES
            ),
            on_inconclusive=_choice(  # type: ignore[arg-type]
                data.get("on_inconclusive", "wait"),
                f"{what}.on_inconclusive",
                ("wait", "baseline"),
            ),
        )


@dataclass(frozen=True)
class Policy:
    """How fast, when, and how safely a rollout proceeds (every field has a default).

    - ``on_breach``: ``pause`` or ``abort`` (abort rolls every touched device back).
    - ``max_failure_rate`` / ``min_finished``: the install-health gate, per arm; it judges
      only once ``min_finished`` devices of the arm have finished.
    - ``device_timeout_minutes``: a device with no new phase for this long times out.
    - ``retries``: a failed or timed-out device is notified again this many times.
    - ``rate_per_minute``: devices notified in any 60 s; grows by ``rate_growth_factor``
      each time ``rate_growth_every`` more devices ``rate_growth_on`` (``succeeded`` or
      ``notified``), up to ``rate_max_per_minute`` (AWS IoT Jobs' exponential rate).
    - ``rate_burst``: how many devices may go at once when a stage starts (or a rollout
      resumes); then one every 60 / rate seconds. Unset: a minute's worth (the rate).
      ``1`` spreads a stage evenly over its N / rate minutes.
    - ``jitter``: each release is scaled by a random factor in [1 - jitter, 1].
    - ``window``: optional maintenance window.
    """

    on_breach: Literal["pause", "abort"] = "pause"
    max_failure_rate: float = 0.05
    min_finished: int = 10
    device_timeout_minutes: float = 60.0
    retries: int = 0
    rate_per_minute: float = 100.0
    rate_growth_factor: float = 1.0
    rate_growth_every: int = 0
    rate_growth_on: Literal["succeeded", "notified"] = "succeeded"
    rate_max_per_minute: float = 1000.0
    rate_burst: int | None = None
    jitter: float = 0.0
    window: Window | None = None
    telemetry_gates: tuple[TelemetryGateConfig, ...] = ()
    promotion: PromotionConfig = field(default_factory=PromotionConfig)

    @classmethod
    def from_dict(cls, obj: object) -> Self:
        data = _mapping(obj if obj is not None else {}, "policy")
        _only(data, "policy", {f for f in cls.__dataclass_fields__})
        d = cls()
        gates = data.get("telemetry_gates", [])
        if not isinstance(gates, list | tuple) or len(gates) > MAX_TELEMETRY_GATES:
            raise _bad(
                f"policy.telemetry_gates must be a list of at most {MAX_TELEMETRY_GATES} gates"
            )
        growth = _number(
            data.get("rate_growth_factor", d.rate_growth_factor),
            "policy.rate_growth_factor",
            low=1,
            high=5,
        )
        every = _int(
            data.get("rate_growth_every", d.rate_growth_every),
            "policy.rate_growth_every",
            low=0,
            high=MAX_COUNT,
        )
        if growth > 1 and every == 0:
            raise _bad("policy.rate_growth_factor needs policy.rate_growth_every > 0")
        rate = _number(
            data.get("rate_per_minute", d.rate_per_minute),
            "policy.rate_per_minute",
            low=1,
            high=MAX_RATE_PER_MINUTE,
        )
        window = data.get("window")
        return cls(
            on_breach=_choice(
                data.get("on_breach", d.on_breach), "policy.on_breach", ("pause", "abort")
            ),  # type: ignore[arg-type]
            max_failure_rate=_number(
                data.get("max_failure_rate", d.max_failure_rate),
                "policy.max_failure_rate",
                low=0,
                high=1,
            ),
            min_finished=_int(
                data.get("min_finished", d.min_finished),
                "policy.min_finished",
                low=1,
                high=MAX_COUNT,
            ),
            device_timeout_minutes=_number(
                data.get("device_timeout_minutes", d.device_timeout_minutes),
                "policy.device_timeout_minutes",
                low=0,
                high=MAX_DEVICE_TIMEOUT_MINUTES,
                low_open=True,
            ),
            retries=_int(data.get("retries", d.retries), "policy.retries", low=0, high=MAX_RETRIES),
            rate_per_minute=rate,
            rate_growth_factor=growth,
            rate_growth_every=every,
            rate_growth_on=_choice(  # type: ignore[arg-type]
                data.get("rate_growth_on", d.rate_growth_on),
                "policy.rate_growth_on",
                ("succeeded", "notified"),
            ),
            rate_max_per_minute=_number(
                data.get("rate_max_per_minute", max(d.rate_max_per_minute, rate)),
                "policy.rate_max_per_minute",
                low=rate,
                high=MAX_RATE_PER_MINUTE,
            ),
            rate_burst=None
            if data.get("rate_burst") is None
            else _int(data["rate_burst"], "policy.rate_burst", low=1, high=MAX_COUNT),
            jitter=_number(data.get("jitter", d.jitter), "policy.jitter", low=0, high=0.9),
            window=None if window is None else Window.from_dict(window),
            telemetry_gates=tuple(
                TelemetryGateConfig.from_dict(g, f"policy.telemetry_gates[{i}]")
                for i, g in enumerate(gates)
            ),
            promotion=PromotionConfig.from_dict(data.get("promotion", {})),
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["window"] = self.window.to_dict() if self.window else None
        out["telemetry_gates"] = [asdict(g) for g in self.telemetry_gates]
        return out

    @property
    def max_attempts(self) -> int:
        return 1 + self.retries
