"""The production broker config (deploy/mosquitto/) refuses what it must, on a real
Mosquitto over TLS, with device certificates from the real enrollment path.

Mosquitto 2.0 answers a denied publish with PUBACK 135 (MQTT 5) or a plain PUBACK
(3.1.1) and grants any SUBSCRIBE, delivering only what the ACL lets the client read.
So "nothing arrives" is asserted with a positive control: after the
forbidden messages are routed (their PUBACK came back), a message the same subscriber
may get is sent, and everything the subscriber got up to that control must be allowed:
one connection delivers in order.
"""

import datetime as dt
import io
import socket
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from broker_tls import (
    ACCEPTED,
    Credential,
    Peer,
    TlsBroker,
    device,
    enroll,
    plain_probe,
    tls_probe,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from device_csr import make_csr
from django.core.management import call_command
from django.core.management.base import CommandError
from paho.mqtt.reasoncodes import ReasonCode

from device_agent.protocol.topics import Channel, subscription_filter, topic_for
from fleet import ca
from fleet.bridge.sentinel import SENTINEL_TOPIC
from fleet.enrollment import device_revoke
from fleet.management.commands import mqtt_certs

NOT_AUTHORIZED = 135
REPORTS = (Channel.STATE, Channel.EVENTS, Channel.TELEMETRY, Channel.STATUS)
A, B = "dev-a", "dev-b"


@pytest.fixture
def broker(repo: Path, settings, tmp_path: Path) -> Iterator[TlsBroker]:
    settings.FLEET_CRL_PATH = tmp_path / "control-plane" / "crl.pem"
    broker = TlsBroker.start_in(tmp_path / "mosquitto", settings.FLEET_CRL_PATH)
    yield broker
    broker.stop()


@pytest.fixture
def devices(broker: TlsBroker, tmp_path: Path) -> dict[str, Credential]:
    return {name: enroll(name, tmp_path / "devices") for name in (A, B)}


@pytest.fixture
def connect(broker: TlsBroker) -> Iterator[Callable[..., Peer]]:
    """Connected peers, closed at teardown (before the broker stops)."""
    made: list[Peer] = []

    def make(credential: Credential, **options: Any) -> Peer:
        peer = Peer(broker.port, credential, **options)
        made.append(peer)
        return peer.connect()

    yield make
    for peer in made:
        peer.close()


def _bridge_subscribes_to_reports(bridge: Peer) -> None:
    # As production: N bridge replicas share the load with $share/bridge/...
    bridge.subscribe(*(subscription_filter(c, share_group="bridge") for c in REPORTS))


def _reason(code: ReasonCode) -> int:
    return int(code.value)


def test_a_device_receives_only_its_own_desired_state(broker, devices, connect):
    # given B subscribed to its desired state and a retained desired state for B
    bridge = connect(broker.bridge_credential())
    b = connect(devices[B])
    b.subscribe(topic_for(B, Channel.DESIRED))
    bridge.publish(topic_for(B, Channel.DESIRED), b"retained-for-b", retain=True)
    b.wait_for_message(topic_for(B, Channel.DESIRED), b"retained-for-b")

    # when A subscribes to B's desired state every way it can think of
    a = connect(devices[A])
    a.subscribe(
        topic_for(B, Channel.DESIRED),
        "fleet/v1/devices/+/desired",
        f"fleet/v1/devices/{B}/#",
        "$share/a/fleet/v1/devices/+/desired",
        "#",
    )
    # ... and B's desired state and reports flow live
    bridge.publish(topic_for(B, Channel.DESIRED), b"live-for-b", retain=True)
    for channel in REPORTS:
        assert not b.publish(topic_for(B, channel), b"from-b").is_failure
    bridge.publish(topic_for(A, Channel.DESIRED), b"control-for-a", retain=True)

    # then A gets only its own desired state (the retained one for B, sent when A
    # subscribed, and the live ones, routed before the control, would come first)
    got = a.wait_for_message(topic_for(A, Channel.DESIRED), b"control-for-a")
    assert {topic for topic, _ in got} == {topic_for(A, Channel.DESIRED)}
    # while B, legitimately subscribed, got its live update
    b.wait_for_message(topic_for(B, Channel.DESIRED), b"live-for-b")


@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["mqtt311", "mqtt5"])
def test_a_device_cannot_publish_for_another_device_or_desired_state(
    broker, devices, connect, protocol
):
    # given the bridge subscribed to every report and B to its desired state
    bridge = connect(broker.bridge_credential())
    _bridge_subscribes_to_reports(bridge)
    b = connect(devices[B])
    b.subscribe(topic_for(B, Channel.DESIRED))
    a = connect(devices[A], protocol=protocol)

    # when A publishes B's reports, B's desired state and its own desired state
    forbidden = [topic_for(B, channel) for channel in REPORTS]
    forbidden += [topic_for(B, Channel.DESIRED), topic_for(A, Channel.DESIRED)]
    codes = [_reason(a.publish(topic, b"forged", retain=True)) for topic in forbidden]

    # then MQTT 5 says "not authorized" (3.1.1 has no way to say it)
    assert codes == [NOT_AUTHORIZED if protocol == mqtt.MQTTv5 else 0] * len(forbidden)
    # and nobody gets them: A's own report (the control) reaches the bridge first ...
    assert not a.publish(topic_for(A, Channel.EVENTS), b"control").is_failure
    got = bridge.wait_for_message(topic_for(A, Channel.EVENTS), b"control")
    assert got == [(topic_for(A, Channel.EVENTS), b"control")]
    # ... and the bridge's update for B reaches B before anything A forged
    bridge.publish(topic_for(B, Channel.DESIRED), b"control-for-b")
    got = b.wait_for_message(topic_for(B, Channel.DESIRED), b"control-for-b")
    assert got == [(topic_for(B, Channel.DESIRED), b"control-for-b")]


