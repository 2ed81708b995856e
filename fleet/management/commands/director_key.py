"""Make the director's signing key, or print its public half (docs/operator-guide.md).

    manage.py director_key create [--force]
    manage.py director_key show-public [--out FILE]

The private key lives only in ``FLEET_KEYS_DIR/director.pem`` on the server (0600;
docs/security.md); nothing here prints it. Devices pin the public key at enrollment, so
there is no rotation in place: ``create --force`` replaces the key, and then every enrolled
device must enroll again.
"""

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from device_agent.protocol.envelope import key_id, public_key_to_pem
from device_agent.protocol.fsutil import write_atomic
from fleet.keys import (
    DirectorKeyError,
    director_key_create,
    director_key_path,
    director_key_read,
)
from fleet.models import Device


class Command(BaseCommand):
    help = "Create the director's signing key in FLEET_KEYS_DIR, or print its public key."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser(
            "create", help="a new ECDSA P-256 key in FLEET_KEYS_DIR/director.pem (0600)"
        )
        create.add_argument(
            "--force",
            action="store_true",
            help="replace an existing key: every enrolled device must then enroll again",
        )
        show = sub.add_parser("show-public", help="print the public key (PEM) devices pin")
        show.add_argument(
            "--out", type=Path, help="write the public key to this file instead (0644)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        path = director_key_path()
        try:
            if options["action"] == "create":
                self._create(path, replace=options["force"])
            else:
                self._show_public(path, out=options["out"])
        except DirectorKeyError as exc:
            raise CommandError(str(exc)) from None

    def _create(self, path: Path, *, replace: bool) -> None:
        public = director_key_create(path=path, replace=replace)
        self.stdout.write(f"wrote {path} (key id {key_id(public)})")
        if replace:
            try:
                pinned = f"{Device.objects.enabled().count()} enrolled devices pin"
            except DatabaseError:  # the key ceremony may come before the first migrate
                pinned = "every device enrolled before pins"
            self.stderr.write(
                f"{pinned} the old key: each must enroll again. Restart the web, bridge, "
                "worker and beat processes to sign with the new one."
            )

    def _show_public(self, path: Path, *, out: Path | None) -> None:
        public = director_key_read(path=path).public_key()
        pem = public_key_to_pem(public)
        if out is None:
            self.stdout.write(pem.decode(), ending="")
            return
        if out.resolve() == path.resolve():
            raise CommandError(f"--out {out} is the private key's own file")
        try:
            write_atomic(out, pem, mode=0o644)
        except OSError as exc:
            raise CommandError(f"cannot write {out}: {exc.strerror}") from None
        self.stdout.write(f"wrote {out} (key id {key_id(public)})")
