"""The agent's config file (`config.json`, mode 0600) and its on-disk layout
(docs/architecture.md, "The agent on a device").

trust/root.json  trust/director.pem   pinned at enrollment
ca.pem  cert.pem  key.pem             MQTT identity (key 0600)
tuf/                                  ngclient metadata cache
models/<name>/slots/{a,b}/<file>      two slots per model
models/<name>/current -> slots/a      what applications read
journal.json  state.json              the update in progress, the persistent state
events.json                           events the server has not confirmed (delivery.py)
downloads/<sha256>.part               resumable partial downloads
metrics.sock                          applications' telemetry (device_agent/metrics_client.py)
metrics-stats.json                    what became of it (`fleet-agent status`)
"""

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from device_agent.protocol.fsutil import make_dir, write_json_atomic
from device_agent.protocol.identifiers import DEVICE_ID, HARDWARE

DEFAULT_DIR = Path(os.environ.get("FLEET_AGENT_DIR", "/var/lib/fleet-agent"))
CONFIG_FILE = "config.json"
CONFIG_VERSION = 1


class ConfigError(Exception):
    """The config file is missing, unreadable or wrong; the message says what to fix."""


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    """Settings written by `fleet-agent enroll`; the rest have working defaults."""

    device_id: str
    hardware: str
    server_url: str
    tuf_url: str
    broker_url: str
    # Trial: overall deadline, and an optional operator command run with the
    # model path in FLEET_MODEL_PATH (non-zero exit = health_check_failed).
    trial_deadline_s: float = 120.0
    trial_hook: list[str] | None = None
    # Downloads: no byte for this long = download_timeout; attempts with backoff;
    # the whole artifact download (all attempts) must end within download_deadline_s,
    # and each TUF refresh within metadata_deadline_s (a slow drip never stalls), its
    # retries with the same backoff included while the server does not answer.
    download_stall_s: float = 30.0
    download_deadline_s: float = 3600.0
    metadata_deadline_s: float = 120.0
    download_attempts: int = 6
    download_backoff_s: float = 1.0
    download_backoff_max_s: float = 60.0
    # An attempt receiving less than download_min_bytes_per_s on average over a window
    # of download_min_rate_window_s fails (0: no minimum); after download_attempts of
    # them, download_timeout. Progress events: at most one per progress_event_interval_s.
    download_min_bytes_per_s: float = 1024.0
    download_min_rate_window_s: float = 60.0
    progress_event_interval_s: float = 10.0
    # How far a desired state's issued_at may be ahead of the device's clock (it becomes
    # the device's trusted time); None: the device has no trustworthy clock, no bound
    # (docs/security.md, "Time").
    max_issued_ahead_s: float | None = 900.0
    # Kept free on the disk beyond the artifact itself.
    disk_reserve_bytes: int = 16 * 1024 * 1024
    # "3.1.1" (any broker, the embedded amqtt too) or "5" (Mosquitto, EMQX, HiveMQ): with
    # 5 an `events` message that reached no subscriber is published again (mqtt.py).
    mqtt_protocol: str = "3.1.1"
    # Telemetry from the device's applications (device_agent/telemetry.py): a Unix
    # datagram socket (None: <dir>/metrics.sock, "": none) with this mode (octal), and
    # optionally a UDP port on 127.0.0.1. A model's batch goes out at
    # telemetry_batch_samples samples or telemetry_batch_seconds after its first sample;
    # at most telemetry_max_queued samples wait for their batch and
    # telemetry_backlog_bytes of encoded batches for the broker (older ones are dropped).
    metrics_socket: str | None = None
    metrics_socket_mode: str = "0660"
    metrics_udp_port: int | None = None
    telemetry_batch_samples: int = 50
    telemetry_batch_seconds: float = 5.0
    telemetry_max_queued: int = 2000
    telemetry_backlog_bytes: int = 2 * 1024 * 1024
    telemetry_qos: int = 1
    telemetry_max_inflight: int = 8
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, kind in (("device_id", DEVICE_ID), ("hardware", HARDWARE)):
            if not kind.is_valid(getattr(self, name)):
                raise ConfigError(
                    f"{name} {getattr(self, name)!r} is not a valid {kind.name} ({kind.rule()})"
                )
        if not self.tuf_url.endswith("/"):
            object.__setattr__(self, "tuf_url", self.tuf_url + "/")
        if self.trial_hook is not None and (
            not isinstance(self.trial_hook, list)
            or not all(isinstance(a, str) for a in self.trial_hook)
        ):
            raise ConfigError("trial_hook must be a list of strings (argv) or null")
        for name, low, high in (
            ("download_min_bytes_per_s", 0.0, 1e12),
            ("download_min_rate_window_s", 0.1, 86400.0),
            ("progress_event_interval_s", 0.0, 86400.0),
        ):
            value = getattr(self, name)
            if type(value) not in (int, float) or not low <= value <= high:
                raise ConfigError(f"{name} must be a number in [{low:g}, {high:g}]")
        ahead = self.max_issued_ahead_s
        if ahead is not None and (type(ahead) not in (int, float) or not 0 <= ahead <= 366 * 86400):
            raise ConfigError("max_issued_ahead_s must be null or seconds in [0, 31622400]")
        if self.mqtt_protocol not in ("3.1.1", "5"):
            raise ConfigError('mqtt_protocol must be "3.1.1" or "5"')
        self._check_telemetry()

    def _check_telemetry(self) -> None:
        def whole(name: str, low: int, high: int) -> None:
            value = getattr(self, name)
            if type(value) is not int or not low <= value <= high:
                raise ConfigError(f"{name} must be an integer in [{low}, {high}]")

        if self.metrics_socket is not None and not isinstance(self.metrics_socket, str):
            raise ConfigError('metrics_socket must be a path, "" (no socket) or null')
        try:
            mode = int(self.metrics_socket_mode, 8)
        except (TypeError, ValueError):
            mode = -1
        if not 0 <= mode <= 0o777:
            raise ConfigError('metrics_socket_mode must be an octal mode such as "0660"')
        if self.metrics_udp_port is not None:
            whole("metrics_udp_port", 1, 65535)
        whole("telemetry_batch_samples", 1, 500)
        whole("telemetry_max_queued", 1, 1_000_000)
        whole("telemetry_backlog_bytes", 65536, 1 << 30)
        whole("telemetry_qos", 0, 1)
        whole("telemetry_max_inflight", 1, 1000)
        seconds = self.telemetry_batch_seconds
        if type(seconds) not in (int, float) or not 0.01 <= seconds <= 3600:
            raise ConfigError("telemetry_batch_seconds must be a number in [0.01, 3600]")

    def metrics_socket_path(self, layout: "Layout") -> Path | None:
        """Where the telemetry socket is, or None when there is none."""
        if self.metrics_socket is None:
            return layout.metrics_socket
        return Path(self.metrics_socket) if self.metrics_socket else None

    @classmethod
    def load(cls, directory: Path) -> "AgentConfig":
        path = directory / CONFIG_FILE
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise ConfigError(f"{path} is missing: run `fleet-agent enroll` first") from None
        except ValueError as exc:
            raise ConfigError(f"{path} is not JSON: {exc}") from None
        if not isinstance(data, dict) or data.pop("v", None) != CONFIG_VERSION:
            raise ConfigError(f"{path} is not a version {CONFIG_VERSION} agent config")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{path}: unknown settings {unknown}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def save(self, directory: Path) -> None:
        write_json_atomic(directory / CONFIG_FILE, {"v": CONFIG_VERSION, **asdict(self)})


