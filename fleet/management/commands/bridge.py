"""``manage.py bridge``: run the MQTT bridge until SIGTERM or SIGINT."""

import signal
import threading
from types import FrameType
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser
from prometheus_client import start_http_server

from fleet.bridge.config import BridgeConfig
from fleet.bridge.runner import Bridge


class Command(BaseCommand):
    help = (
        "Run the MQTT bridge: store device state, events and presence, publish desired "
        "state. Settings FLEET_MQTT_BRIDGE_* and FLEET_BRIDGE_*; the options below win."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--url", help="broker, mqtt://host:1883 or mqtts://host:8883")
        parser.add_argument("--client-id", help="stable MQTT client id (one per replica)")
        parser.add_argument(
            "--no-share",
            action="store_true",
            help="plain subscriptions, for brokers without $share (amqtt); one replica only",
        )
        parser.add_argument("--share-group", help="the $share group of the replicas")
        parser.add_argument(
            "--protocol", choices=["5", "3.1.1"], help="MQTT version (3.1.1 for amqtt)"
        )
        parser.add_argument(
            "--metrics-port", type=int, help="serve Prometheus metrics on 127.0.0.1:PORT"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            config = BridgeConfig.from_settings(
                url=options["url"],
                client_id=options["client_id"],
                share_group=options["share_group"],
                protocol=options["protocol"],
                use_shared=False if options["no_share"] else None,
            )
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from None
        if options["metrics_port"] is not None:
            start_http_server(options["metrics_port"], addr="127.0.0.1")
        stop = threading.Event()

        def request_stop(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        Bridge(config).run(stop)
