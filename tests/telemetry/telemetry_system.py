"""The running system for end-to-end telemetry tests: the bridge and the web server as
child processes on the test database, a real Prometheus, and simulated devices (paho)."""

import json
import os
import shutil
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from django.db import connection
from mqtt_broker import free_port, wait_for_port
from processes import Child

from device_agent.protocol.messages import (
    DeviceStatus,
    ModelState,
    Phase,
    Presence,
    ReportedState,
    Slot,
    UpdateEvent,
)
from device_agent.protocol.topics import Channel, topic_for

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")


def subprocess_database_url() -> str:
    """The URL of the test database, for a child process."""
    settings = connection.settings_dict
    name = str(settings["NAME"])
    if connection.vendor == "sqlite":
        return f"sqlite:///{Path(name).resolve()}?timeout=20&transaction_mode=IMMEDIATE"
    user = settings["USER"] or ""
    password = f":{settings['PASSWORD']}" if settings["PASSWORD"] else ""
    host = settings["HOST"] or "127.0.0.1"
    port = settings["PORT"] or 5432
    return f"postgres://{user}{password}@{host}:{port}/{name}"


def base_env(data_dir: Path, **extra: str) -> dict[str, str]:
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "FLEET_DATA_DIR": str(data_dir),
        "DATABASE_URL": subprocess_database_url(),
        "FLEET_DB_CONN_MAX_AGE": "0",
        "FLEET_LOG_LEVEL": "WARNING",
    }
    env.update(extra)
    return env


def start_bridge(broker_port: int, data_dir: Path) -> tuple[Child, int]:
    metrics_port = free_port()
    args = [
        sys.executable,
        "manage.py",
        "bridge",
        "--url",
        f"mqtt://127.0.0.1:{broker_port}",
        "--client-id",
        f"bridge-{uuid.uuid4().hex[:8]}",
        "--metrics-port",
        str(metrics_port),
    ]
    env = base_env(
        data_dir,
        FLEET_BRIDGE_SEEN_FLUSH_SECONDS="0.2",
        FLEET_TELEMETRY_MODEL_CACHE_SECONDS="1",
    )
    child = Child("bridge", args, env, data_dir)
    wait_for_port(metrics_port, 30)
    return child, metrics_port


def start_web(data_dir: Path, token: str) -> tuple[Child, int]:
    """gunicorn with two workers in prometheus_client's multiprocess mode."""
    port = free_port()
    multiproc = data_dir / "prometheus-multiproc"
    multiproc.mkdir(parents=True, exist_ok=True)
    args = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "python:telemetry.gunicorn_hooks",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "2",
        "--timeout",
        "60",
        "fleet.wsgi",
    ]
    env = base_env(
        data_dir,
        PROMETHEUS_MULTIPROC_DIR=str(multiproc),
        FLEET_METRICS_TOKEN=token,
        FLEET_METRICS_ALLOW="",  # the token is the only way in
        FLEET_METRICS_DB_CACHE_SECONDS="1",
        FLEET_METRICS_ROLLOUT_SOURCE="telemetry_rollout_stub.progress",
        PYTHONPATH=str(HERE),
    )
    child = Child("web", args, env, data_dir)
    wait_for_port(port, 30)
    return child, port


def start_prometheus(
    data_dir: Path, *, web_port: int, bridge_port: int, token: str
) -> tuple[Child, "Prometheus"]:
    assert PROMETHEUS is not None
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ROOT / "deploy/prometheus/alerts.yml")],
        "scrape_configs": [
            {
                "job_name": "fleet-web",
                "authorization": {"type": "Bearer", "credentials": token},
                "static_configs": [{"targets": [f"127.0.0.1:{web_port}"]}],
            },
            {
                "job_name": "fleet-bridge",
                "static_configs": [{"targets": [f"127.0.0.1:{bridge_port}"]}],
            },
        ],
    }
    data_dir.mkdir(parents=True, exist_ok=True)
    config_path = data_dir / "prometheus.yml"
    config_path.write_text(json.dumps(config, indent=2))  # YAML is a superset of JSON
    args = [
        PROMETHEUS,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={data_dir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    child = Child("prometheus", args, dict(os.environ), data_dir)
    wait_for_port(port, 30)
    prometheus = Prometheus(f"http://127.0.0.1:{port}")
    prometheus.wait_ready(30)
    return child, prometheus


class Prometheus:
    """The bits of Prometheus's HTTP API the tests use."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _get(self, path: str, **params: str | list[str]) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def wait_ready(self, timeout: float) -> None:
        """Until /-/ready answers 200 (the API answers 503 while the TSDB starts)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:  # URLError and HTTPError (503) included
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.1)

    def query(self, expr: str) -> dict[str, Any]:
        """An instant query at the current time: {"resultType": ..., "result": ...}."""
        return dict(self._get("/api/v1/query", query=expr))

    def label_values(self, selector: str, label: str) -> list[str]:
        series = self._get("/api/v1/series", **{"match[]": [selector]})
        return sorted({s[label] for s in series if label in s})

    def rules(self) -> list[dict[str, Any]]:
        return list(self._get("/api/v1/rules")["groups"])


# --- simulated devices ------------------------------------------------------------------


def device_client(port: int, device_id: str, *, will: bool = False) -> mqtt.Client:
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"{device_id}-{uuid.uuid4().hex[:6]}",
        protocol=mqtt.MQTTv5,
    )
    client.max_inflight_messages_set(100)
    if will:
        client.will_set(
            topic_for(device_id, Channel.STATUS),
            DeviceStatus(status=Presence.OFFLINE).to_json(),
            qos=1,
            retain=True,
        )
    connected = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: connected.set()
    client.connect("127.0.0.1", port, keepalive=5)
    client.loop_start()
    assert connected.wait(10), "device client did not connect"
    return client


def publish(
    client: mqtt.Client, device_id: str, channel: Channel, payload: bytes, qos: int = 1
) -> None:
    retain = channel in (Channel.STATE, Channel.STATUS)
    info = client.publish(topic_for(device_id, channel), payload, qos=qos, retain=retain)
    if qos:
        info.wait_for_publish(10)


def publish_raw(client: mqtt.Client, topic: str, payload: bytes) -> None:
    client.publish(topic, payload, qos=1).wait_for_publish(30)


def state_payload(version: str, hardware: str) -> bytes:
    return ReportedState(
        agent_version="0.3.1",
        hardware=hardware,
        models=(
            ModelState(
                name="kws",
                version=version,
                release_counter=14,
                slot=Slot.B,
                status=Phase.COMMITTED,
            ),
        ),
        last_seq=7,
    ).to_json()


def event_payload(phase: Phase, code: Any = None, *, seq: int = 7) -> bytes:
    from django.utils import timezone

    return UpdateEvent(
        seq=seq,
        rollout_id="r-9",
        model="kws",
        phase=phase,
        progress=None,
        code=code,
        detail="",
        ts=timezone.now().replace(microsecond=0),
    ).to_json()
