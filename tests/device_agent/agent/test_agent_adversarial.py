"""The adversarial suite: a real agent process against a hostile director, repository,
mirror or clock. Every attack is refused with its docs/protocol.md code in a `rejected` or
`failed` event, and the device keeps running its old model: `current` still points at
slot a, whose file still has v1's signed sha256, with nothing left in flight.

Each case copies a device running v1 (agent_rig's template) and serves it one exported
state of the real TUF repository (built by ota's services, see agent_rig.py) through a
mirror that can misbehave. Covered elsewhere: a model failing its golden-input
self-test (test_agent_end_to_end_trial.py::test_onnx_selftest_commits_good_and_rolls_back_broken;
here a model failing its load check), and power loss after the swap before the commit
(test_agent_faults.py, the `journal:swapped` ... `trial:passed` kill points).
"""

import base64
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from agent_mirror import Mirror, Rule
from agent_rig import (
    ESCAPE_PATH,
    TERMINAL,
    V1,
    V2,
    V2_ESP32,
    V3_FIX,
    V4_BROKEN,
    V5_STRANGER,
    V6_HW_LIE,
    CaseAgent,
    Rig,
    open_rig,
)
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from device_agent.protocol.envelope import DESIRED_PAYLOAD_TYPE, key_id, pae
from device_agent.protocol.messages import DesiredState

# The tests use no database themselves; the rig builds the repository in it (rolled back).
pytestmark = pytest.mark.django_db

THIRTY_DAYS_S = str(-30 * 24 * 3600)


@pytest.fixture(scope="module")
def rig(
    tmp_path_factory: pytest.TempPathFactory, django_db_setup: Any, django_db_blocker: Any
) -> Iterator[Rig]:
    with open_rig(tmp_path_factory.mktemp("adversarial"), django_db_blocker) as built:
        yield built


# --- envelopes an attacker could produce ------------------------------------------------


def _desired(agent: CaseAgent, seq: int = 2) -> DesiredState:
    issued = datetime.now(UTC).replace(microsecond=0)
    return DesiredState(
        device_id=agent.device_id,
        seq=seq,
        issued_at=issued,
        expires_at=issued + timedelta(days=1),
        models=(agent.target(V2),),
    )


def _with_signature(agent: CaseAgent, sign: Callable[[bytes], bytes]) -> bytes:
    """The v2 desired state under the pinned key's keyid, with `sign(PAE)` as signature."""
    payload = _desired(agent).to_json()
    signature = sign(pae(DESIRED_PAYLOAD_TYPE, payload))
    envelope = {
        "payload": base64.b64encode(payload).decode(),
        "payloadType": DESIRED_PAYLOAD_TYPE,
        "signatures": [
            {
                "keyid": key_id(agent.rig.director.public_key()),
                "sig": base64.b64encode(signature).decode(),
            }
        ],
    }
    return json.dumps(envelope).encode()


