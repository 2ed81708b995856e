"""The shared desired-state vectors (tests/vectors/desired.json) against the Python side.

Two checks keep the file honest: it is what generate.py writes today (same vectors,
same payload bytes, same expectations; signatures are randomised, so the comparison
re-signs nothing and looks at everything else), and the Python agent's own `evaluate()`
decides each vector as the file says. The C suite reads the same file
(device_agent/esp32/, CTest), so the two agents are held to one set of decisions.
"""

import base64
import hashlib
import importlib.util
import json
from datetime import datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from tuf.api.metadata import TargetFile

from device_agent.protocol.envelope import load_public_key_pem
from device_agent.protocol.messages import ModelTarget, parse_timestamp
from device_agent.state import DesiredRejected
from device_agent.store import AgentStore, ModelRecord
from device_agent.verify import Accepted, Ignored, VerifyContext, evaluate

HERE = Path(__file__).parent
DOCUMENT = json.loads((HERE / "desired.json").read_text())
VECTORS = {vector["name"]: vector for vector in DOCUMENT["vectors"]}


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vectors_generate", HERE / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class AgreeingTuf:
    """A TUF view that agrees with every director entry: what partial verification
    assumes, so only the director-side checks decide."""

    def __init__(self, models: dict[str, ModelTarget]) -> None:
        self.models = models

    def get_targetinfo(self, target_path: str) -> TargetFile | None:
        entry = self.models.get(target_path)
        if entry is None:
            return None
        custom = {
            "hardware": entry.hardware,
            "version": entry.version,
            "release_counter": entry.release_counter,
            "format": "tflite",
        }
        return TargetFile(
            length=entry.length,
            hashes={"sha256": entry.sha256},
            path=target_path,
            unrecognized_fields={"custom": custom},
        )


def _targets(envelope: bytes) -> dict[str, ModelTarget]:
    # The entries as the payload states them, for the agreeing TUF view (only consulted
    # once the envelope verified and parsed, so the payload is well formed then).
    try:
        text = json.loads(envelope)["payload"]
        altchars = b"-_" if "-" in text or "_" in text else None
        payload = json.loads(base64.b64decode(text, altchars=altchars))
        return {m["path"]: ModelTarget.from_dict(m) for m in payload["models"]}
    except Exception:
        return {}


def python_decision(vector: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    envelope = base64.b64decode(vector["envelope"])
    context = vector["context"]
    trusted = context["last_trusted_time"]
    store = AgentStore(
        path=tmp_path / "state.json",
        last_seq=context["last_seq"],
        last_digest=context["last_digest"],
        last_trusted_time=None if trusted is None else parse_timestamp(trusted),
        models={name: ModelRecord(floor=floor) for name, floor in context["floors"].items()},
    )
    now: datetime = parse_timestamp(context["now"])
    ctx = VerifyContext(
        device_id=context["device_id"],
        hardware=context["hardware"],
        director_key=load_public_key_pem(DOCUMENT["director_key"]),
        models_dir=tmp_path / "models",
        now=now,
        # Both clients bound issued_at by the same skew in these vectors.
        max_issued_ahead=timedelta(seconds=DOCUMENT["limits"]["c_max_skew_s"]),
        tuf=lambda: AgreeingTuf(_targets(envelope)),
    )
    outcome = evaluate(envelope, ctx, store)
    if isinstance(outcome, Ignored):
        return {"outcome": "ignored"}
    if isinstance(outcome, DesiredRejected):
        rejection = outcome.rejection
        return {"outcome": "rejected", "code": str(rejection.code), "seq": rejection.seq}
    assert isinstance(outcome, Accepted)
    return {
        "outcome": "accepted",
        "seq": outcome.event.seq,
        "jobs": [job.model for job in outcome.event.jobs],
        "rejected": [{"model": r.model, "code": str(r.code)} for r in outcome.event.rejected],
    }


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_python_agent_decides_as_the_vector_says(name: str, tmp_path: Path) -> None:
    vector = VECTORS[name]
    # given the decision every client must make, or the Python agent's where it differs
    wanted = vector.get("python", vector["expect"])
    # when / then
    assert python_decision(vector, tmp_path) == wanted


def test_the_file_is_what_the_generator_writes() -> None:
    # given a fresh generation (new keys, new random signatures)
    fresh = _generator().document(_generator().new_keys())
    # then the same vectors with the same descriptions, contexts, expectations and payloads
    assert [v["name"] for v in fresh["vectors"]] == [v["name"] for v in DOCUMENT["vectors"]]
    for new, old in zip(fresh["vectors"], DOCUMENT["vectors"], strict=True):
        for key in ("about", "expect", "python"):
            assert new.get(key) == old.get(key), (new["name"], key)
        assert _context(new) == _context(old), new["name"]
        assert _payload_of(new) == _payload_of(old), new["name"]
    for key in ("format", "payload_type", "limits"):
        assert fresh[key] == DOCUMENT[key]


def _context(vector: dict[str, Any]) -> dict[str, Any]:
    """The context, with a digest of the vector's own envelope (random) named as such."""
    context = dict(vector["context"])
    envelope = base64.b64decode(vector["envelope"])
    if context["last_digest"] == hashlib.sha256(envelope).hexdigest():
        context["last_digest"] = "<sha256 of the envelope>"
    return context


def _payload_of(vector: dict[str, Any]) -> bytes | None:
    """The signed payload bytes, or None when the envelope is not an object with one."""
    try:
        text = json.loads(base64.b64decode(vector["envelope"]))["payload"]
        altchars = b"-_" if "-" in text or "_" in text else None
        return base64.b64decode(text, altchars=altchars)
    except Exception:
        return None


def test_the_redelivered_vector_carries_its_envelope_digest() -> None:
    vector = VECTORS["ignored_redelivered"]
    envelope = base64.b64decode(vector["envelope"])
    assert vector["context"]["last_digest"] == hashlib.sha256(envelope).hexdigest()


def test_every_code_is_a_stable_error_code() -> None:
    from device_agent.protocol.errors import ErrorCode

    codes = set()
    for vector in DOCUMENT["vectors"]:
        for decision in (vector["expect"], vector.get("python", {})):
            if "code" in decision:
                codes.add(decision["code"])
            codes.update(r["code"] for r in decision.get("rejected", ()))
    assert codes <= {str(code) for code in ErrorCode}


def test_the_json_cases_are_what_loads_json_decides() -> None:
    # The file is deterministic: it must be exactly what the generator writes now, and
    # the generator writes loads_json's verdict for every input.
    generator = _generator()
    assert (HERE / "json.json").read_text() == generator.json_text()
    assert (HERE / "codes.json").read_text() == generator.codes_text()
    for case in json.loads(generator.json_text())["cases"]:
        data = base64.b64decode(case["input"])
        assert generator.json_verdict(data) == case.get("python", case["expect"]), case["name"]


def test_the_acks_cases_are_what_parse_acks_decides() -> None:
    # deterministic, as json.json: exactly what the generator writes from parse_acks
    generator = _generator()
    written = json.loads((HERE / "acks.json").read_text())
    assert written == generator.acks_document()
    verdicts = {case["name"]: case["valid"] for case in written["cases"]}
    # both outcomes are covered, including an escaped id the Python side unescapes
    assert verdicts["escaped_id"] is True
    assert verdicts["upper_hex"] is False