def test_the_bridge_reads_every_device_and_writes_every_desired_state(broker, devices, connect):
    # given the bridge and two devices subscribed to their desired states
    bridge = connect(broker.bridge_credential())
    _bridge_subscribes_to_reports(bridge)
    peers = {name: connect(devices[name]) for name in (A, B)}
    for name, peer in peers.items():
        peer.subscribe(topic_for(name, Channel.DESIRED))

    # when each device reports on every channel
    for name, peer in peers.items():
        for channel in REPORTS:
            assert not peer.publish(topic_for(name, channel), name.encode()).is_failure

    # then the bridge gets all of it
    expected = {(topic_for(n, c), n.encode()) for n in (A, B) for c in REPORTS}
    assert bridge.wait(lambda: expected <= set(bridge.received())), bridge.received()

    # and its desired states reach each device
    for name, peer in peers.items():
        assert not bridge.publish(topic_for(name, Channel.DESIRED), b"desired").is_failure
        peer.wait_for_message(topic_for(name, Channel.DESIRED), b"desired")

    # but it cannot forge a device's report
    assert _reason(bridge.publish(topic_for(A, Channel.EVENTS), b"forged")) == NOT_AUTHORIZED
    assert not peers[A].publish(topic_for(A, Channel.EVENTS), b"control").is_failure
    got = bridge.wait_for_message(topic_for(A, Channel.EVENTS), b"control")
    assert (topic_for(A, Channel.EVENTS), b"forged") not in got


def test_another_devices_client_id_does_not_take_over_its_session(broker, devices, connect):
    # given B connected, and the bridge listening
    bridge = connect(broker.bridge_credential())
    _bridge_subscribes_to_reports(bridge)
    b = connect(devices[B])
    b.subscribe(topic_for(B, Channel.DESIRED))

    # when A connects with B's client id (the broker accepts: it uses A's CN instead)
    a_as_b = connect(devices[A], client_id=B)

    # then B keeps its connection: it still gets what the bridge sends it
    bridge.publish(topic_for(B, Channel.DESIRED), b"still-there")
    b.wait_for_message(topic_for(B, Channel.DESIRED), b"still-there")
    assert b.disconnected is None
    # and the impostor is A, not B: it may not publish B's events, only A's
    assert _reason(a_as_b.publish(topic_for(B, Channel.EVENTS), b"forged")) == NOT_AUTHORIZED
    assert not a_as_b.publish(topic_for(A, Channel.EVENTS), b"control").is_failure
    got = bridge.wait_for_message(topic_for(A, Channel.EVENTS), b"control")
    assert got == [(topic_for(A, Channel.EVENTS), b"control")]
    # and its session is A's: A connecting again, with any client id, takes it over
    connect(devices[A], client_id="something-else")
    assert a_as_b.wait_for_disconnect() is not None
    assert b.disconnected is None