def _raw_r_s(agent: CaseAgent) -> bytes:
    # the director's own key and a valid ECDSA signature, but as raw r||s, not DER
    def sign(message: bytes) -> bytes:
        der = agent.rig.director.sign(message, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    return _with_signature(agent, sign)


def _rsa(agent: CaseAgent) -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _with_signature(agent, lambda m: key.sign(m, padding.PKCS1v15(), hashes.SHA256()))


def _p384(agent: CaseAgent) -> bytes:
    key = ec.generate_private_key(ec.SECP384R1())
    return _with_signature(agent, lambda m: key.sign(m, ec.ECDSA(hashes.SHA256())))


def _empty_sig(agent: CaseAgent) -> bytes:
    return _with_signature(agent, lambda m: b"")


def _sig_none(agent: CaseAgent) -> bytes:
    envelope = _with_signature(agent, lambda m: b"")
    return envelope.replace(b'"sig": ""', b'"sig": "none"')


def _stranger_director(agent: CaseAgent) -> bytes:
    from device_agent.protocol.envelope import generate_director_key, sign_desired

    return sign_desired(_desired(agent), generate_director_key())


def _payload(agent: CaseAgent, **model: Any) -> bytes:
    """A desired payload the protocol's own builder would refuse, signed by the director."""
    data = _desired(agent).to_dict()
    cast(list[dict[str, Any]], data["models"])[0].update(model)
    return agent.rig.raw_envelope(data)


# --- the attacks -------------------------------------------------------------------------


@dataclass(frozen=True)
class Attack:
    name: str
    envelope: Callable[[CaseAgent], bytes]
    code: str
    phase: str = "rejected"
    model: str | None = "kws"  # None: the whole desired state is refused
    seq: int = 2  # the event's seq (0 when the envelope's signature never verified)
    state: str = "base"  # the repository state the mirror serves
    mirror: Callable[[Mirror], None] = lambda m: None
    env: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


def _update(release: Any, **overrides: Any) -> Callable[[CaseAgent], bytes]:
    return lambda a: a.envelope(2, [a.target(release, **overrides)])


def _flip(m: Mirror) -> None:
    m.artifact_rule = Rule(flip_at=12345)


def _longer(m: Mirror) -> None:
    m.artifact_rule = Rule(extra=b"\0" * 70_000)


def _endless_timestamp(m: Mirror) -> None:
    m.metadata_rules["timestamp.json"] = Rule(endless=True)


ATTACKS = [
    # the image repository's signature
    Attack("unknown-release-key", _update(V5_STRANGER), "signature_invalid", state="stranger"),
    Attack("revoked-release-key", _update(V2), "signature_invalid", state="revoked"),
    # the bytes on the wire
    Attack("one-byte-flipped", _update(V2), "hash_mismatch", phase="failed", mirror=_flip),
    Attack("longer-than-signed", _update(V2), "length_exceeded", phase="failed", mirror=_longer),
    # the metadata on the wire
    Attack("endless-timestamp", _update(V2), "metadata_too_large", mirror=_endless_timestamp),
    Attack("replayed-timestamp", _update(V2), "rollback_detected", state="v1-only"),
    Attack("replayed-snapshot", _update(V2), "rollback_detected", state="replayed-snapshot"),
    Attack("expired-timestamp", _update(V2), "metadata_expired", state="expired-timestamp"),
    # the director's command
    Attack(
        "expired-desired-state",
        lambda a: a.envelope(
            2,
            [a.target(V2)],
            issued_at=datetime.now(UTC) - timedelta(days=2),
            expires_in=timedelta(days=1),
        ),
        "command_expired",
        model=None,
    ),
    Attack(
        "another-device",
        lambda a: a.rig.envelope("dev-other", 2, [a.target(V2)]),
        "wrong_device",
        model=None,
    ),
    Attack(
        "replayed-seq",
        lambda a: a.envelope(1, [a.target(V2)]),
        "replayed_command",
        model=None,
        seq=1,
    ),
    Attack(
        "older-seq",
        lambda a: a.envelope(0, [a.target(V2)]),
        "replayed_command",
        model=None,
        seq=0,
    ),
    # director and image repository disagree
    Attack("hash-disagrees", _update(V2, sha256=V4_BROKEN.sha256), "director_image_mismatch"),
    Attack("length-disagrees", _update(V2, length=V2.length + 1), "director_image_mismatch"),
    Attack("counter-disagrees", _update(V2, release_counter=9), "director_image_mismatch"),
    Attack("director-names-other-hardware", _update(V2_ESP32), "hw_mismatch"),
    Attack("tuf-says-other-hardware", _update(V6_HW_LIE), "hw_mismatch", state="hw-lie"),
    # paths that climb out
    Attack(
        "director-path-traversal",
        lambda a: _payload(a, path="models/kws/../../etc/x"),
        "invalid_target_path",
        model=None,
        seq=0,
    ),
    Attack(
        "both-roles-sign-an-escaping-path",
        lambda a: _payload(a, path=ESCAPE_PATH, sha256=V6_HW_LIE.sha256, length=V6_HW_LIE.length),
        "invalid_target_path",
        model=None,
        seq=0,
        state="escape",
    ),
    Attack(
        "another-models-path",
        lambda a: _payload(a, path=f"models/vad/2.0.0/{V2.hardware}/model.tflite"),
        "invalid_target_path",
        model=None,
        seq=0,
    ),
    # algorithm confusion: only a DER ECDSA P-256 signature by the pinned key counts
    Attack("raw-r-s-signature", _raw_r_s, "signature_invalid", model=None, seq=0),
    Attack("rsa-signature", _rsa, "signature_invalid", model=None, seq=0),
    Attack("p384-signature", _p384, "signature_invalid", model=None, seq=0),
    Attack("empty-signature", _empty_sig, "signature_invalid", model=None, seq=0),
    Attack("none-signature", _sig_none, "signature_invalid", model=None, seq=0),
    Attack("stranger-director", _stranger_director, "signature_invalid", model=None, seq=0),
    # a device whose clock was set back 30 days: the last trusted time still rules
    Attack(
        "clock-set-back-expired-desired-state",
        lambda a: a.envelope(
            2,
            [a.target(V2)],
            issued_at=datetime.now(UTC) - timedelta(days=10),
            expires_in=timedelta(days=5),
        ),
        "command_expired",
        model=None,
        env={"FLEET_AGENT_CLOCK_SKEW_S": THIRTY_DAYS_S},
    ),
    Attack(
        "clock-set-back-expired-timestamp",
        _update(V2),
        "metadata_expired",
        state="expired-timestamp",
        env={"FLEET_AGENT_CLOCK_SKEW_S": THIRTY_DAYS_S},
        # a clock that can be set back is not trustworthy: no issued_at bound
        # (docs/security.md); with one, the fresh desired state is issued_in_future
        config={"max_issued_ahead_s": None},
    ),
    # a model that does not load: swapped, tried, rolled back
    Attack(
        "model-fails-its-trial",
        _update(V4_BROKEN),
        "health_check_failed",
        phase="rolled_back",
    ),
]


def _refusal(agent: CaseAgent, attack: Attack) -> Any:
    return agent.wait_event(attack.seq, (attack.phase,), model=attack.model)


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.name)
def test_attack_is_refused_and_the_old_model_keeps_running(rig: Rig, attack: Attack) -> None:
    with rig.case(attack.name, state=attack.state, **attack.config) as agent:
        attack.mirror(agent.mirror)
        agent.start(attack.env)

        # when
        agent.send(attack.envelope(agent))

        # then the refusal carries its code ...
        event = _refusal(agent, attack)
        assert (event.phase, event.code) == (attack.phase, attack.code), event
        assert event.detail
        if attack.phase in TERMINAL:
            agent.wait_settled(2)
        else:
            assert not any(e.phase == "accepted" for e in agent.events())
        # ... and v1 still runs, byte for byte
        agent.assert_runs(V1, "a")
        last_seq = agent.store()["last_seq"]
        assert last_seq == (1 if attack.model is None else 2)


