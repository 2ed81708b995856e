"""``fleetctl keygen``, ``publish`` and ``resign``: the release key and signed artifacts."""

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from tuf.api.metadata import TargetFile

from device_agent.protocol import identifiers
from ota.fleetctl.http import CliError, client_from_env, release_key_from_env
from ota.fleetctl.options import identifier, print_result
from ota.fleetctl.targets import (
    file_digest,
    next_metadata,
    parse_meta,
    release_counter_for,
    sign,
)
from ota.signing import keypair_generate, signer_load

MAX_ATTEMPTS = 5


def parse_artifact_file(text: str) -> str:
    """The artifact's file name becomes the last segment of its target path."""
    identifier(identifiers.FILENAME)(Path(text).name)
    return text


def cmd_keygen(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    key = keypair_generate(out / "release.key", out / "release.pub")
    written = {
        "private_key": str(out / "release.key"),
        "public_key": str(out / "release.pub"),
        "keyid": key.keyid,
    }
    text = (
        f"wrote {out / 'release.key'} (keep it secret: CI only) and {out / 'release.pub'}\n"
        f"keyid {key.keyid}"
    )
    print_result(args, written, text)
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise CliError("malformed", f"{path} is not a file")
    signer = signer_load(release_key_from_env())
    client = client_from_env()
    facts = parse_meta(args.meta)
    sha256, length = file_digest(path)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        md = next_metadata(client.metadata(args.name), args.expires_days)
        counter = args.release_counter or release_counter_for(md, args.version)
        custom: dict[str, Any] = dict(facts)
        custom.update(
            version=args.version,
            hardware=args.hardware,
            format=args.format,
            release_counter=counter,
            floor=args.floor,
        )
        target_path = f"models/{args.name}/{args.version}/{args.hardware}/{path.name}"
        md.signed.targets[target_path] = TargetFile(
            length, {"sha256": sha256}, target_path, unrecognized_fields={"custom": custom}
        )
        sign(md, signer)
        try:
            artifact = client.publish(args.name, md, path)
        except CliError as exc:
            if exc.code == "conflict" and attempt < MAX_ATTEMPTS:
                print(f"fleetctl: {exc.detail} (attempt {attempt})", file=sys.stderr)
                time.sleep(0.2 * attempt)
                continue
            raise
        print_result(args, artifact, artifact_text(artifact))
        return 0
    return 1  # pragma: no cover - the loop returns or raises


def artifact_text(artifact: dict[str, Any]) -> str:
    """A published variant for people: what, where, and how to check it."""
    return (
        f"published {artifact.get('model')} {artifact.get('version')} for "
        f"{artifact.get('hardware')} ({artifact.get('format')}), release counter "
        f"{artifact.get('release_counter')}\n"
        f"  target  {artifact.get('target_path')}\n"
        f"  sha256  {artifact.get('sha256')}  {artifact.get('length')} bytes"
    )


def cmd_resign(args: argparse.Namespace) -> int:
    signer = signer_load(release_key_from_env())
    client = client_from_env()
    current = client.metadata(args.name)
    if current is None:
        raise CliError("malformed", f"{args.name} has nothing published to re-sign")
    md = next_metadata(current, args.expires_days)
    sign(md, signer)
    stored = client.put_metadata(args.name, md)
    text = f"re-signed {args.name}: targets metadata version {stored.get('version')}"
    print_result(args, stored, text)
    return 0
