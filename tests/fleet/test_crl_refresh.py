"""The daily task re-signs the CRL so Mosquitto never sees an expired one."""

from datetime import UTC, datetime, timedelta

from cryptography import x509

from fleet.tasks import crl_refresh_task


def test_crl_refresh_writes_a_fresh_crl(repo, settings, tmp_path):
    settings.FLEET_CRL_PATH = tmp_path / "mqtt" / "crl.pem"
    path = crl_refresh_task()
    crl = x509.load_pem_x509_crl(settings.FLEET_CRL_PATH.read_bytes())
    assert path == str(settings.FLEET_CRL_PATH)
    assert crl.next_update_utc is not None
    assert crl.next_update_utc > datetime.now(UTC) + timedelta(days=29)
