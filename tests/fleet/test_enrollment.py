"""Enrollment through the REST API: one-time tokens, CSRs, pinned trust, nothing half-made."""

import json
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from device_csr import make_csr, weak_rsa_csr
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from device_agent.protocol.envelope import load_public_key_pem
from fleet.enrollment import crl_write, device_revoke, enrollment_token_create
from fleet.models import Device, DeviceCertificate, EnrollmentToken, Group


@pytest.fixture
def operator(db):
    return User.objects.create_superuser("op", "op@example.com", "pw-long-enough-123")


def _enroll(
    token: str,
    device_id: str = "dev-0001",
    hardware: str = "linux-x86_64-fp32",
    csr: bytes | None = None,
):
    body = {
        "token": token,
        "device_id": device_id,
        "hardware": hardware,
        "csr": (csr or make_csr()[1]).decode(),
        "agent_version": "0.1.0",
    }
    return Client().post("/api/v1/enroll", json.dumps(body), content_type="application/json")


def _code(response) -> str:
    return str(response.json()["error"]["code"])


def test_operator_token_then_device_enrolls_with_pinned_trust(repo, operator):
    # given an operator-made token bound to a group and hardware
    Group.objects.create(name="berlin")
    client = Client()
    client.force_login(operator)
    made = client.post(
        "/api/v1/enrollment-tokens",
        {"hardware": "linux-x86_64-fp32", "group": "berlin", "hours": 1},
        content_type="application/json",
    )
    assert made.status_code == 201
    token = made.json()["token"]
    assert EnrollmentToken.objects.get().secret_hash not in token

    # when a device enrolls with it
    response = _enroll(token, "dev-0001")

    # then it gets a certificate for its id, the CA, the director key and the TUF root
    assert response.status_code == 201, response.content
    body = response.json()
    cert = x509.load_pem_x509_certificate(body["certificate"].encode())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev-0001"
    ca = x509.load_pem_x509_certificate(body["ca_certificate"].encode())
    cert.verify_directly_issued_by(ca)
    load_public_key_pem(body["director_public_key"])
    assert body["tuf_root"]["signed"]["_type"] == "root"
    assert body["broker_url"].startswith("mqtt")
    device = Device.objects.get(device_id="dev-0001")
    assert [g.name for g in device.groups.all()] == ["berlin"]
    assert DeviceCertificate.objects.get(device=device).serial == format(cert.serial_number, "x")


def test_csr_subject_cannot_choose_the_certificate_cn(repo):
    _, token = enrollment_token_create(by=None)
    response = _enroll(token, "dev-a", csr=make_csr(common_name="bridge.fleet")[1])
    cert = x509.load_pem_x509_certificate(response.json()["certificate"].encode())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev-a"


def _nothing_created(before_devices: int = 0) -> None:
    assert Device.objects.count() == before_devices
    assert DeviceCertificate.objects.count() == before_devices


def test_reused_token_is_unauthorized(repo):
    _, token = enrollment_token_create(by=None)
    assert _enroll(token, "dev-1").status_code == 201
    again = _enroll(token, "dev-2")
    assert again.status_code == 401
    assert _code(again) == "unauthorized"
    _nothing_created(1)


def test_expired_token_is_unauthorized(repo):
    made, token = enrollment_token_create(by=None)
    EnrollmentToken.objects.filter(pk=made.pk).update(expires_at=timezone.now() - timedelta(1))
    response = _enroll(token)
    assert response.status_code == 401
    assert "expired" in response.json()["error"]["detail"]
    _nothing_created()


@pytest.mark.parametrize("token", ["", "enr_nope", "enr_0123456789ab_wrong", "x" * 199])
def test_unknown_token_is_refused(repo, token):
    response = _enroll(token)
    assert response.status_code in {400, 401}
    assert _code(response) in {"unauthorized", "malformed"}
    _nothing_created()


@pytest.mark.parametrize(
    "csr",
    [
        b"not a csr",
        b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        weak_rsa_csr(),
        b"A" * 20000,
    ],
)
def test_bad_csr_is_malformed_and_keeps_the_token(repo, csr):
    made, token = enrollment_token_create(by=None)
    response = _enroll(token, csr=csr)
    assert response.status_code == 400
    assert _code(response) == "malformed"
    _nothing_created()
    made.refresh_from_db()
    assert made.used_at is None


def test_tampered_csr_signature_is_malformed(repo):
    _, csr = make_csr()
    _, other = make_csr()
    # splice: the body of one CSR with another's signature no longer verifies
    a = x509.load_pem_x509_csr(csr)
    b = x509.load_pem_x509_csr(other)
    assert a.is_signature_valid
    assert b.is_signature_valid
    from cryptography.hazmat.primitives import serialization

    der = bytearray(a.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0xFF  # flip a signature byte
    import base64

    pem = (
        b"-----BEGIN CERTIFICATE REQUEST-----\n"
        + base64.encodebytes(bytes(der))
        + b"-----END CERTIFICATE REQUEST-----\n"
    )
    _, token = enrollment_token_create(by=None)
    response = _enroll(token, csr=pem)
    assert response.status_code == 400
    _nothing_created()


def test_id_collision_is_a_conflict(repo):
    _, t1 = enrollment_token_create(by=None)
    made2, t2 = enrollment_token_create(by=None)
    assert _enroll(t1, "dev-x").status_code == 201
    response = _enroll(t2, "dev-x")
    assert response.status_code == 409
    assert _code(response) == "conflict"
    _nothing_created(1)
    made2.refresh_from_db()
    assert made2.used_at is None


def test_hardware_bound_token_refuses_other_hardware(repo):
    _, token = enrollment_token_create(by=None, hardware="esp32s3-int8")
    response = _enroll(token, hardware="jetson-orin-fp16")
    assert response.status_code == 400
    assert _code(response) == "hw_mismatch"
    _nothing_created()


@pytest.mark.parametrize("device_id", ["", "a/b", "+", "#", "x" * 65, "dev.1", "dév"])
def test_bad_device_id_is_malformed(repo, device_id):
    _, token = enrollment_token_create(by=None)
    response = _enroll(token, device_id)
    assert response.status_code == 400
    _nothing_created()


def test_revocation_writes_the_serial_into_the_crl(repo, settings, tmp_path):
    settings.FLEET_CRL_PATH = tmp_path / "crl.pem"
    _, token = enrollment_token_create(by=None)
    cert = x509.load_pem_x509_certificate(_enroll(token, "dev-r").json()["certificate"].encode())
    device_revoke(device=Device.objects.get(device_id="dev-r"), reason="stolen")
    crl_write()  # on_commit does not run inside the test transaction
    crl = x509.load_pem_x509_crl(settings.FLEET_CRL_PATH.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    assert Device.objects.get(device_id="dev-r").revoked_at is not None


def test_malformed_json_body_is_malformed(repo):
    response = Client().post("/api/v1/enroll", "{nope", content_type="application/json")
    assert response.status_code == 400
    assert _code(response) == "malformed"
