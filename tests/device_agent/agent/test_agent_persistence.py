"""Slots, journal, store and config on disk: atomic, private, round-tripping."""

import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from agent_jobs import make_job

from device_agent.config import AgentConfig, ConfigError, Layout
from device_agent.journal import Journal, JournalError
from device_agent.protocol.fsutil import write_atomic
from device_agent.protocol.messages import Phase, Slot
from device_agent.slots import ModelSlots
from device_agent.state import IDLE, AgentState, Status
from device_agent.store import AgentStore, Installed


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_write_replaces_whole_files_privately(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    write_atomic(path, b"one")
    write_atomic(path, b"two")
    assert path.read_bytes() == b"two"
    assert mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def test_journal_round_trip_and_idle_removes_it(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.json")
    assert journal.load() == IDLE
    state = AgentState(status=Status.STAGED, job=make_job(), pending=(make_job("vad"),))
    journal.save(state)
    assert journal.load() == state
    assert mode(journal.path) == 0o600
    journal.save(IDLE)
    assert not journal.path.exists()


@pytest.mark.parametrize(
    "content", [b"{", b'{"v": 2, "state": {}}', b'{"v": 1, "state": {"status": "nope"}}', b"[]"]
)
def test_an_unreadable_journal_is_an_error(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "journal.json").write_bytes(content)
    with pytest.raises(JournalError):
        Journal(tmp_path / "journal.json").load()


def test_store_round_trip(tmp_path: Path) -> None:
    store = AgentStore.load(tmp_path / "state.json")
    assert store.last_seq is None
    assert store.floor("kws") == 0
    store.last_seq = 4
    store.last_digest = "ab"
    store.last_trusted_time = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    record = store.model("kws")
    record.floor = 3
    record.installed = Installed(
        version="1.0.0",
        release_counter=3,
        sha256="a" * 64,
        length=10,
        slot=Slot.B,
        filename="model.tflite",
        format="tflite",
        rollout_id="r-1",
        arm="A",
    )
    record.status = Phase.COMMITTED
    store.save()
    again = AgentStore.load(tmp_path / "state.json")
    assert again.to_dict() == store.to_dict()
    assert again.floor("kws") == 3
    assert mode(tmp_path / "state.json") == 0o600


def test_slots_stage_swap_and_protect_the_live_slot(tmp_path: Path) -> None:
    slots = ModelSlots(tmp_path, "kws")
    source = tmp_path / "dl.part"
    source.write_bytes(b"v1")
    assert slots.current() is None
    assert slots.inactive() is Slot.A

    slots.stage(Slot.A, source, "model.bin")
    slots.swap(Slot.A)

    assert os.readlink(tmp_path / "kws" / "current") == "slots/a"
    assert (tmp_path / "kws" / "current" / "model.bin").read_bytes() == b"v1"
    assert slots.inactive() is Slot.B
    with pytest.raises(RuntimeError):
        slots.stage(Slot.A, source, "model.bin")
    with pytest.raises(RuntimeError):
        slots.wipe(Slot.A)
    # staging is idempotent and starts from an empty slot
    (tmp_path / "kws" / "slots" / "b").mkdir(parents=True)
    (tmp_path / "kws" / "slots" / "b" / "stale").write_bytes(b"x")
    other = tmp_path / "v2.part"
    other.write_bytes(b"v2")
    slots.stage(Slot.B, other, "model.bin")
    slots.stage(Slot.B, other, "model.bin")
    assert sorted(p.name for p in (tmp_path / "kws" / "slots" / "b").iterdir()) == ["model.bin"]
    slots.swap(Slot.B)
    slots.swap(Slot.B)
    assert (tmp_path / "kws" / "current" / "model.bin").read_bytes() == b"v2"
    slots.remove_current()
    assert slots.current() is None


def test_config_refuses_unknown_settings_and_bad_ids(tmp_path: Path) -> None:
    config = AgentConfig(
        device_id="dev-1",
        hardware="hw",
        server_url="http://x",
        tuf_url="http://x/tuf",
        broker_url="mqtt://x",
    )
    assert config.tuf_url == "http://x/tuf/"
    config.save(tmp_path)
    assert AgentConfig.load(tmp_path) == config
    assert mode(tmp_path / "config.json") == 0o600
    with pytest.raises(ConfigError):
        AgentConfig.load(tmp_path / "missing")
    with pytest.raises(ConfigError):
        AgentConfig(
            device_id="dev 1",
            hardware="hw",
            server_url="",
            tuf_url="",
            broker_url="",
        )
    (tmp_path / "config.json").write_text('{"v": 1, "device_id": "d", "surprise": 1}')
    with pytest.raises(ConfigError, match="surprise"):
        AgentConfig.load(tmp_path)


def test_models_stay_readable_and_secrets_private_under_a_strict_umask(tmp_path: Path) -> None:
    # given the agent running as systemd starts it (UMask=0077) in its 0750 state directory
    root = tmp_path / "state"
    root.mkdir()
    root.chmod(0o750)  # noqa: S103 (what systemd's StateDirectoryMode gives)
    previous = os.umask(0o077)
    try:
        # when it lays out its directory, writes a secret and installs a model
        layout = Layout(root)
        layout.make_dirs()
        write_atomic(layout.key, b"private", mode=0o600)
        source = layout.downloads / "dl.part"
        source.write_bytes(b"v1")
        slots = ModelSlots(layout.models, "kws")
        slots.stage(Slot.A, source, "model.onnx")
        slots.swap(Slot.A)
    finally:
        os.umask(previous)
    # then another user in its group can reach models/<name>/current/<file>...
    assert mode(root) == 0o750
    for directory in (layout.models, layout.models / "kws", layout.models / "kws" / "slots"):
        assert mode(directory) == 0o755, directory
    assert mode(layout.models / "kws" / "slots" / "a") == 0o755
    assert mode(layout.models / "kws" / "current" / "model.onnx") == 0o644
    # ...and nobody else reads its keys, trust or downloads
    assert mode(layout.key) == 0o600
    for directory in (layout.root / "trust", layout.tuf, layout.downloads):
        assert mode(directory) == 0o700, directory
