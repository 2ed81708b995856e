"""The ESP32 client's host build (`fleet-ota-posix`) on the production broker config.

Mosquitto runs deploy/mosquitto/ as it is (TLS, require_certificate, the identity as
username, the ACL); the device's certificate comes from the real enrollment service.
The C client connects with it over mutual TLS, says it is online on its own `status`
topic, takes the retained desired state the bridge identity publishes, and reports its
update on `events`, all of which the ACL must allow for its certificate's name.
"""

import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker_tls import Peer, TlsBroker, enroll
from esp32_build import Artifacts, signed_desired

from device_agent.protocol.envelope import generate_director_key, write_public_key
from device_agent.protocol.messages import Phase, Presence, parse_event, parse_status
from device_agent.protocol.topics import Channel, topic_for

DEVICE = "esp32-mtls"
HARDWARE = "esp32s3-int8"


@pytest.fixture
def broker(repo: Path, settings, tmp_path: Path) -> Iterator[TlsBroker]:
    settings.FLEET_CRL_PATH = tmp_path / "control-plane" / "crl.pem"
    broker = TlsBroker.start_in(tmp_path / "mosquitto", settings.FLEET_CRL_PATH)
    yield broker
    broker.stop()


def test_the_c_client_updates_over_mutual_tls_within_the_acl(
    broker: TlsBroker, esp32_host: Path, tmp_path: Path
) -> None:
    # given a device enrolled through the real service, and the bridge watching it
    credential = enroll(DEVICE, tmp_path / "devices", hardware=HARDWARE)
    build = esp32_host
    bridge = Peer(broker.port, broker.bridge_credential()).connect()
    bridge.subscribe(*(topic_for(DEVICE, c) for c in (Channel.STATUS, Channel.EVENTS)))
    server = Artifacts()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    key = generate_director_key()
    write_public_key(tmp_path / "director.pem", key.public_key())
    client = subprocess.Popen(
        [
            str(build / "fleet-ota-posix"),
            "--dir", str(tmp_path / "device"),
            "--device-id", DEVICE,
            "--hardware", HARDWARE,
            "--director", str(tmp_path / "director.pem"),
            "--broker", "127.0.0.1",
            "--port", str(broker.port),
            "--cafile", str(credential.ca),
            "--cert", str(credential.cert),
            "--key", str(credential.key),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        # when it connects: its status is online (a write the ACL allows only to it)
        online = b'{"v":1,"status":"online"}'
        bridge.wait_for_message(topic_for(DEVICE, Channel.STATUS), online)
        assert parse_status(online).status is Presence.ONLINE

        # when the bridge publishes its desired state, retained
        envelope = signed_desired(key, server, DEVICE, HARDWARE, 1, "1.0.0", 10, b"\x07" * 50_000)
        bridge.publish(topic_for(DEVICE, Channel.DESIRED), envelope, retain=True)

        # then it reads it (the ACL's read of its own desired) and commits the update
        def committed() -> bool:
            events = [
                parse_event(payload)
                for topic, payload in bridge.received()
                if topic == topic_for(DEVICE, Channel.EVENTS)
            ]
            return any(e.seq == 1 and e.phase is Phase.COMMITTED for e in events)

        assert bridge.wait(committed, timeout=30), bridge.received()
    finally:
        client.send_signal(signal.SIGTERM)
        try:
            client.wait(10)
        finally:
            client.kill()
        bridge.close()
        server.shutdown()
