"""The etcd client's unary calls over the JSON gateway: KV, transactions and leases
against a real etcd; failover, refusals and connection reuse against a scripted HTTP
server; and no import of ``etcd3gw`` anywhere."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sclp.cluster.etcd import Etcd, EtcdError, EtcdUnavailableError, LeaseNotFoundError
from tests.cluster.conftest import EtcdMember, free_port

pytestmark = pytest.mark.timeout(60)

OK = (200, b'{"header": {"revision": "7"}}')
NOT_JSON = "bad answer: not a JSON object (is this etcd's client URL?)"


class Scripted(ThreadingHTTPServer):
    """An HTTP/1.1 server on loopback that gives every POST the same answer
    (``status``, ``body``; status 0: never answer) and counts the connections and
    the requests it gets."""

    daemon_threads = True

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.status, self.body = status, body
        self.connections = 0
        self.paths: list[str] = []
        self.released = threading.Event()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        self.released.set()
        self.shutdown()
        self.server_close()
        self.thread.join(5)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Scripted

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.paths.append(self.path)
        if self.server.status == 0:
            self.server.released.wait(10)
            return
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.server.body)))
        self.end_headers()
        self.wfile.write(self.server.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[list[Scripted]]:
    servers: list[Scripted] = []
    yield servers
    for server in servers:
        server.close()


def serve(servers: list[Scripted], status: int, body: bytes) -> Scripted:
    server = Scripted(status, body)
    servers.append(server)
    return server


def test_kv_transactions_and_leases(etcd: EtcdMember) -> None:
    client = Etcd([etcd.url])
    try:
        assert client.get("/t/a") is None
        rev = client.put("/t/a", b"\x00\xff binary")
        client.put("/t/b", b"2")
        client.put("/u", b"outside the prefix")
        got = client.get("/t/a")
        assert got is not None and got.value == b"\x00\xff binary"
        assert got.mod_revision == rev and got.lease == 0
        kvs, revision = client.range_prefix("/t/")
        assert [(kv.key, kv.value) for kv in kvs] == [("/t/a", b"\x00\xff binary"), ("/t/b", b"2")]
        assert revision >= rev + 2
        assert client.delete("/t/b") > revision
        assert [kv.key for kv in client.range_prefix("/t/")[0]] == ["/t/a"]

        mine, theirs = client.grant(30), client.grant(30)
        assert client.put_unless_taken("/t/name", b"me", mine) is None
        assert client.put_unless_taken("/t/name", b"me again", mine) is None  # my own
        taken = client.put_unless_taken("/t/name", b"them", theirs)
        assert taken is not None and taken.value == b"me again" and taken.lease == mine
        assert client.keep_alive(mine) == 30
        granted, remaining = client.time_to_live(mine)
        assert granted == 30 and 0 < remaining <= 30

        client.revoke(mine)
        assert client.get("/t/name") is None  # its keys went with it
        assert client.time_to_live(mine)[1] == -1
        with pytest.raises(LeaseNotFoundError):
            client.keep_alive(mine)
        with pytest.raises(LeaseNotFoundError, match="lease not found"):
            client.put("/t/c", b"3", lease=mine)
        assert client.current == 0  # a refusal is not a reason to fail over
    finally:
        client.close()


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (
            503,
            b'{"error": "x", "code": 14, "message": "etcdserver: no leader"}',
            "etcdserver: no leader",
        ),
        (500, b"", "HTTP 500 Internal Server Error"),
        (504, b"upstream\ntimed out", "HTTP 504 Gateway Timeout: upstream timed out"),
        (200, b"<html>a proxy</html>", NOT_JSON),
        (200, b'["a list"]', NOT_JSON),
        (0, b"", "read timed out"),
    ],
)
def test_fails_over_when_a_member_cannot_serve(
    etcd: EtcdMember, scripted: list[Scripted], status: int, body: bytes, reason: str
) -> None:
    bad = serve(scripted, status, body)
    client = Etcd([bad.url, etcd.url], timeout=0.5)
    try:
        assert client.put("/f", b"1") > 0
        assert client.url == etcd.url
        assert bad.paths == ["/v3/kv/put"]
    finally:
        client.close()
    alone = Etcd([bad.url], timeout=0.5)
    try:
        with pytest.raises(EtcdUnavailableError) as raised:
            alone.get("/f")
        assert str(raised.value) == f"{bad.url}: {reason}"
    finally:
        alone.close()


def test_every_url_down_is_one_line_naming_each() -> None:
    down = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    client = Etcd(down, timeout=0.5)
    try:
        with pytest.raises(EtcdUnavailableError) as raised:
            client.grant(3)
        assert str(raised.value) == "; ".join(f"{url}: connection refused" for url in down)
        assert client.current == 0  # once round the list
    finally:
        client.close()


@pytest.mark.parametrize(
    ("status", "body", "error", "message"),
    [
        (400, b'{"code": 3, "message": "etcdserver: key is not provided"}', EtcdError, None),
        (404, b'{"code": 5, "message": "etcdserver: requested lease not found"}', None, None),
        (404, b"404 page not found\n", EtcdError, "HTTP 404 Not Found: 404 page not found"),
    ],
)
def test_refusals_raise_without_failing_over(
    scripted: list[Scripted],
    status: int,
    body: bytes,
    error: type[EtcdError] | None,
    message: str | None,
) -> None:
    refusing, other = serve(scripted, status, body), serve(scripted, *OK)
    client = Etcd([refusing.url, other.url])
    try:
        if error is None:  # a missing lease: no URL, the callers catch the class
            with pytest.raises(LeaseNotFoundError) as lease:
                client.keep_alive(5)
            assert str(lease.value) == "etcdserver: requested lease not found"
        else:
            with pytest.raises(error) as raised:
                client.put("", b"")
            assert type(raised.value) is EtcdError
            expected = message or json.loads(body)["message"]
            assert str(raised.value) == f"{refusing.url}: {expected}"
        assert client.current == 0 and len(refusing.paths) == 1 and other.paths == []
    finally:
        client.close()


def test_one_connection_per_url_is_reused(scripted: list[Scripted]) -> None:
    server = serve(scripted, *OK)
    client = Etcd([server.url])
    try:
        for i in range(5):
            assert client.put(f"/k{i}", b"v") == 7
        assert server.connections == 1 and len(server.paths) == 5
    finally:
        client.close()


def test_nothing_imports_etcd3gw(etcd: EtcdMember) -> None:
    """With ``etcd3gw`` made unimportable, every module that talks to etcd imports and
    ``sclp cluster`` reads a real etcd."""
    code = (
        "import sys; sys.modules['etcd3gw'] = None\n"
        "import sclp.cluster.etcd, sclp.cluster.agent, sclp.cluster.report\n"
        "import sclp.endpoint.registry, sclp.endpoint.nve\n"
        "from sclp.cli import main\n"
        f"sys.exit(main(['cluster', '--etcd', {etcd.url!r}, '--json']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["members"] == []
    assert "etcd3gw" not in done.stderr
