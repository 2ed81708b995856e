"""Seed the quick start's sample (fleet/sample.py); run by ``manage.py fleet_up`` with the
children's environment, so the rollouts' artifact URLs and tasks use the running system."""

import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from fleet.sample import sample_seed


class Command(BaseCommand):
    help = "Publish the sample model kws in two versions and start its rollouts (once)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("devices", nargs="+", help="the simulated devices' ids")
        parser.add_argument("--timeout", type=float, default=300)

    def handle(self, *args: Any, **options: Any) -> None:
        missing = [
            v for v in ("FLEET_URL", "FLEET_TOKEN", "FLEET_RELEASE_KEY") if v not in os.environ
        ]
        if missing:
            raise CommandError(f"set {', '.join(missing)} (fleetctl publishes as CI would)")
        rollout_id = sample_seed(
            ci_env=dict(os.environ), devices=options["devices"], timeout=options["timeout"]
        )
        self.stdout.write(rollout_id or "")
