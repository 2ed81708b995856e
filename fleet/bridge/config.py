"""The bridge's configuration: Django settings with per-run overrides from the command line."""

from dataclasses import dataclass, replace
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from device_agent.protocol.topics import SHARE_GROUP_RE

Protocol = Literal["5", "3.1.1"]

# Setting name -> default. Every bridge setting is optional; fleet/settings.py may set them
# from the environment.
DEFAULTS: dict[str, Any] = {
    "FLEET_MQTT_BRIDGE_URL": "mqtt://127.0.0.1:1883",
    "FLEET_MQTT_BRIDGE_CA_FILE": "",
    "FLEET_MQTT_BRIDGE_CERT_FILE": "",
    "FLEET_MQTT_BRIDGE_KEY_FILE": "",
    "FLEET_BRIDGE_CLIENT_ID": "fleet-bridge",
    "FLEET_BRIDGE_USE_SHARED": True,
    "FLEET_BRIDGE_SHARE_GROUP": "bridge",
    "FLEET_BRIDGE_PROTOCOL": "5",
    "FLEET_BRIDGE_SESSION_EXPIRY_SECONDS": 86400,
    "FLEET_BRIDGE_KEEPALIVE_SECONDS": 30,
    "FLEET_BRIDGE_RECEIVE_MAXIMUM": 1000,
    "FLEET_BRIDGE_MAX_INFLIGHT": 100,
    "FLEET_BRIDGE_QUEUE_SIZE": 10000,
    "FLEET_BRIDGE_BATCH_SIZE": 500,
    "FLEET_BRIDGE_DEVICE_CACHE_SECONDS": 5.0,
    "FLEET_BRIDGE_SEEN_FLUSH_SECONDS": 1.0,
    "FLEET_BRIDGE_OUTBOX_POLL_SECONDS": 0.2,
    "FLEET_BRIDGE_OUTBOX_BATCH_SIZE": 500,
    "FLEET_BRIDGE_OUTBOX_WINDOW": 2000,
}


def _setting(name: str) -> Any:
    return getattr(settings, name, DEFAULTS[name])


