"""device_agent.tuf_fetch.DeadlineFetcher, ngclient's public FetcherInterface: the
control plane's private CA, environment proxies, HTTP errors as ngclient expects them.
(Its deadlines: tests/device_agent/agent/test_agent_adversarial_units.py.) And the
refresh's retries while the web server is down or silent (verify.tuf_updater)."""

import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from securesystemslib.signer import CryptoSigner
from tuf.api import exceptions as tuf_exceptions
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from device_agent.tuf_fetch import DeadlineFetcher
from device_agent.verify import TufUnavailable, tuf_updater

BODY = b'{"signed": {}}'


class _Handler(BaseHTTPRequestHandler):
    seen: list[tuple[str, str]]

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:  # noqa: N802
        self.seen.append((self.path, self.headers.get("User-Agent", "")))
        if self.path.endswith("/missing.json"):
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)


@contextmanager
def _server(tls: ssl.SSLContext | None = None) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    seen: list[tuple[str, str]] = []
    handler = type("Handler", (_Handler,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    scheme = "https" if tls else "http"
    try:
        yield f"{scheme}://127.0.0.1:{server.server_port}", seen
    finally:
        server.shutdown()
        server.server_close()


def _private_ca(tmp_path: Path) -> tuple[Path, ssl.SSLContext]:
    """A CA of our own and a server certificate for 127.0.0.1 signed by it."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleet test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    chain = tmp_path / "server.pem"
    chain.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain)
    return ca_file, context


def _fetcher(**kwargs: str) -> DeadlineFetcher:
    return DeadlineFetcher(socket_timeout_s=5.0, deadline_s=10.0, app_user_agent="t", **kwargs)


def test_metadata_from_a_server_of_the_private_ca_is_fetched(tmp_path: Path) -> None:
    ca_file, tls = _private_ca(tmp_path)
    with _server(tls) as (url, seen):
        # without the CA the certificate is refused
        with pytest.raises(tuf_exceptions.DownloadError):
            _fetcher().download_bytes(f"{url}/timestamp.json", 1000)
        # with it the file comes, and says who asked
        assert _fetcher(ca_certs=str(ca_file)).download_bytes(f"{url}/1.root.json", 1000) == BODY
    assert seen[-1][0] == "/1.root.json"
    assert seen[-1][1].startswith("t python-tuf/")


def test_an_http_error_is_a_download_http_error_with_its_status() -> None:
    with _server() as (url, _), pytest.raises(tuf_exceptions.DownloadHTTPError) as error:
        _fetcher().download_bytes(f"{url}/missing.json", 1000)
    assert error.value.status_code == 404  # ngclient: no newer root version


def test_the_proxy_of_the_environment_is_used_unless_no_proxy_names_the_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    with _server() as (proxy, seen):
        monkeypatch.setenv("http_proxy", proxy)
        # a host that does not resolve: only the proxy can answer
        body = _fetcher().download_bytes("http://tuf.fleet.invalid/tuf/timestamp.json", 1000)
        assert body == BODY
        assert seen[-1][0] == "http://tuf.fleet.invalid/tuf/timestamp.json"  # absolute form

        monkeypatch.setenv("no_proxy", "127.0.0.1")
        with _server() as (direct, direct_seen):
            assert _fetcher().download_bytes(f"{direct}/snapshot.json", 1000) == BODY
        assert direct_seen[-1][0] == "/snapshot.json"
        assert len(seen) == 1


# --- a web server that is briefly down while the agent refreshes (issue 16) ---------------

TARGET = "models/edge/1.bin"


def _repository(*, delegated: bool = False) -> tuple[bytes, dict[str, bytes]]:
    """A one-key TUF repository with one target: the trusted root, and the files a
    refresh fetches by their path under /tuf/. `delegated`: the target is in the role
    `edge` that targets delegates `models/edge/*` to (as the control plane does), which
    a lookup fetches after the refresh."""
    now = datetime.now(UTC).replace(microsecond=0)
    signer = CryptoSigner.generate_ecdsa()
    root = Root(expires=now + timedelta(days=365), consistent_snapshot=False)
    for role in ("root", "timestamp", "snapshot", "targets"):
        root.add_key(signer.public_key, role)
    targets = Targets(expires=now + timedelta(days=30))
    snapshot = Snapshot(expires=now + timedelta(days=30))
    snapshot.meta = {"targets.json": MetaFile(1)}
    roles: list[tuple[str, Any]] = []
    if delegated:
        edge = Targets(expires=now + timedelta(days=30))
        edge.targets[TARGET] = TargetFile.from_data(TARGET, b"model")
        edge_role = DelegatedRole("edge", [signer.public_key.keyid], 1, True, ["models/edge/*"])
        targets.delegations = Delegations(
            {signer.public_key.keyid: signer.public_key}, {"edge": edge_role}
        )
        snapshot.meta["edge.json"] = MetaFile(1)
        roles.append(("edge", edge))
    else:
        targets.targets[TARGET] = TargetFile.from_data(TARGET, b"model")
    timestamp = Timestamp(expires=now + timedelta(days=30), snapshot_meta=MetaFile(1))
    files = {}
    for name, signed in (
        ("root", root),
        ("timestamp", timestamp),
        ("snapshot", snapshot),
        ("targets", targets),
        *roles,
    ):
        md = Metadata(signed)
        md.sign(signer)
        files[f"/tuf/{name}.json"] = md.to_bytes(JSONSerializer())
    return files.pop("/tuf/root.json"), files


class _Repository(BaseHTTPRequestHandler):
    """Serves `files`; a request that arrives before `answer_from` (monotonic) gets no
    answer until then (a server whose workers are not up yet)."""

    files: dict[str, bytes]
    answer_from: float
    silent: dict[str, float]  # a path not answered until then (monotonic)
    requests: list[str]

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:  # noqa: N802
        self.requests.append(self.path)
        wait = max(self.answer_from, self.silent.get(self.path, 0.0)) - time.monotonic()
        if wait > 0:
            time.sleep(wait)  # the server side of the outage, not a test synchronisation
            self.close_connection = True
            return
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _repository_server(
    files: dict[str, bytes],
    *,
    port: int = 0,
    up_after: float = 0.0,
    answer_after: float = 0.0,
    silent: dict[str, float] | None = None,
) -> Iterator[tuple[str, list[str]]]:
    """The repository on 127.0.0.1:`port`: not listening (connections refused) for
    `up_after` seconds, then listening but silent until `answer_after` seconds."""
    port = port or _free_port()
    started = time.monotonic()
    requests: list[str] = []
    handler = type(
        "Handler",
        (_Repository,),
        {
            "files": files,
            "answer_from": started + answer_after,
            "silent": {} if silent is None else silent,
            "requests": requests,
        },
    )
    servers: list[ThreadingHTTPServer] = []

    def serve() -> None:
        server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        server.daemon_threads = True
        server.block_on_close = False  # silent handlers are left to end on their own
        servers.append(server)
        server.serve_forever(poll_interval=0.05)

    # The listening socket appears `up_after` seconds from now: until then, refused.
    timer = threading.Timer(up_after, serve)
    timer.daemon = True
    timer.start()
    try:
        yield f"http://127.0.0.1:{port}/tuf/", requests
    finally:
        timer.cancel()
        timer.join(5)
        for server in servers:
            server.shutdown()
            server.server_close()


def _refresh(tmp_path: Path, root: bytes, url: str, **kwargs: Any) -> Any:
    trust_root = tmp_path / "root.json"
    trust_root.write_bytes(root)
    make = tuf_updater(trust_root=trust_root, metadata_dir=tmp_path / "tuf", tuf_url=url, **kwargs)
    return make()


def test_a_refresh_waits_for_a_server_that_refuses_connections_then_comes_back(
    tmp_path: Path,
) -> None:
    root, files = _repository()
    # given a web server that is down (connection refused) for 2 s
    with _repository_server(files, up_after=2.0) as (url, requests):
        started = time.monotonic()
        # when the agent refreshes
        lookup = _refresh(tmp_path, root, url, socket_timeout_s=2.0, deadline_s=30.0)
        # then it waited for it and got the metadata
        assert time.monotonic() - started >= 2.0
    assert lookup.get_targetinfo(TARGET) is not None
    assert "/tuf/targets.json" in requests


def test_a_refresh_waits_for_a_server_that_does_not_answer_then_does(tmp_path: Path) -> None:
    root, files = _repository()
    # given a server that accepts connections but answers nothing for 6 s (its workers
    # are still starting), longer than a socket timeout and urllib3's immediate retries
    with _repository_server(files, answer_after=6.0) as (url, requests):
        lookup = _refresh(tmp_path, root, url, socket_timeout_s=1.0, deadline_s=30.0)
    assert lookup.get_targetinfo(TARGET) is not None
    assert requests.count("/tuf/2.root.json") >= 2  # its first file, asked for again


def test_a_lookup_waits_for_a_server_that_stops_answering_after_the_refresh(
    tmp_path: Path,
) -> None:
    root, files = _repository(delegated=True)
    silent: dict[str, float] = {}
    with _repository_server(files, silent=silent) as (url, requests):
        lookup = _refresh(tmp_path, root, url, socket_timeout_s=1.0, deadline_s=30.0)
        # given a web server that went silent for 3 s between the refresh and the lookup,
        # which fetches the delegated role's metadata
        started = time.monotonic()
        silent["/tuf/edge.json"] = started + 3.0
        # when the agent looks its target up, then it waited for the server
        assert lookup.get_targetinfo(TARGET) is not None
        assert time.monotonic() - started >= 3.0
    assert requests.count("/tuf/edge.json") >= 2


@pytest.mark.parametrize(
    ("answer_after", "code"), [(0.0, "download_failed"), (60.0, "download_timeout")]
)
def test_past_the_deadline_the_refresh_gives_up_as_unavailable(
    tmp_path: Path, answer_after: float, code: str
) -> None:
    root, files = _repository()
    port = _free_port()
    # given a server that is down (refused) or silent for longer than the deadline
    up_after = 60.0 if not answer_after else 0.0
    with _repository_server(files, port=port, up_after=up_after, answer_after=answer_after) as (
        url,
        _,
    ):
        started = time.monotonic()
        with pytest.raises(TufUnavailable) as unavailable:
            _refresh(tmp_path, root, url, socket_timeout_s=1.0, deadline_s=3.0, backoff_s=0.2)
        # then the refresh ends near its deadline, as an outage with the error's code
        assert time.monotonic() - started < 3.0 + 2.0
    assert unavailable.value.code == code


def test_a_refresh_waiting_for_the_server_stops_when_interrupted(tmp_path: Path) -> None:
    root, _ = _repository()
    slept: list[float] = []
    with pytest.raises(TufUnavailable, match="interrupted"):
        _refresh(
            tmp_path,
            root,
            f"http://127.0.0.1:{_free_port()}/tuf/",
            deadline_s=60.0,
            sleep=slept.append,
            interrupted=lambda: bool(slept),
        )
    assert len(slept) == 1


def test_a_verdict_of_the_repository_is_not_retried(tmp_path: Path) -> None:
    root, files = _repository()
    files["/tuf/timestamp.json"] = b"{not json"
    with (
        _repository_server(files) as (url, requests),
        pytest.raises(tuf_exceptions.RepositoryError),
    ):
        _refresh(tmp_path, root, url, deadline_s=30.0)
    assert requests.count("/tuf/timestamp.json") == 1
