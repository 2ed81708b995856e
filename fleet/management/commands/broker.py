"""The embedded MQTT broker for one machine: Mosquitto when installed, else amqtt.

Plain TCP on loopback only. Production uses Mosquitto with TLS, client certificates
and ACLs (deploy/mosquitto/); this command says so every time it starts.
"""

import asyncio
import logging
import os
import pwd
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

WARNING = (
    "embedded broker: plain MQTT on 127.0.0.1:{port}, anonymous, no TLS. Production runs "
    "Mosquitto with TLS, client certificates and ACLs: see deploy/mosquitto/."
)

AUTOSAVE_SECONDS = 1
# How long amqtt may take to close its connections on SIGTERM before the command exits.
SHUTDOWN_S = 5


def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None


class Command(BaseCommand):
    help = "Run a local MQTT broker on loopback (Mosquitto if installed, else amqtt)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=1883)
        parser.add_argument("--engine", choices=["auto", "mosquitto", "amqtt"], default="auto")

    def handle(self, *args: Any, **options: Any) -> None:
        port: int = options["port"]
        engine = options["engine"]
        if engine == "auto":
            engine = "mosquitto" if mosquitto_binary() else "amqtt"
        self.stderr.write(self.style.WARNING(WARNING.format(port=port)))
        if engine == "mosquitto":
            self._mosquitto(port)
        else:
            self._amqtt(port)

    def _mosquitto(self, port: int) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise SystemExit("mosquitto is not installed (apt-get install mosquitto)")
        directory = Path(settings.FLEET_DATA_DIR) / "mqtt"
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / "mosquitto.conf"
        # Started as root (a container), mosquitto would switch to the "mosquitto" user,
        # which may not write this directory: no log and no persistence at exit. It runs
        # as whoever started it (the option only matters to root).
        user = pwd.getpwuid(os.geteuid()).pw_name
        config.write_text(
            "# written by manage.py broker: embedded default, NOT for production\n"
            f"user {user}\n"
            f"persistence true\npersistence_location {directory}/\n"
            # Saved every second, not every 30 minutes (the default): a broker killed
            # mid-rollout comes back with the desired states it had acknowledged.
            f"autosave_interval {AUTOSAVE_SECONDS}\n"
            f"log_dest file {directory}/mosquitto.log\n"
            "max_packet_size 131072\nmax_queued_messages 100000\n"
            f"listener {port} 127.0.0.1\nallow_anonymous true\n"
        )
        self.stdout.write(f"mosquitto listening on 127.0.0.1:{port}", ending="\n")
        self.stdout.flush()
        process = subprocess.Popen([binary, "-c", str(config)])  # noqa: S603 - our own binary and file
        signal.signal(signal.SIGTERM, lambda *_: process.terminate())
        try:
            process.wait()
        except KeyboardInterrupt:
            process.terminate()
            process.wait()

    def _amqtt(self, port: int) -> None:
        from amqtt.broker import Broker

        for noisy in ("amqtt", "transitions"):
            logging.getLogger(noisy).setLevel(logging.WARNING)

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            },
        }

        async def run() -> None:
            broker = Broker(config)
            await broker.start()
            self.stdout.write(f"amqtt listening on 127.0.0.1:{port} (no $share support)")
            self.stdout.flush()
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
            try:
                # amqtt keeps a connection whose session never started (a port probe) open,
                # and shutdown() waits for every connection to close: bound it.
                await asyncio.wait_for(broker.shutdown(), SHUTDOWN_S)
            except TimeoutError:
                self.stderr.write(f"amqtt did not shut down within {SHUTDOWN_S}s; exiting")
                self.stderr.flush()
                os._exit(0)

        asyncio.run(run())