@dataclass(frozen=True, kw_only=True, slots=True)
class BrokerAddress:
    """Where the broker listens, parsed from `mqtt://[user[:password]@]host[:port]` or mqtts://."""

    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None

    @classmethod
    def parse(cls, url: str) -> "BrokerAddress":
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ImproperlyConfigured(
                f"MQTT broker URL {url!r}: use mqtt://host:1883 or mqtts://host:8883."
            )
        tls = parts.scheme == "mqtts"
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise ImproperlyConfigured(f"MQTT broker URL {url!r} has a bad port.") from None
        return cls(
            host=parts.hostname,
            port=port,
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )

    def __str__(self) -> str:  # never the password
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass(frozen=True, kw_only=True, slots=True)
class BridgeConfig:
    """Everything the bridge's threads need to know; see DEFAULTS for the setting names."""

    broker: BrokerAddress
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    # Stable across restarts: the broker keeps the persistent session under this id, so
    # QoS 1 reports published while the bridge is down wait for it. Replicas need distinct ids.
    client_id: str = "fleet-bridge"
    share_group: str | None = "bridge"  # None: plain subscriptions (amqtt has no $share)
    protocol: Protocol = "5"
    session_expiry_seconds: int = 86400
    keepalive_seconds: int = 30
    reconnect_min_seconds: int = 1
    reconnect_max_seconds: int = 30
    # How many unacknowledged QoS 1 messages the broker may hand us (MQTT 5 Receive
    # Maximum): this, not a blocking queue, bounds what waits in memory for the database.
    receive_maximum: int = 1000
    # Outgoing QoS 1 publishes in flight at once, capped by the broker's Receive Maximum.
    max_inflight: int = 100
    queue_size: int = 10000  # QoS 0 messages beyond this many waiting are dropped
    batch_size: int = 500  # messages per database transaction
    device_cache_seconds: float = 5.0
    seen_flush_seconds: float = 1.0
    outbox_poll_seconds: float = 0.2
    outbox_batch_size: int = 500
    # Desired states handed to paho and not yet PUBACKed; never more than the publishes in
    # flight (max_inflight, the broker's Receive Maximum), which is what bounds it by default.
    outbox_window: int = 2000

    def __post_init__(self) -> None:
        if not self.client_id or len(self.client_id) > 128:
            raise ImproperlyConfigured("the bridge's MQTT client id must be 1-128 characters.")
        if self.share_group is not None and not SHARE_GROUP_RE.fullmatch(self.share_group):
            raise ImproperlyConfigured(
                f"share group {self.share_group!r} must match [A-Za-z0-9_-]{{1,64}}."
            )
        if self.protocol not in ("5", "3.1.1"):
            raise ImproperlyConfigured(f"MQTT protocol {self.protocol!r}: use 5 or 3.1.1.")
        if self.protocol == "3.1.1" and self.share_group is not None:
            raise ImproperlyConfigured("shared subscriptions need MQTT 5: add --no-share.")
        for name in ("max_inflight", "queue_size", "batch_size", "outbox_batch_size"):
            if getattr(self, name) < 1:
                raise ImproperlyConfigured(f"bridge {name} must be a positive integer.")
        if not 1 <= self.receive_maximum <= 65535:
            raise ImproperlyConfigured("bridge receive_maximum must be in 1..65535.")
        if self.outbox_window < 1:
            raise ImproperlyConfigured("bridge outbox_window must be a positive integer.")
        if bool(self.cert_file) != bool(self.key_file):
            raise ImproperlyConfigured("a bridge client certificate needs its key file and back.")

    @classmethod
    def from_settings(cls, **overrides: Any) -> "BridgeConfig":
        """The configuration from Django settings; `overrides` (None values ignored) win."""
        use_shared = bool(_setting("FLEET_BRIDGE_USE_SHARED"))
        config = cls(
            broker=BrokerAddress.parse(_setting("FLEET_MQTT_BRIDGE_URL")),
            ca_file=_setting("FLEET_MQTT_BRIDGE_CA_FILE"),
            cert_file=_setting("FLEET_MQTT_BRIDGE_CERT_FILE"),
            key_file=_setting("FLEET_MQTT_BRIDGE_KEY_FILE"),
            client_id=_setting("FLEET_BRIDGE_CLIENT_ID"),
            share_group=_setting("FLEET_BRIDGE_SHARE_GROUP") if use_shared else None,
            protocol=str(_setting("FLEET_BRIDGE_PROTOCOL")),  # type: ignore[arg-type]
            session_expiry_seconds=int(_setting("FLEET_BRIDGE_SESSION_EXPIRY_SECONDS")),
            keepalive_seconds=int(_setting("FLEET_BRIDGE_KEEPALIVE_SECONDS")),
            receive_maximum=int(_setting("FLEET_BRIDGE_RECEIVE_MAXIMUM")),
            max_inflight=int(_setting("FLEET_BRIDGE_MAX_INFLIGHT")),
            queue_size=int(_setting("FLEET_BRIDGE_QUEUE_SIZE")),
            batch_size=int(_setting("FLEET_BRIDGE_BATCH_SIZE")),
            device_cache_seconds=float(_setting("FLEET_BRIDGE_DEVICE_CACHE_SECONDS")),
            seen_flush_seconds=float(_setting("FLEET_BRIDGE_SEEN_FLUSH_SECONDS")),
            outbox_poll_seconds=float(_setting("FLEET_BRIDGE_OUTBOX_POLL_SECONDS")),
            outbox_batch_size=int(_setting("FLEET_BRIDGE_OUTBOX_BATCH_SIZE")),
            outbox_window=int(_setting("FLEET_BRIDGE_OUTBOX_WINDOW")),
        )
        return config.with_overrides(**overrides)

    def with_overrides(self, **overrides: Any) -> "BridgeConfig":
        """A copy with the given fields replaced; `url=` sets the broker, `use_shared=False`
        clears the share group."""
        changes = {k: v for k, v in overrides.items() if v is not None}
        if "url" in changes:
            changes["broker"] = BrokerAddress.parse(changes.pop("url"))
        if changes.pop("use_shared", True) is False:
            changes["share_group"] = None
        return replace(self, **changes)