@pytest.mark.parametrize("client_id", ["+", "#", f"fleet/v1/devices/{B}/#"])
def test_a_client_id_with_wildcards_is_replaced_by_the_cn(broker, devices, connect, client_id):
    # given the bridge listening
    bridge = connect(broker.bridge_credential())
    _bridge_subscribes_to_reports(bridge)

    # when A connects with a wildcard client id and subscribes to everything
    a = connect(devices[A], client_id=client_id)
    a.subscribe("#")

    # then it is plain A: B's desired state does not reach it, its own does
    bridge.publish(topic_for(B, Channel.DESIRED), b"for-b")
    bridge.publish(topic_for(A, Channel.DESIRED), b"control-for-a")
    got = a.wait_for_message(topic_for(A, Channel.DESIRED), b"control-for-a")
    assert got == [(topic_for(A, Channel.DESIRED), b"control-for-a")]
    # and it writes A's reports only
    assert _reason(a.publish(topic_for(B, Channel.EVENTS), b"forged")) == NOT_AUTHORIZED
    assert not a.publish(topic_for(A, Channel.EVENTS), b"control").is_failure
    got = bridge.wait_for_message(topic_for(A, Channel.EVENTS), b"control")
    assert got == [(topic_for(A, Channel.EVENTS), b"control")]


def test_a_claimed_username_is_ignored_for_the_certificate_cn(broker, devices, connect):
    # given B reporting state, and A connecting with the bridge's name as its username
    b = connect(devices[B])
    a = connect(devices[A], username=ca.BRIDGE_IDENTITY)
    a.subscribe(subscription_filter(Channel.STATE), topic_for(A, Channel.DESIRED))
    bridge = connect(broker.bridge_credential())
    b.subscribe(topic_for(B, Channel.DESIRED))

    # when B reports, then A, claiming to be the bridge, may neither read it ...
    assert not b.publish(topic_for(B, Channel.STATE), b"state-of-b").is_failure
    bridge.publish(topic_for(A, Channel.DESIRED), b"control-for-a")
    got = a.wait_for_message(topic_for(A, Channel.DESIRED), b"control-for-a")
    assert got == [(topic_for(A, Channel.DESIRED), b"control-for-a")]
    # ... nor write B's desired state
    assert _reason(a.publish(topic_for(B, Channel.DESIRED), b"forged")) == NOT_AUTHORIZED
    bridge.publish(topic_for(B, Channel.DESIRED), b"control-for-b")
    got = b.wait_for_message(topic_for(B, Channel.DESIRED), b"control-for-b")
    assert got == [(topic_for(B, Channel.DESIRED), b"control-for-b")]


def test_a_will_on_another_devices_status_is_dropped(broker, devices, connect):
    # given the bridge listening to every status
    bridge = connect(broker.bridge_credential())
    bridge.subscribe(subscription_filter(Channel.STATUS))

    # when A dies with a will on B's status, then with one on its own status
    for target in (B, A):
        peer = Peer(broker.port, devices[A], client_id=f"will-{target}")
        peer.client.will_set(topic_for(target, Channel.STATUS), b"offline", qos=1)
        peer.connect()
        # Dropping the connection without DISCONNECT makes the broker publish the will;
        # the next connection of A (same CN, same session) is accepted only after that.
        sock = peer.client.socket()
        assert isinstance(sock, socket.socket)
        sock.shutdown(socket.SHUT_RDWR)
        peer.client.loop_stop()

    # then only A's own will is delivered (the broker accepted both at CONNECT)
    got = bridge.wait_for_message(topic_for(A, Channel.STATUS), b"offline")
    assert got == [(topic_for(A, Channel.STATUS), b"offline")]


def test_a_packet_over_the_size_limit_disconnects_its_sender(broker, devices, connect):
    # given the bridge listening
    bridge = connect(broker.bridge_credential())
    _bridge_subscribes_to_reports(bridge)
    a, b = connect(devices[A]), connect(devices[B])

    # when B sends the largest allowed payload, then a larger one
    largest = b"x" * 64 * 1024
    assert not b.publish(topic_for(B, Channel.TELEMETRY), largest).is_failure
    b.client.publish(topic_for(B, Channel.TELEMETRY), b"y" * (64 * 1024 + 4096), qos=1)

    # then the broker disconnects B and drops the message
    assert b.wait_for_disconnect() is not None
    assert not a.publish(topic_for(A, Channel.EVENTS), b"control").is_failure
    got = bridge.wait_for_message(topic_for(A, Channel.EVENTS), b"control")
    assert got == [
        (topic_for(B, Channel.TELEMETRY), largest),
        (topic_for(A, Channel.EVENTS), b"control"),
    ]


