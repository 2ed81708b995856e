"""``fleetctl``: the CI side of publishing (imports no Django).

    fleetctl keygen --out DIR
    fleetctl publish FILE --name kws --version 1.4.0 --hardware esp32s3-int8 --format tflite
    fleetctl resign --name kws

Configured by FLEET_URL, FLEET_TOKEN and FLEET_RELEASE_KEY (the release private key
file). The release key never leaves CI: fleetctl fetches the model's current targets
metadata, adds the new target, signs it and uploads metadata and bytes in one request.
"""

import argparse
import hashlib
import json
import os
import secrets
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests
from securesystemslib.signer import Signer
from tuf.api.metadata import Metadata, TargetFile, Targets
from tuf.api.serialization.json import JSONSerializer

from ota.signing import KeyFileError, keypair_generate, signer_load

RESERVED = {"version", "hardware", "format", "release_counter", "floor"}
MAX_ATTEMPTS = 5
CHUNK = 1024 * 1024


class CliError(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class MultipartBody:
    """``multipart/form-data`` with the metadata part, then the file streamed from disk.

    It has a length, so requests sends a Content-Length and streams the iterator: the
    artifact is never held in memory (requests-toolbelt's encoder did the same at several
    times the CPU cost, docs/benchmarks.md).
    """

    def __init__(self, metadata: bytes, path: Path) -> None:
        boundary = secrets.token_hex(16)
        self.content_type = f"multipart/form-data; boundary={boundary}"
        self.path = path
        self.head = (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="metadata"; filename="metadata.json"\r\n'
            "Content-Type: application/json\r\n\r\n"
        ).encode() + metadata + (
            f"\r\n--{boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="artifact"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        self.tail = f"\r\n--{boundary}--\r\n".encode()
        self.size = len(self.head) + path.stat().st_size + len(self.tail)

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[bytes]:
        yield self.head
        with self.path.open("rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk
        yield self.tail


def _env(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise CliError("malformed", f"set {name}")
    return value


class Client:
    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.session.headers["User-Agent"] = "fleetctl/1"

    def _check(self, response: requests.Response) -> Any:
        if response.ok:
            return response.json()
        try:
            error = response.json()["error"]
            raise CliError(error["code"], error["detail"])
        except (ValueError, KeyError, TypeError):
            raise CliError(
                "malformed", f"HTTP {response.status_code}: {response.text[:200]}"
            ) from None

    def metadata(self, name: str) -> Metadata[Targets] | None:
        body = self._check(
            self.session.get(f"{self.url}/api/v1/models/{name}/metadata", timeout=30)
        )
        if body.get("metadata") is None:
            return None
        md: Metadata[Any] = Metadata.from_dict(body["metadata"])
        if not isinstance(md.signed, Targets):
            raise CliError("malformed", "the server returned non-targets metadata")
        return md

    def publish(self, name: str, md: Metadata[Targets], path: Path) -> Any:
        body = MultipartBody(md.to_bytes(JSONSerializer()), path)
        response = self.session.post(
            f"{self.url}/api/v1/models/{name}/publish",
            data=body,
            headers={"Content-Type": body.content_type, "Content-Length": str(len(body))},
            timeout=(30, 3600),
        )
        return self._check(response)

    def put_metadata(self, name: str, md: Metadata[Targets]) -> Any:
        return self._check(
            self.session.put(
                f"{self.url}/api/v1/models/{name}/metadata",
                json={"metadata": md.to_dict()},
                timeout=30,
            )
        )


def file_digest(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def parse_meta(items: list[str]) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise CliError("malformed", f"--meta {item!r} is not KEY=VALUE")
        if key in RESERVED:
            raise CliError("malformed", f"--meta {key} is set by its own option")
        try:
            # TUF signs canonical JSON, which has no floats: keep decimals as strings.
            facts[key] = json.loads(raw, parse_float=str)
        except ValueError:
            facts[key] = raw
    return facts


def next_metadata(current: Metadata[Targets] | None, expires_days: int) -> Metadata[Targets]:
    expires = (datetime.now(UTC) + timedelta(days=expires_days)).replace(microsecond=0)
    if current is None:
        return Metadata(Targets(version=1, expires=expires))
    current.signed.version += 1
    current.signed.expires = expires
    return current


def release_counter_for(md: Metadata[Targets], version: str) -> int:
    """The counter of an existing variant of this version, else one above every other."""
    counters = {}
    for target in md.signed.targets.values():
        custom = target.custom
        if isinstance(custom.get("release_counter"), int):
            counters[custom.get("version")] = custom["release_counter"]
    if version in counters:
        return int(counters[version])
    return max(counters.values(), default=0) + 1


def sign(md: Metadata[Targets], signer: Signer) -> None:
    md.signatures.clear()
    md.sign(signer)


def cmd_keygen(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    key = keypair_generate(out / "release.key", out / "release.pub")
    print(f"wrote {out / 'release.key'} (keep it secret: CI only) and {out / 'release.pub'}")
    print(f"keyid {key.keyid}")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise CliError("malformed", f"{path} is not a file")
    signer = signer_load(Path(_env("FLEET_RELEASE_KEY")))
    client = Client(_env("FLEET_URL"), _env("FLEET_TOKEN"))
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
        print(json.dumps(artifact, indent=2))
        return 0
    return 1  # pragma: no cover - the loop returns or raises


def cmd_resign(args: argparse.Namespace) -> int:
    signer = signer_load(Path(_env("FLEET_RELEASE_KEY")))
    client = Client(_env("FLEET_URL"), _env("FLEET_TOKEN"))
    current = client.metadata(args.name)
    if current is None:
        raise CliError("malformed", f"{args.name} has nothing published to re-sign")
    md = next_metadata(current, args.expires_days)
    sign(md, signer)
    print(json.dumps(client.put_metadata(args.name, md)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleetctl", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    keygen = sub.add_parser("keygen", help="make a release key pair")
    keygen.add_argument("--out", required=True)
    keygen.set_defaults(func=cmd_keygen)
    publish = sub.add_parser("publish", help="sign and upload a model artifact")
    publish.add_argument("file")
    publish.add_argument("--name", required=True)
    publish.add_argument("--version", required=True)
    publish.add_argument("--hardware", required=True)
    publish.add_argument("--format", required=True)
    publish.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE")
    publish.add_argument("--release-counter", type=int, default=0)
    publish.add_argument("--floor", type=int, default=0)
    publish.add_argument("--expires-days", type=int, default=365)
    publish.set_defaults(func=cmd_publish)
    resign = sub.add_parser("resign", help="re-sign the model's metadata (key rotation)")
    resign.add_argument("--name", required=True)
    resign.add_argument("--expires-days", type=int, default=365)
    resign.set_defaults(func=cmd_resign)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"fleetctl: {exc.code}: {exc.detail}", file=sys.stderr)
        return 1
    except KeyFileError as exc:
        print(f"fleetctl: malformed: {exc}", file=sys.stderr)
        return 1
    except requests.RequestException as exc:
        print(f"fleetctl: download_failed: cannot reach the server: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
