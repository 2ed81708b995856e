"""Test hooks for fault injection: inert unless their environment variable is set.

Nothing in production sets these variables; the fault and adversarial suites
(tests/device_agent/agent/test_agent_faults*.py, test_agent_adversarial*.py) start the
agent as a real process with one of them set:

    FLEET_AGENT_CRASH_AT=<point>        SIGKILL the agent when it reaches <point>
    FLEET_AGENT_CRASH_AT=<point>@<n>    ... once the point's progress is at least <n>
    FLEET_AGENT_CLOCK_SKEW_S=<seconds>  the agent's clock runs this far ahead (negative:
                                        behind), as on a device whose clock was reset
    FLEET_AGENT_SENT_LOG_DIR=<dir>      every `events` and `telemetry` payload the agent
                                        hands to MQTT is appended to <dir>/<device id>.jsonl,
                                        for the fault suite (tests/ota/fault_rig.py) to
                                        count what was sent against what was stored

Crash points (`crashpoint(name)` calls) sit after every journal write
(`journal:<status>`, `journal:idle` once the journal is removed) and inside each
action: `accepted:recorded`, `download:bytes` (progress = bytes in the part),
`download:complete`, `verify:done`, `stage:wiped`, `stage:done`, `swap:replaced`,
`trial:running` (the model check child is running), `trial:passed`,
`commit:stored`, `report:<phase>` (after a terminal event was handed to MQTT),
`rollback:swapped`, `discard:part_removed`. SIGKILL is what a power cut looks like
to the agent's own process: no handler, no `finally`, no flush of its buffers.
"""

import json
import logging
import os
import signal
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

CRASH_ENV = "FLEET_AGENT_CRASH_AT"
CLOCK_SKEW_ENV = "FLEET_AGENT_CLOCK_SKEW_S"
SENT_LOG_ENV = "FLEET_AGENT_SENT_LOG_DIR"

log = logging.getLogger(__name__)


def crashpoint(name: str, progress: int | None = None) -> None:
    """SIGKILL this process if FLEET_AGENT_CRASH_AT names `name`; a no-op otherwise."""
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    point, _, threshold = spec.partition("@")
    if point != name:
        return
    if threshold and (progress is None or progress < int(threshold)):
        return
    log.warning("crash point %s reached (progress %s): SIGKILL", name, progress)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def utc_now() -> datetime:
    return datetime.now(UTC)


def agent_clock() -> Callable[[], datetime]:
    """The agent's clock: UTC now, skewed by FLEET_AGENT_CLOCK_SKEW_S when it is set."""
    raw = os.environ.get(CLOCK_SKEW_ENV)
    if not raw:
        return utc_now
    skew = timedelta(seconds=float(raw))
    log.warning("the agent's clock is skewed by %s (%s)", skew, CLOCK_SKEW_ENV)
    return lambda: datetime.now(UTC) + skew


def sent(device_id: str, channel: str, payload: bytes) -> None:
    """Record a payload handed to MQTT if FLEET_AGENT_SENT_LOG_DIR is set; a no-op otherwise."""
    directory = os.environ.get(SENT_LOG_ENV)
    if not directory:
        return
    line = json.dumps({"channel": channel, "payload": payload.decode("utf-8", "replace")})
    # One O_APPEND write per line: a SIGKILL keeps whole lines (the page cache has them).
    fd = os.open(
        os.path.join(directory, f"{device_id}.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600
    )
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)