def test_a_revoked_certificate_fails_the_handshake_after_the_crl_reload(
    broker, devices, settings, django_capture_on_commit_callbacks
):
    # given A can connect
    a, b = devices[A], devices[B]
    assert tls_probe(broker.port, broker.ca_file, a.cert, a.key) == ACCEPTED

    # when the control plane revokes it (the CRL is rewritten after commit) ...
    with django_capture_on_commit_callbacks(execute=True):
        device_revoke(device=device(A), reason="stolen")
    crl = x509.load_pem_x509_crl(Path(settings.FLEET_CRL_PATH).read_bytes())
    serial = int(device(A).certificates.get().serial, 16)
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    # ... and the broker is signalled
    broker.reload_and_wait()

    # then A's next handshake fails, B's still succeeds
    assert tls_probe(broker.port, broker.ca_file, a.cert, a.key) != ACCEPTED
    assert tls_probe(broker.port, broker.ca_file, b.cert, b.key) == ACCEPTED


def test_an_expired_crl_refuses_every_device(broker, devices, settings):
    # Why the control plane must re-sign the CRL (crl_write) before its nextUpdate.
    b = devices[B]
    ca_key, ca_cert = ca.ca_load_or_create()
    now = dt.datetime.now(dt.UTC)
    expired = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - dt.timedelta(days=31))
        .next_update(now - dt.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    Path(settings.FLEET_CRL_PATH).write_bytes(expired.public_bytes(serialization.Encoding.PEM))
    broker.reload_and_wait()
    assert tls_probe(broker.port, broker.ca_file, b.cert, b.key) != ACCEPTED


def test_a_certificate_from_another_ca_is_refused(broker, devices, settings, tmp_path):
    # given a certificate for B's id from a CA of the same shape that the broker does not trust
    settings.FLEET_KEYS_DIR = tmp_path / "rogue-ca"
    key_pem, csr_pem = make_csr()
    rogue = ca.device_certificate_issue(csr_pem, B)
    (tmp_path / "rogue.pem").write_bytes(rogue.pem)
    (tmp_path / "rogue.key").write_bytes(key_pem)

    # then the handshake fails (even though that CA has the same name as the fleet CA),
    # while B's real certificate works
    probe = tls_probe(broker.port, broker.ca_file, tmp_path / "rogue.pem", tmp_path / "rogue.key")
    assert probe != ACCEPTED
    assert tls_probe(broker.port, broker.ca_file, devices[B].cert, devices[B].key) == ACCEPTED


def test_a_connection_without_a_client_certificate_is_refused(broker, devices):
    b = devices[B]
    # TLS without a client certificate, or MQTT without TLS: no CONNACK either way
    assert tls_probe(broker.port, broker.ca_file) != ACCEPTED
    assert not plain_probe(broker.port).startswith(b"\x20")  # no CONNACK
    # while the same probe with a certificate is accepted
    assert tls_probe(broker.port, broker.ca_file, b.cert, b.key) == ACCEPTED


def test_mqtt_certs_writes_private_keys_0600_and_the_names_as_sans(repo, settings, tmp_path):
    settings.FLEET_CRL_PATH = tmp_path / "crl.pem"
    out = tmp_path / "certs"
    call_command(
        "mqtt_certs",
        "--out",
        str(out),
        "--name",
        "mqtt.example.com",
        "--name",
        "10.0.0.5",
        stdout=io.StringIO(),
    )

    for key in (mqtt_certs.BROKER_KEY, mqtt_certs.BRIDGE_KEY):
        assert stat.S_IMODE((out / key).stat().st_mode) == 0o600
    ca_cert = x509.load_pem_x509_certificate((out / mqtt_certs.CA_CERT).read_bytes())
    broker_cert = x509.load_pem_x509_certificate((out / mqtt_certs.BROKER_CERT).read_bytes())
    broker_cert.verify_directly_issued_by(ca_cert)
    sans = broker_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["mqtt.example.com"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    bridge_cert = x509.load_pem_x509_certificate((out / mqtt_certs.BRIDGE_CERT).read_bytes())
    bridge_cert.verify_directly_issued_by(ca_cert)
    cn = bridge_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == ca.BRIDGE_IDENTITY
    usage = bridge_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    crl = x509.load_pem_x509_crl(Path(settings.FLEET_CRL_PATH).read_bytes())
    ca_key = ca_cert.public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey)
    assert crl.is_signature_valid(ca_key)

    # and it does not replace a deployed key unless told to
    with pytest.raises(CommandError, match="--force"):
        call_command("mqtt_certs", "--out", str(out), stdout=io.StringIO())
    before = (out / mqtt_certs.BROKER_KEY).read_bytes()
    call_command("mqtt_certs", "--out", str(out), "--force", stdout=io.StringIO())
    assert (out / mqtt_certs.BROKER_KEY).read_bytes() != before


def test_a_connected_revoked_device_is_cut_off_at_the_reload(
    broker, devices, connect, settings, django_capture_on_commit_callbacks
):
    # given the control plane writes the ACL file this broker reads, and A is connected
    settings.FLEET_MQTT_ACL_PATH = str(broker.directory / "acl")
    bridge = connect(broker.bridge_credential())
    bridge.subscribe(subscription_filter(Channel.EVENTS, share_group="bridge"))
    a, b = connect(devices[A]), connect(devices[B])
    assert not a.publish(topic_for(A, Channel.EVENTS), b"before").is_failure
    bridge.wait_for_message(topic_for(A, Channel.EVENTS), b"before")

    # when A is revoked while connected and the broker reloads (the CRL alone would only
    # stop A's next connection)
    with django_capture_on_commit_callbacks(execute=True):
        device_revoke(device=device(A), reason="stolen")
    assert f"user {A}\ntopic deny #" in (broker.directory / "acl").read_text()
    broker.reload_and_wait()

    # then A's live session may no longer publish, while B's still may
    assert _reason(a.publish(topic_for(A, Channel.EVENTS), b"after")) == NOT_AUTHORIZED
    assert not b.publish(topic_for(B, Channel.EVENTS), b"control").is_failure
    got = bridge.wait_for_message(topic_for(B, Channel.EVENTS), b"control")
    assert (topic_for(A, Channel.EVENTS), b"after") not in got


def test_only_the_bridge_reads_and_writes_its_retained_sentinel(broker, devices, connect):
    # given the bridge and a device, both subscribed to the sentinel topic
    bridge = connect(broker.bridge_credential())
    peer = connect(devices[A])
    bridge.subscribe(SENTINEL_TOPIC)
    peer.subscribe(SENTINEL_TOPIC, topic_for(A, Channel.DESIRED))

    # when a device tries to write it, then the bridge does
    assert _reason(peer.publish(SENTINEL_TOPIC, b"forged", retain=True)) == NOT_AUTHORIZED
    assert not bridge.publish(SENTINEL_TOPIC, b"sentinel", retain=True).is_failure
    got = bridge.wait_for_message(SENTINEL_TOPIC, b"sentinel")
    assert (SENTINEL_TOPIC, b"forged") not in got

    # then the device never reads it (control: its desired state, sent after)
    assert not bridge.publish(topic_for(A, Channel.DESIRED), b"control").is_failure
    got = peer.wait_for_message(topic_for(A, Channel.DESIRED), b"control")
    assert [topic for topic, _ in got] == [topic_for(A, Channel.DESIRED)]


def test_retained_desired_states_survive_a_kill_after_the_autosave_interval(
    broker, devices, connect
):
    # given the bridge published a device's desired state, retained
    bridge = connect(broker.bridge_credential())
    assert not bridge.publish(topic_for(A, Channel.DESIRED), b"seq-7", retain=True).is_failure
    bridge.close()
    # when the broker saves on its own (deploy/mosquitto.conf's autosave_interval) ...
    database = broker.directory / "data" / "mosquitto.db"
    deadline = time.monotonic() + 15
    while not (database.exists() and b"seq-7" in database.read_bytes()):
        assert time.monotonic() < deadline, "the broker did not save within 15 s"
        time.sleep(0.1)
    # ... and is then killed and started again
    broker.kill()
    broker.start()

    # then the device still gets it
    peer = connect(devices[A])
    peer.subscribe(topic_for(A, Channel.DESIRED))
    peer.wait_for_message(topic_for(A, Channel.DESIRED), b"seq-7")


def test_only_the_bridge_confirms_events_and_each_device_reads_only_its_own(
    broker, devices, connect
):
    # given A listening on every acks topic it can name, B on its own
    bridge = connect(broker.bridge_credential())
    a = connect(devices[A])
    a.subscribe(topic_for(A, Channel.ACKS), "fleet/v1/devices/+/acks", "#")
    b = connect(devices[B])
    b.subscribe(topic_for(B, Channel.ACKS))

    # when B forges a confirmation for A and for itself, and the bridge confirms B's events
    for topic in (topic_for(A, Channel.ACKS), topic_for(B, Channel.ACKS)):
        assert _reason(b.publish(topic, b"forged")) == NOT_AUTHORIZED
    assert not bridge.publish(topic_for(B, Channel.ACKS), b"for-b").is_failure
    assert not bridge.publish(topic_for(A, Channel.ACKS), b"control-for-a").is_failure

    # then B gets the bridge's, and A only its own (B's would have come first)
    b.wait_for_message(topic_for(B, Channel.ACKS), b"for-b")
    got = a.wait_for_message(topic_for(A, Channel.ACKS), b"control-for-a")
    assert got == [(topic_for(A, Channel.ACKS), b"control-for-a")]
