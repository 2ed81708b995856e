"""`fleet-agent configure`: point an enrolled agent at other URLs of the same control plane
(a moved server, the dev quick start's ports); the identity stays."""

import urllib.parse
from dataclasses import replace
from typing import Any

from device_agent.agent_lock import agent_lock
from device_agent.command_error import CommandError
from device_agent.config import AgentConfig, Layout
from device_agent.mqtt import parse_broker_url


def agent_configure(
    *,
    layout: Layout,
    server: str | None = None,
    tuf_url: str | None = None,
    broker_url: str | None = None,
) -> str:
    """Check the URLs given and write those that change; read at the agent's next `run`."""
    config = AgentConfig.load(layout.root)
    if broker_url is not None:
        try:
            parse_broker_url(broker_url)
        except ValueError as exc:
            raise CommandError("malformed", str(exc)) from None
    for option, url in (("--server", server), ("--tuf-url", tuf_url)):
        if url is not None and urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise CommandError("malformed", f"{option} {url!r} is not an http(s) URL")
    wanted = {
        "server_url": server.rstrip("/") if server else None,
        "tuf_url": tuf_url,
        "broker_url": broker_url,
    }
    changes: dict[str, Any] = {
        name: value
        for name, value in wanted.items()
        if value is not None and getattr(config, name) != value
    }
    if not changes:
        return f"{layout.root}: unchanged"
    with agent_lock(layout):  # not under a running agent, which would not see it
        replace(config, **changes).save(layout.root)
    return f"{layout.root}: set {', '.join(sorted(changes))}"
