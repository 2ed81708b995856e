"""Hand inference metrics to the local fleet-agent (for the device's applications).

    from device_agent.metrics_client import report

    report("kws", latency_ms=12.5, confidence=0.93)
    report("kws", {"latency_ms": 12.5, "top1": 3}, socket_path="/var/lib/fleet-agent/metrics.sock")

One call sends one datagram (`{"model", "metrics", "ts"}` as JSON) to the agent's Unix
datagram socket, or to its loopback UDP port when `udp_port` is given. The agent tags
the sample with the installed version and the rollout and arm it runs under, batches it
and publishes it on the device's `telemetry` topic (device_agent/telemetry.py says what
it accepts: a model the agent has installed, at most 32 metrics named
`[A-Za-z_][A-Za-z0-9_]{0,63}` with finite numbers).

`report` never blocks and never raises: it returns False when the sample could not be
handed over (no agent, the agent's queue full, a value that is not a finite number), so
telemetry can never slow down or break the application. Standard library only: this
file may be copied into an application that does not install the agent.

The socket defaults to $FLEET_METRICS_SOCKET, else $FLEET_AGENT_DIR/metrics.sock, else
/var/lib/fleet-agent/metrics.sock.
"""

import contextlib
import json
import logging
import math
import os
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path

log = logging.getLogger(__name__)

SOCKET_NAME = "metrics.sock"
SOCKET_ENV = "FLEET_METRICS_SOCKET"
# sockaddr_un.sun_path holds 108 bytes, the terminating NUL included.
_SUN_PATH_MAX = 107


def default_socket_path() -> Path:
    """$FLEET_METRICS_SOCKET, else $FLEET_AGENT_DIR/metrics.sock, else the default dir's."""
    explicit = os.environ.get(SOCKET_ENV)
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("FLEET_AGENT_DIR", "/var/lib/fleet-agent")) / SOCKET_NAME


@contextlib.contextmanager
def unix_address(path: str | os.PathLike[str]) -> Iterator[str]:
    """An address for `path` that fits in sun_path: the path itself, or when it is too
    long (deep temporary directories), the same file reached through an open descriptor
    of its directory (/proc/self/fd/N/name, Linux)."""
    text = os.fspath(path)
    if len(os.fsencode(text)) <= _SUN_PATH_MAX:
        yield text
        return
    directory, name = os.path.split(text)
    fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{name}"
    finally:
        os.close(fd)


def encode_sample(model: str, metrics: Mapping[str, float], *, ts: float | None = None) -> bytes:
    """The datagram for one sample. Raises ValueError/TypeError on values JSON cannot
    carry (NaN, infinities, non-numbers); the agent judges everything else."""
    values: dict[str, float] = {}
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"metric {name!r} is not a number: {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"metric {name!r} is not finite: {value!r}")
        values[str(name)] = value
    sample: dict[str, object] = {"model": model, "metrics": values}
    if ts is not None:
        sample["ts"] = ts
    return json.dumps(sample, separators=(",", ":"), allow_nan=False).encode()


def send_datagram(
    data: bytes,
    *,
    socket_path: str | os.PathLike[str] | None = None,
    udp_port: int | None = None,
) -> None:
    """Send one datagram without blocking; raises OSError (no agent, queue full, ...)."""
    if udp_port is not None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.sendto(data, ("127.0.0.1", udp_port))
        return
    path = default_socket_path() if socket_path is None else socket_path
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        with unix_address(path) as address:
            sock.sendto(data, address)


def report(
    model: str,
    metrics: Mapping[str, float] | None = None,
    *,
    socket_path: str | os.PathLike[str] | None = None,
    udp_port: int | None = None,
    ts: float | None = None,
    **named: float,
) -> bool:
    """Hand one sample of `model` to the agent: `metrics` and/or keyword metrics.

    `ts` is when it was measured (unix seconds; default: when the agent reads it).
    True when the agent's socket took the datagram; False (never an exception) when not.
    """
    try:
        data = encode_sample(model, {**(metrics or {}), **named}, ts=ts)
        send_datagram(data, socket_path=socket_path, udp_port=udp_port)
    except (OSError, ValueError, TypeError) as exc:
        log.debug("metrics for %s not sent: %s", model, exc)
        return False
    return True