def test_the_clock_attacks_would_pass_on_the_skewed_clock_alone(rig: Rig) -> None:
    # The two clock cases above mean something only if, judged by the skewed clock
    # alone, the expired command and metadata would have looked valid.
    skewed_now = datetime.now(UTC) + timedelta(seconds=float(THIRTY_DAYS_S))
    assert datetime.now(UTC) - timedelta(days=5) > skewed_now
    expired = (rig.states["expired-timestamp"] / "timestamp.json").read_bytes()
    expires = datetime.fromisoformat(json.loads(expired)["signed"]["expires"])
    assert skewed_now < expires < datetime.now(UTC)


def test_a_downgrade_below_the_floor_is_refused(rig: Rig) -> None:
    with rig.case("downgrade") as agent:
        agent.start()
        # given the security fix 3.0.0 committed, which raises the floor to 3
        agent.send(agent.envelope(2, [agent.target(V3_FIX)]))
        agent.wait_event(2, ("committed",))
        agent.wait_settled(2)
        assert agent.store()["models"]["kws"]["floor"] == 3

        # when the director (rightly signed, and TUF agreeing) asks for 2.0.0, release 2
        agent.send(agent.envelope(3, [agent.target(V2)]))

        # then
        event = agent.wait_event(3, ("rejected",))
        assert event.code == "downgrade_refused"
        agent.assert_runs(V3_FIX, "b")


@pytest.mark.parametrize("where", ["artifact", "metadata"])
def test_a_trickling_server_times_out_in_bounded_time(rig: Rig, where: str) -> None:
    # a server that sends a few bytes every 0.1 s never stalls long enough for the
    # stall timeout (2 s); only the overall deadline (2 s) ends it
    with rig.case(f"trickle-{where}", download_deadline_s=2.0, metadata_deadline_s=2.0) as agent:
        if where == "artifact":
            agent.mirror.artifact_rule = Rule(trickle=(1024, 0.1))  # 4 MiB would take 7 min
        else:
            agent.mirror.metadata_rules["timestamp.json"] = Rule(trickle=(8, 0.1))
        agent.start()
        agent.wait_for(lambda: agent.states(), "the agent to come online")

        started = time.monotonic()
        agent.send(agent.envelope(2, [agent.target(V2)]))
        phase = "failed" if where == "artifact" else "rejected"
        event = agent.wait_event(2, (phase,), timeout=30)
        elapsed = time.monotonic() - started

        assert event.code == "download_timeout"
        assert "deadline" in event.detail
        assert elapsed < 10, elapsed
        if where == "artifact":
            agent.wait_settled(2)
        agent.assert_runs(V1, "a")
