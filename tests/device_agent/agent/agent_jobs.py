"""Jobs and targets for the agent's unit tests (pure, no IO)."""

import hashlib

from device_agent.protocol.messages import ModelTarget, Slot
from device_agent.state import Job

HARDWARE = "linux-x86_64-fp32"


def make_target(
    name: str = "kws",
    version: str = "1.0.0",
    *,
    data: bytes = b"model-bytes",
    counter: int = 1,
    url: str = "http://127.0.0.1:1/tuf/targets/x",
    rollout_id: str | None = "r-1",
) -> ModelTarget:
    return ModelTarget(
        name=name,
        path=f"models/{name}/{version}/{HARDWARE}/model.bin",
        version=version,
        release_counter=counter,
        hardware=HARDWARE,
        sha256=hashlib.sha256(data).hexdigest(),
        length=len(data),
        url=url,
        rollout_id=rollout_id,
        arm=None,
    )


def make_job(
    name: str = "kws",
    version: str = "1.0.0",
    *,
    seq: int = 7,
    slot: Slot = Slot.A,
    previous: Slot | None = None,
    data: bytes = b"model-bytes",
    fmt: str = "bin",
    selftest: str | None = None,
    floor: int = 0,
    counter: int = 1,
    url: str = "http://127.0.0.1:1/tuf/targets/x",
) -> Job:
    return Job(
        seq=seq,
        target=make_target(name, version, data=data, counter=counter, url=url),
        format=fmt,
        floor=floor,
        selftest=selftest,
        slot=slot,
        previous_slot=previous,
    )
