"""What the desired-state and rollout benchmarks share: the broker they run on, a model's
artifacts in the registry, and the envelopes the director wrote (the bytes the bare
reference publishers send)."""

from pathlib import Path

from django.contrib.auth.models import User
from mqtt_broker import MosquittoBroker

from device_agent.protocol.topics import Channel, topic_for
from fleet.models import DesiredState, Device
from ota.models import Artifact, Model

HARDWARE = "linux-x86_64-fp32"
# Generous limits, set explicitly: a benchmark that loses messages measures nothing.
# max_inflight_messages is also the Receive Maximum the broker announces to publishers,
# so both publishers keep the bridge's max_inflight (100 by default) in flight.
BROKER_CONFIG = (
    "allow_anonymous true\n"
    "max_inflight_messages 1000\n"
    "max_queued_messages 1000000\n"
    "max_queued_bytes 1073741824\n"
    "max_packet_size 1048576\n"
)


def bench_broker(directory: Path) -> MosquittoBroker:
    """A Mosquitto of BROKER_CONFIG without persistence, logging errors only."""
    broker = MosquittoBroker(directory, BROKER_CONFIG, persistence=False)
    # The fixture logs every packet (log_type all): four lines per message here, which no
    # production broker writes and which would add the same cost to both sides.
    broker.stop()
    text = broker.config_path.read_text()
    broker.config_path.write_text(text.replace("log_type all\n", "log_type error\n"))
    broker.start()
    return broker


def kws_artifacts(count: int, *, username: str) -> list[Artifact]:
    """kws 1.0.0 .. 1.0.<count - 1> for HARDWARE (registry rows only: nothing downloads)."""
    user = User.objects.create(username=username)
    model = Model.objects.create(name="kws")
    artifacts = []
    for i in range(count):
        path = f"models/kws/1.0.{i}/{HARDWARE}/model.onnx"
        artifacts.append(
            Artifact.objects.create(
                model=model,
                version=f"1.0.{i}",
                hardware=HARDWARE,
                format="onnx",
                release_counter=i + 1,
                target_path=path,
                sha256=f"{i:064x}",
                length=4_000_000,
                storage_key=path,
                published_by=user,
                metadata_version=i + 1,
            )
        )
    return artifacts


def envelopes(devices: list[Device]) -> dict[str, bytes]:
    """Each device's current envelope by `desired` topic."""
    rows = DesiredState.objects.filter(device__in=devices).values_list(
        "device__device_id", "envelope"
    )
    return {topic_for(device_id, Channel.DESIRED): bytes(env) for device_id, env in rows}
