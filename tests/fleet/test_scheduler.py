"""The embedded beat runs every periodic task (here: once) without a Celery broker."""

import io

from django.core.management import call_command


def test_scheduler_once_runs_the_periodic_tasks(repo, settings, tmp_path):
    settings.FLEET_CRL_PATH = tmp_path / "mqtt" / "crl.pem"
    out = io.StringIO()
    call_command("scheduler", once=True, stdout=out)
    assert "rollouts-tick" in out.getvalue()
    assert "tuf-refresh-timestamp" in out.getvalue()
    assert settings.FLEET_CRL_PATH.exists()  # crl-refresh ran