@dataclass(frozen=True)
class Layout:
    """Paths under the agent's directory."""

    root: Path

    @property
    def trust_root(self) -> Path:
        return self.root / "trust" / "root.json"

    @property
    def director_key(self) -> Path:
        return self.root / "trust" / "director.pem"

    @property
    def ca(self) -> Path:
        return self.root / "ca.pem"

    @property
    def server_ca(self) -> Path:
        """CA certificates for HTTPS to the control plane (enroll --server-ca), when its
        certificate is not from a CA the system trusts; absent: the system's CAs."""
        return self.root / "trust" / "server-ca.pem"

    def server_ca_file(self) -> str | None:
        """`server_ca` as a path for TLS libraries, or None to use the system's CAs."""
        return str(self.server_ca) if self.server_ca.exists() else None

    @property
    def cert(self) -> Path:
        return self.root / "cert.pem"

    @property
    def key(self) -> Path:
        return self.root / "key.pem"

    @property
    def tuf(self) -> Path:
        return self.root / "tuf"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def downloads(self) -> Path:
        return self.root / "downloads"

    @property
    def journal(self) -> Path:
        return self.root / "journal.json"

    @property
    def store(self) -> Path:
        return self.root / "state.json"

    @property
    def events(self) -> Path:
        return self.root / "events.json"

    @property
    def lock(self) -> Path:
        return self.root / "agent.lock"

    @property
    def metrics_socket(self) -> Path:
        return self.root / "metrics.sock"

    @property
    def metrics_stats(self) -> Path:
        return self.root / "metrics-stats.json"

    def part(self, sha256: str) -> Path:
        return self.downloads / f"{sha256}.part"

    def make_dirs(self) -> None:
        # Applications (maybe other users) read models/<name>/current/; the secrets are
        # 0600 files and the rest stays private to the agent.
        # The root keeps the mode it has (systemd's StateDirectoryMode); models/ is made
        # readable whatever the umask.
        self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
        make_dir(self.models, 0o755)
        for directory in (self.root / "trust", self.tuf, self.downloads):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
