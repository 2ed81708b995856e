"""`fleet-agent run`: wire the MQTT link, event delivery, metrics and the update runner."""

import logging
import signal
import threading

from device_agent import AGENT_VERSION
from device_agent.agent_lock import agent_lock
from device_agent.config import AgentConfig, Layout
from device_agent.delivery import EventDelivery
from device_agent.mqtt import MqttLink, TlsFiles
from device_agent.mqtt_adapters import MqttPublisher, MqttTelemetryOut, event_delivery
from device_agent.testhooks import agent_clock
from device_agent.watchdog import systemd_watch

log = logging.getLogger("device_agent")


def agent_run(*, layout: Layout, simulate_app: str | None, simulate_app_interval: float) -> None:
    """Run the agent until SIGTERM or SIGINT (or a download interrupted by them)."""
    from device_agent.download import Interrupted  # lazy: tuf is heavy
    from device_agent.metrics_server import MetricsService
    from device_agent.runner import PUBLISH_STATE, Runner
    from device_agent.simapp import SimulatedApp

    config = AgentConfig.load(layout.root)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with agent_lock(layout):
        runner: Runner | None = None

        def on_desired(payload: bytes) -> None:
            if runner is not None:
                runner.offer_desired(payload)

        delivery: EventDelivery | None = None
        metrics: MetricsService | None = None

        def on_connected() -> None:
            if delivery is not None:
                delivery.on_connected()
            if metrics is not None:
                metrics.on_connected()
            if runner is not None:
                runner.inbox.put(PUBLISH_STATE)

        def on_acks(payload: bytes) -> None:
            if delivery is not None:
                delivery.on_acks(payload)
            if metrics is not None:
                metrics.on_acks(payload)

        link = MqttLink(
            broker_url=config.broker_url,
            device_id=config.device_id,
            tls=TlsFiles(ca=layout.ca, cert=layout.cert, key=layout.key),
            on_desired=on_desired,
            on_connected=on_connected,
            on_acks=on_acks,
            protocol=config.mqtt_protocol,
        )
        layout.make_dirs()
        delivery = event_delivery(layout, link)
        clock = agent_clock()
        runner = Runner(
            layout.root, config, publisher=MqttPublisher(link, delivery), clock=clock, stop=stop
        )
        metrics = MetricsService(
            layout=layout,
            config=config,
            tags=lambda: runner.telemetry_tags if runner is not None else {},
            out=MqttTelemetryOut(link, config.telemetry_qos),
            clock=clock,
        )
        log.info("fleet-agent %s for %s starting", AGENT_VERSION, config.device_id)
        link.start()
        delivery.start()
        metrics.start()
        if simulate_app:
            SimulatedApp(
                models_dir=layout.models,
                model=simulate_app,
                interval_s=simulate_app_interval,
                socket_path=metrics.socket_path,
                udp_port=None if metrics.socket_path else config.metrics_udp_port,
                stop=stop,
            ).start()
        try:
            runner.recover()
            systemd_watch(runner, stop)
            runner.run()
        except Interrupted:
            log.info("stopped during a download; it resumes on the next start")
        except Exception:
            log.exception("the agent stopped on an error")
            raise
        finally:
            stop.set()
            metrics.close(timeout=2.0)
            delivery.stop()
            link.stop()
