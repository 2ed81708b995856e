"""Two CI jobs publishing the same model at once: one wins, the other retries on fresh
metadata, and both artifacts end up published."""

import threading

import pytest

from ota import cli
from ota.fleetctl import http as fleetctl_http
from ota.models import Artifact


@pytest.mark.django_db(transaction=True)
def test_concurrent_publishes_both_land(
    live_server, kws, release_key, ci_token, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("FLEET_URL", live_server.url)
    monkeypatch.setenv("FLEET_TOKEN", ci_token)
    monkeypatch.setenv("FLEET_RELEASE_KEY", str(release_key.private))
    # given both jobs hold the same base metadata before either uploads
    barrier = threading.Barrier(2, timeout=30)
    fetched: dict[int, int] = {}
    real_metadata = fleetctl_http.Client.metadata

    def metadata_in_lockstep(self, name):
        result = real_metadata(self, name)
        ident = threading.get_ident()
        fetched[ident] = fetched.get(ident, 0) + 1
        if fetched[ident] == 1:
            barrier.wait()
        return result

    monkeypatch.setattr(fleetctl_http.Client, "metadata", metadata_in_lockstep)
    results: dict[str, int] = {}

    def job(hardware: str) -> None:
        path = tmp_path / hardware / "model.bin"
        path.parent.mkdir()
        path.write_bytes(hardware.encode() * 1000)
        results[hardware] = cli.main(
            [
                "publish",
                str(path),
                "--name",
                "kws",
                "--version",
                "1.0.0",
                "--hardware",
                hardware,
                "--format",
                "onnx",
            ]
        )

    # when both publish
    threads = [threading.Thread(target=job, args=(hw,)) for hw in ("hw-a", "hw-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    # then both succeeded, one of them after a conflict and a retry on fresh metadata
    assert results == {"hw-a": 0, "hw-b": 0}
    assert "refetch and retry" in capsys.readouterr().err
    assert sorted(fetched.values()) == [1, 2]
    assert set(Artifact.objects.values_list("hardware", "release_counter")) == {
        ("hw-a", 1),
        ("hw-b", 1),
    }
