"""The whole system for the rollout end-to-end tests (issue 6), black box: its own
PostgreSQL database, its own Mosquitto, the web server (gunicorn), the bridge, a Celery
worker with beat on Redis, and N real ``fleet-agent`` processes enrolled through the API.

The test process talks to it the way users do: the REST API (operator and CI tokens),
``fleetctl publish``, ``/metrics``, the agents' directories, plus a read-only psycopg
connection for assertions on what the database holds.

With ``esp32_devices=N`` it also runs N ESP32 clients (the C client's host build,
``fleet-ota-posix``, hardware ``esp32s3-int8``), each enrolled with its own mbedTLS key
and CSR through the same API. Their self-test fails for the artifacts whose sha256 the
test writes into ``esp32_bad_models`` (the application's golden input failing on them).
"""

import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from mqtt_broker import MosquittoBroker, free_port, wait_for_port
from processes import Child
from service_check import require_service

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HARDWARE = "linux-x86_64-fp32"
ESP32_HARDWARE = "esp32s3-int8"
PG = os.environ.get("FLEET_E2E_PG", "postgres://postgres@127.0.0.1:5432/postgres")
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def wait_until[T](predicate: Callable[[], T | None], what: str, timeout: float = 120.0) -> T:
    """Poll ``predicate`` until it returns something truthy; fail with the last value."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (OSError, psycopg.Error) as exc:  # not up yet
            last = exc
        else:
            if value:
                return value
            last = value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class FleetSystem:
    """Everything a rollout touches, as processes on loopback (see the module docstring)."""

    def __init__(
        self,
        root: Path,
        *,
        devices: int,
        agent_args: Iterable[str] = (),
        env: dict[str, str] | None = None,
        agent_config: dict[str, Any] | None = None,
        esp32_devices: int = 0,
        esp32_env: dict[str, dict[str, str]] | None = None,
    ) -> None:
        pg_host, pg_port = "127.0.0.1", 5432
        require_service(
            reachable(pg_host, pg_port),
            "PostgreSQL on 127.0.0.1:5432",
            "apt-get install postgresql (trust auth for local connections)",
        )
        require_service(
            reachable(REDIS_HOST, REDIS_PORT),
            "Redis on 127.0.0.1:6379",
            "apt-get install redis-server",
        )
        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.data = root / "var"
        self.n_devices = devices
        self.n_esp32 = esp32_devices
        self.esp32_bad_models = root / "esp32-bad-models"
        self.esp32_env = dict(esp32_env or {})  # extra environment per ESP32 device id
        self.agent_args = list(agent_args)
        self.agent_config = dict(agent_config or {})  # set in each agent's config.json
        self.children: dict[str, Child] = {}
        self.agents: dict[str, Child] = {}
        self.db_name = f"fleet_e2e_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(PG, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.db_name}"')
        self.db_url = PG.rsplit("/", 1)[0] + f"/{self.db_name}"
        self.broker = MosquittoBroker(
            root / "mqtt",
            "allow_anonymous true\nmax_queued_messages 10000\nmax_inflight_messages 100\n",
        )
        self.web_port = free_port()
        self.base = f"http://127.0.0.1:{self.web_port}"
        self.metrics_token = uuid.uuid4().hex
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(root),
            "PYTHONUNBUFFERED": "1",
            "FLEET_DATA_DIR": str(self.data),
            "DATABASE_URL": self.db_url,
            "FLEET_DB_CONN_MAX_AGE": "0",
            "FLEET_LOG_LEVEL": "INFO",
            "CELERY_BROKER_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/{random.randint(1, 15)}",  # noqa: S311
            "FLEET_PUBLIC_URL": self.base,
            "FLEET_MQTT_URL": f"mqtt://127.0.0.1:{self.broker.port}",
            "FLEET_MQTT_BRIDGE_URL": f"mqtt://127.0.0.1:{self.broker.port}",
            "FLEET_ROLLOUT_TICK_SECONDS": "5",
            "FLEET_METRICS_TOKEN": self.metrics_token,
            "FLEET_METRICS_DB_CACHE_SECONDS": "1",
            "FLEET_BRIDGE_SEEN_FLUSH_SECONDS": "0.2",
            "FLEET_TELEMETRY_MODEL_CACHE_SECONDS": "1",
            **(env or {}),
        }
        self.operator_token = ""
        self.ci_env: dict[str, str] = {}
        self.release_keys: dict[str, Path] = {}

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        self.manage("fleet_up", "--no-serve", "--devices", "0")
        self.operator_token = self.manage(
            "api_token_create", "--user", "operator", "--name", "e2e", "--scope", "user"
        ).strip()
        self.ci_env = {
            **self.env,
            "FLEET_URL": self.base,
            # the quick start's CI token publishes kws only; these tests publish others
            "FLEET_TOKEN": self.manage(
                "api_token_create", "--user", "ci", "--role", "ci", "--model", "*"
            ).strip(),
            "FLEET_RELEASE_KEY": str(self.data / "ci" / "release.key"),
        }
        self._start_web()
        self._start(
            "bridge",
            [sys.executable, "manage.py", "bridge", "--url", self.env["FLEET_MQTT_BRIDGE_URL"]],
        )
        self.start_worker()
        self._enroll_and_run()

    @contextmanager
    def running(self) -> Iterator["FleetSystem"]:
        """Started, stopped at the end; a failure inside prints every part's log tail."""
        try:
            self.start()
            yield self
        except BaseException:
            print(self.diagnostics())
            raise
        finally:
            self.stop()

    def stop(self) -> None:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda c: c.stop(), [*self.agents.values(), *self.children.values()]))
        self.broker.stop()
        with psycopg.connect(PG, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')

    def manage(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(f"manage.py {' '.join(args)} failed:\n{done.stderr[-3000:]}")
        return done.stdout

    def _start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Child:
        child = Child(name, args, env or self.env, self.logs)
        self.children[name] = child
        return child

    def _start_web(self) -> None:
        multiproc = self.root / "prometheus-multiproc"
        multiproc.mkdir(exist_ok=True)
        self._start(
            "web",
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                "python:telemetry.gunicorn_hooks",
                "--bind",
                f"127.0.0.1:{self.web_port}",
                "--workers",
                "2",
                "--timeout",
                "120",
                "fleet.wsgi",
            ],
            {**self.env, "PROMETHEUS_MULTIPROC_DIR": str(multiproc)},
        )
        wait_for_port(self.web_port, 60)
        wait_until(lambda: self.get("/healthz")["status"] == "ok", "the web server")

    def start_worker(self) -> Child:
        """The Celery worker with an embedded beat (evaluations after events, and ticks)."""
        return self._start(
            "worker",
            [
                str(BIN / "celery"),
                "-A",
                "fleet",
                "worker",
                "--beat",
                "--schedule",
                str(self.root / "celerybeat-schedule"),
                "--concurrency",
                "2",
                "--loglevel",
                "INFO",
            ],
        )

    def device_ids(self) -> list[str]:
        return [f"e2e-{i:03d}" for i in range(self.n_devices)]

    def esp32_ids(self) -> list[str]:
        return [f"esp32-{i:03d}" for i in range(self.n_esp32)]

    def device_dir(self, device_id: str) -> Path:
        return self.root / "devices" / device_id

    def esp32_installed(self, device_id: str, model: str) -> str | None:
        """sha256 of the slot the C client's state record marks active, read from the
        slot files: the one whose bytes the client last verified and kept."""
        slots = [self.device_dir(device_id) / "slots" / f"{model}.{s}" for s in "ab"]
        reported = self.reported_slot(device_id, model)
        for path in slots:
            if reported is not None and path.name.endswith("." + reported) and path.exists():
                return hashlib.sha256(path.read_bytes()).hexdigest()
        return None

    def reported_slot(self, device_id: str, model: str) -> str | None:
        return self._reported(device_id, model, "slot")

    def _reported(self, device_id: str, model: str, field: str) -> str | None:
        """`field` of `model` in the device's reported state, as the bridge stored it."""
        rows = self.query("SELECT reported FROM fleet_device WHERE device_id = %s", device_id)
        for entry in (rows[0][0] or {}).get("models", []) if rows else []:
            if entry.get("name") == model:
                return str(entry.get(field))
        return None

    def _enroll_esp32(self) -> None:
        """Build the C client, enroll each ESP32 device with it, and run them."""
        from esp32_build import esp32_host_build

        binary = esp32_host_build(self.root / "esp32-build") / "fleet-ota-posix"
        selftest = (
            'sha=$(sha256sum "$FLEET_MODEL_PATH" | cut -d" " -f1); '
            f'test -s "$FLEET_MODEL_PATH" && ! grep -qx "$sha" {self.esp32_bad_models} 2>/dev/null'
        )
        for device_id in self.esp32_ids():
            token = self.post("/api/v1/enrollment-tokens", {"hours": 1, "hardware": ESP32_HARDWARE})
            done = subprocess.run(
                [str(binary), "enroll", "--dir", str(self.device_dir(device_id))]
                + ["--server", self.base, "--token", token["token"], "--device-id", device_id]
                + ["--hardware", ESP32_HARDWARE],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if done.returncode != 0:
                raise AssertionError(f"enrolling {device_id} failed: {done.stderr[-2000:]}")
            self.agents[device_id] = Child(
                device_id,
                [str(binary), "--dir", str(self.device_dir(device_id)), "--device-id", device_id]
                + ["--hardware", ESP32_HARDWARE, "--selftest", selftest],
                {**self.env, **self.esp32_env.get(device_id, {})},
                self.logs,
            )

    def _enroll_and_run(self) -> None:
        def enroll(device_id: str) -> None:
            token = self.post("/api/v1/enrollment-tokens", {"hours": 1, "hardware": HARDWARE})
            done = subprocess.run(
                [
                    str(BIN / "fleet-agent"),
                    "enroll",
                    "--dir",
                    str(self.device_dir(device_id)),
                    "--server",
                    self.base,
                    "--token",
                    token["token"],
                    "--device-id",
                    device_id,
                    "--hardware",
                    HARDWARE,
                ],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            if done.returncode != 0:
                raise AssertionError(f"enrolling {device_id} failed: {done.stderr[-2000:]}")
            if self.agent_config:
                config = self.device_dir(device_id) / "config.json"
                config.write_text(
                    json.dumps({**json.loads(config.read_text()), **self.agent_config})
                )

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(enroll, self.device_ids()))
        if self.n_esp32:
            self._enroll_esp32()
        for device_id in self.device_ids():
            self.agents[device_id] = Child(
                device_id,
                [
                    str(BIN / "fleet-agent"),
                    "run",
                    "--dir",
                    str(self.device_dir(device_id)),
                    *self.agent_args,
                ],
                self.env,
                self.logs,
            )
        wanted = set(self.device_ids()) | set(self.esp32_ids())
        wait_until(
            lambda: wanted <= set(self.scalars("SELECT device_id FROM fleet_device WHERE online")),
            "every agent online",
        )

    # --- HTTP -----------------------------------------------------------------------

    def _request(
        self, method: str, path: str, body: object = None, token: str | None = None
    ) -> Any:
        request = urllib.request.Request(
            self.base + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        request.add_header("Authorization", f"Bearer {token or self.operator_token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                detail: Any = json.loads(raw)
            except ValueError:
                detail = raw[:500]
            raise ApiError(exc.code, detail) from None
        return json.loads(raw) if raw[:1] in (b"{", b"[") else raw.decode()

    def get(self, path: str) -> Any:
        return self._request("GET", path)

    def post(self, path: str, body: object = None) -> Any:
        return self._request("POST", path, body if body is not None else {})

    def metrics(self) -> str:
        return str(self._request("GET", "/metrics", token=self.metrics_token))

    # --- CI -------------------------------------------------------------------------

    def model_register(self, name: str) -> None:
        """A model with its own CI release key (one key belongs to one model's role)."""
        keys = self.data / "ci" / name
        subprocess.run(
            [str(BIN / "fleetctl"), "keygen", "--out", str(keys)],
            env=self.env,
            capture_output=True,
            timeout=60,
            check=True,
        )
        self.manage("model_register", name, "--release-key", str(keys / "release.pub"))
        self.release_keys[name] = keys / "release.key"

    def publish(
        self,
        path: Path,
        *,
        name: str,
        version: str,
        meta: Iterable[str] = (),
        hardware: str = HARDWARE,
    ) -> str:
        """fleetctl publish, as CI does; returns the artifact's sha256."""
        args = [
            str(BIN / "fleetctl"),
            "publish",
            str(path),
            "--name",
            name,
            "--version",
            version,
            "--hardware",
            hardware,
            "--format",
            "onnx",
        ]
        for item in meta:
            args += ["--meta", item]
        key = self.release_keys.get(name, self.data / "ci" / "release.key")
        done = subprocess.run(
            args,
            env={**self.ci_env, "FLEET_RELEASE_KEY": str(key)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(f"fleetctl publish failed: {done.stdout}{done.stderr}")
        return hashlib.sha256(path.read_bytes()).hexdigest()

    # --- rollouts -------------------------------------------------------------------

    def rollout_create(self, **body: Any) -> dict[str, Any]:
        rollout: dict[str, Any] = self.post("/api/v1/rollouts/", body)
        return rollout

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        rollout: dict[str, Any] = self.get(f"/api/v1/rollouts/{rollout_id}/")
        return rollout

    def rollout_status(self, rollout_id: str) -> str:
        return str(self.rollout(rollout_id)["status"])

    def audit(self, rollout_id: str) -> list[dict[str, Any]]:
        return self._all(f"/api/v1/rollouts/{rollout_id}/audit")

    def rollout_devices(self, rollout_id: str) -> list[dict[str, Any]]:
        return self._all(f"/api/v1/rollouts/{rollout_id}/devices")

    def _all(self, path: str) -> list[dict[str, Any]]:
        page = self.get(path)
        if isinstance(page, list):
            return page
        items = list(page["results"])
        while page.get("next"):
            page = self.get(page["next"].removeprefix(self.base))
            items += page["results"]
        return items

    # --- the database and the devices ------------------------------------------------

    def query(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            return list(conn.execute(sql, params).fetchall())

    def scalars(self, sql: str, *params: object) -> list[Any]:
        return [row[0] for row in self.query(sql, *params)]

    def installed(self, device_id: str, model: str) -> str | None:
        """sha256 of the file the device's `current` link points at, or None."""
        current = self.device_dir(device_id) / "models" / model / "current"
        files = sorted(current.glob("*")) if current.exists() else []
        if not files:
            return None
        return hashlib.sha256(files[0].read_bytes()).hexdigest()

    def reported_version(self, device_id: str, model: str) -> str | None:
        return self._reported(device_id, model, "version")

    def diagnostics(self) -> str:
        parts = [f"--- {c.name}\n{c.log_tail(25)}" for c in self.children.values()]
        parts += [f"--- {c.name}\n{c.log_tail(8)}" for c in list(self.agents.values())[:3]]
        parts += [
            f"--- {d}\n{self.agents[d].log_tail(15)}" for d in self.esp32_ids() if d in self.agents
        ]
        return "\n".join(parts)
