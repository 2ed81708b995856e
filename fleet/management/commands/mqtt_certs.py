"""Write the production broker's TLS files (deploy/mosquitto/README.md).

Into ``--out``: ``ca.pem`` (the fleet CA certificate, Mosquitto's ``cafile``),
``broker.key`` + ``broker.pem`` (the broker's server certificate, a SAN per ``--name``)
and ``bridge.key`` + ``bridge.pem`` (the bridge's client credential, CN
``bridge.fleet``). The CRL goes to ``FLEET_CRL_PATH``, the file the control plane
rewrites on every revocation and Mosquitto's ``crlfile`` reads. Private keys are 0600.
"""

import os
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from fleet import ca
from fleet.enrollment import crl_write

CA_CERT = "ca.pem"
BROKER_KEY, BROKER_CERT = "broker.key", "broker.pem"
BRIDGE_KEY, BRIDGE_CERT = "bridge.key", "bridge.pem"
DEFAULT_NAMES = ["localhost", "127.0.0.1"]


def _write_key(path: Path, key_pem: bytes) -> None:
    ca.write_atomic(path, key_pem, mode=0o600)
    os.chmod(path, 0o600)  # in case a stale temp file had a wider mode


class Command(BaseCommand):
    help = (
        "Write the fleet CA certificate, the broker's server key and certificate, the "
        "bridge's client key and certificate and the CRL, for deploy/mosquitto/."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--out",
            type=Path,
            default=None,
            help="output directory (default: the directory of FLEET_CRL_PATH)",
        )
        parser.add_argument(
            "--name",
            action="append",
            dest="names",
            default=None,
            help="a host name or IP address clients use for the broker, repeatable; each "
            "becomes a SAN, the first also the CN (default: localhost, 127.0.0.1)",
        )
        parser.add_argument(
            "--server-days", type=int, default=825, help="broker certificate validity"
        )
        parser.add_argument(
            "--bridge-days", type=int, default=365, help="bridge certificate validity"
        )
        parser.add_argument(
            "--force", action="store_true", help="replace existing keys and certificates"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        out: Path = (options["out"] or Path(settings.FLEET_CRL_PATH).parent).resolve()
        names: list[str] = options["names"] or DEFAULT_NAMES
        if any(not name.strip() for name in names):
            raise CommandError("--name must not be empty")
        for days in ("server_days", "bridge_days"):
            if options[days] < 1:
                raise CommandError(f"--{days.replace('_', '-')} must be at least 1")
        targets = [out / f for f in (BROKER_KEY, BROKER_CERT, BRIDGE_KEY, BRIDGE_CERT)]
        existing = [str(p) for p in targets if p.exists()]
        if existing and not options["force"]:
            raise CommandError(
                f"{', '.join(existing)} already exist: pass --force to replace them "
                "(the broker and the bridge must then be restarted with the new files)"
            )
        out.mkdir(parents=True, exist_ok=True)

        ca.write_atomic(out / CA_CERT, ca.ca_certificate_pem())
        key_pem, server = ca.server_keypair_issue(names, days=options["server_days"])
        _write_key(out / BROKER_KEY, key_pem)
        ca.write_atomic(out / BROKER_CERT, server.pem)
        key_pem, bridge = ca.client_keypair_issue(ca.BRIDGE_IDENTITY, days=options["bridge_days"])
        _write_key(out / BRIDGE_KEY, key_pem)
        ca.write_atomic(out / BRIDGE_CERT, bridge.pem)
        crl = crl_write()

        self.stdout.write(f"CA certificate   {out / CA_CERT}")
        self.stdout.write(
            f"broker           {out / BROKER_CERT} (SANs: {', '.join(names)}; "
            f"until {server.not_after:%Y-%m-%d})"
        )
        self.stdout.write(
            f"bridge           {out / BRIDGE_CERT} (CN {ca.BRIDGE_IDENTITY}; "
            f"until {bridge.not_after:%Y-%m-%d})"
        )
        self.stdout.write(f"CRL              {crl}")
        self.stdout.write(
            "Substitute @CERT_DIR@, @CRL_FILE@ and the other placeholders in "
            "deploy/mosquitto/mosquitto.conf (see deploy/mosquitto/README.md)."
        )
