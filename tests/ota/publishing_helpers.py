"""Building CI-signed publish requests the way fleetctl does, for API-level tests."""

import hashlib
import json
from pathlib import Path
from typing import Any

from django.test import Client
from securesystemslib.signer import Signer
from tuf.api.metadata import Metadata, TargetFile, Targets
from tuf.api.serialization.json import JSONSerializer

from ota.fleetctl import targets as fleetctl_targets


def current_metadata(client: Client, token: str, name: str = "kws") -> Metadata[Targets] | None:
    body = client.get(
        f"/api/v1/models/{name}/metadata", headers={"Authorization": f"Bearer {token}"}
    ).json()
    return Metadata.from_dict(body["metadata"]) if body.get("metadata") else None


def signed_metadata(
    current: Metadata[Targets] | None,
    signer: Signer | None,
    data: bytes,
    *,
    name: str = "kws",
    version: str = "1.0.0",
    hardware: str = "linux-x86_64-fp32",
    fmt: str = "onnx",
    counter: int | None = None,
    path: str | None = None,
    custom: dict[str, Any] | None = None,
    length: int | None = None,
    sha256: str | None = None,
) -> Metadata[Targets]:
    md = fleetctl_targets.next_metadata(current, 30)
    path = path or f"models/{name}/{version}/{hardware}/model.{fmt}"
    fields: dict[str, Any] = {
        "version": version,
        "hardware": hardware,
        "format": fmt,
        "release_counter": counter
        if counter is not None
        else fleetctl_targets.release_counter_for(md, version),
        "floor": 0,
    }
    fields.update(custom or {})
    md.signed.targets[path] = TargetFile(
        length if length is not None else len(data),
        {"sha256": sha256 or hashlib.sha256(data).hexdigest()},
        path,
        unrecognized_fields={"custom": fields},
    )
    if signer is not None:
        fleetctl_targets.sign(md, signer)
    return md


def post_publish(
    client: Client,
    token: str,
    md: Metadata[Targets] | bytes,
    data: bytes,
    tmp_path: Path,
    name: str = "kws",
) -> Any:
    raw = md if isinstance(md, bytes) else md.to_bytes(JSONSerializer())
    artifact = tmp_path / "upload.bin"
    artifact.write_bytes(data)
    with artifact.open("rb") as f:
        return client.post(
            f"/api/v1/models/{name}/publish",
            {"metadata": raw.decode(), "file": f},
            headers={"Authorization": f"Bearer {token}"},
        )


def error_code(response: Any) -> str:
    return str(json.loads(response.content)["error"]["code"])
