"""`fleet-agent report`: send one sample the way an application's report() does."""

from pathlib import Path

from device_agent.command_error import CommandError
from device_agent.config import AgentConfig, ConfigError, Layout
from device_agent.metrics_client import encode_sample, send_datagram


def sample_report(
    *,
    layout: Layout,
    model: str,
    metrics: list[tuple[str, float]],
    socket_path: Path | None,
    udp_port: int | None,
) -> str:
    """Hand `metrics` of `model` to the running agent (for scripts and checks).

    Without a socket or port, the agent's own settings in `layout` say where it listens.
    """
    if socket_path is None and udp_port is None:
        try:
            config = AgentConfig.load(layout.root)
        except (ConfigError, OSError):  # config.json is the agent's (0600): the default
            socket_path = layout.metrics_socket
        else:
            socket_path = config.metrics_socket_path(layout)
            udp_port = config.metrics_udp_port
    try:
        data = encode_sample(model, dict(metrics))
    except (TypeError, ValueError) as exc:
        raise CommandError("malformed", str(exc)) from None
    where = f"udp port {udp_port}" if socket_path is None else str(socket_path)
    try:
        send_datagram(data, socket_path=socket_path, udp_port=udp_port)
    except OSError as exc:
        raise CommandError("unavailable", f"the agent's metrics socket {where}: {exc}") from None
    return f"sent {len(metrics)} metrics of {model} to {where}"
