"""`fleet-agent enroll --server-ca`: a file that holds no CA certificate is refused before
anything is sent or written."""

from pathlib import Path

import pytest

from device_agent import cli


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "cannot read --server-ca"),
        (b"", "holds no PEM certificate"),
        (b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n", "no PEM"),
        (b"\x00" * 64, "holds no PEM certificate"),
    ],
)
def test_a_bad_server_ca_is_malformed_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None, says: str
) -> None:
    ca = tmp_path / "ca.pem"
    if content is not None:
        ca.write_bytes(content)
    agent_dir = tmp_path / "agent"
    # port 9 (discard) on loopback: were anything sent, the error would be download_failed
    status = cli.main(
        ["enroll", "--server", "http://127.0.0.1:9", "--token", "t", "--device-id", "dev-1"]
        + ["--hardware", "linux-x86_64-fp32", "--dir", str(agent_dir), "--server-ca", str(ca)]
    )
    assert status == 1
    err = capsys.readouterr().err
    assert "malformed" in err, err
    assert says in err, err
    assert not agent_dir.exists() or not any(agent_dir.rglob("*.json"))
