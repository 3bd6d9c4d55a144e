"""WatchStream against a scripted server: the request it sends, chunked messages cut
at every byte, the end of the stream, and answers that are not a watch."""

from __future__ import annotations

import base64
import json
import select
import socket
import threading
from collections.abc import Iterator

import pytest

from sclp.cluster.etcd import Endpoint, EtcdUnavailableError, WatchMessage, WatchStream


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def event(key: str, value: bytes, rev: int, deleted: bool = False) -> dict[str, object]:
    kv = {"key": base64.b64encode(key.encode()).decode(), "mod_revision": str(rev)}
    if not deleted:
        kv.update(value=base64.b64encode(value).decode(), create_revision=str(rev), lease="7")
    return {"type": "DELETE", "kv": kv} if deleted else {"kv": kv}


class Server:
    """Accepts one connection, records the request, sends ``answer`` one byte at a
    time, then keeps the connection open until closed."""

    def __init__(self, answer: bytes) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.answer = answer
        self.request = b""
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(5)
            while b"\r\n\r\n" not in self.request:
                data = conn.recv(4096)
                if not data:
                    return
                self.request += data
            head, _, body = self.request.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            while len(body) < length:
                body += conn.recv(4096)
            self.request = head + b"\r\n\r\n" + body
            try:
                for i in range(len(self.answer)):
                    conn.sendall(self.answer[i : i + 1])
            except OSError:
                return  # the client gave up early (an answer it refuses)
            self.done.wait(5)

    def close(self) -> None:
        self.done.set()
        self.thread.join(5)
        self.listener.close()


@pytest.fixture
def serve() -> Iterator[list[Server]]:
    servers: list[Server] = []
    yield servers
    for server in servers:
        server.close()


def stream_for(servers: list[Server], answer: bytes) -> tuple[Server, WatchStream]:
    server = Server(answer)
    servers.append(server)
    endpoint = Endpoint.parse(f"http://127.0.0.1:{server.port}")
    request = {"create_request": {"key": "L3M=", "start_revision": "5"}}
    return server, WatchStream(endpoint, request, None, 5.0)


def read_messages(stream: WatchStream, count: int) -> list[WatchMessage]:
    messages: list[WatchMessage] = []
    while len(messages) < count and not stream.ended:
        if not stream.has_ready():
            readable, _, _ = select.select([stream], [], [], 5)
            assert readable, "no data within 5 s"
        messages += stream.read()
    return messages


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.timeout(30)
def test_messages_cut_at_every_byte(serve: list[Server]) -> None:
    lines = [
        {"result": {"header": {"revision": "9"}, "created": True}},
        {"result": {"header": {"revision": "10"}, "events": [event("/s/a", b"v", 10)]}},
        {"result": {"header": {"revision": "11"}, "events": [event("/s/a", b"", 11, True)]}},
        {"result": {"header": {"revision": "11"}}},
    ]
    body = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    # The gateway's chunks need not follow the lines: cut the body in two odd places.
    answer = HEAD + chunk(body[:7]) + chunk(body[7:200]) + chunk(body[200:])
    server, stream = stream_for(serve, answer)
    try:
        messages = read_messages(stream, 4)
    finally:
        stream.close()
    head, _, body_sent = server.request.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v3/watch HTTP/1.1\r\n")
    assert b"Grpc-Metadata-Hasleader: true" in head
    assert json.loads(body_sent)["create_request"]["start_revision"] == "5"
    assert [m.revision for m in messages] == [9, 10, 11, 11]
    assert messages[0].created and not messages[0].events
    put = messages[1].events[0]
    assert not put.deleted and put.kv.key == "/s/a" and put.kv.value == b"v"
    assert put.kv.lease == 7 and put.kv.create_revision == 10
    assert messages[2].events[0].deleted and messages[2].events[0].kv.mod_revision == 11
    assert not messages[3].events and not messages[3].created


@pytest.mark.timeout(30)
def test_compaction_cancel_and_end_of_stream(serve: list[Server]) -> None:
    cancel = {"result": {"header": {}, "canceled": True, "compact_revision": "40"}}
    answer = HEAD + chunk(json.dumps(cancel).encode() + b"\n") + b"0\r\n\r\n"
    _, stream = stream_for(serve, answer)
    try:
        messages = read_messages(stream, 1)
        assert len(messages) == 1 and messages[0].canceled
        assert messages[0].compact_revision == 40
        # Then the end: seen with the last message, or by the next read.
        while not stream.ended:
            select.select([stream], [], [], 5)
            try:
                assert stream.read() == []
            except EtcdUnavailableError as exc:
                assert "watch stream ended" in str(exc)
                break
    finally:
        stream.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n", "503"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", "not chunked"),
    ],
)
def test_answers_that_are_not_a_watch(serve: list[Server], answer: bytes, reason: str) -> None:
    with pytest.raises(EtcdUnavailableError, match=reason):
        stream_for(serve, answer)


@pytest.mark.timeout(30)
def test_an_error_message_ends_the_watch(serve: list[Server]) -> None:
    error = {"error": {"grpc_code": 14, "message": "etcdserver: no leader"}}
    with pytest.raises(EtcdUnavailableError, match="no leader"):  # with the headers or after
        _, stream = stream_for(serve, HEAD + chunk(json.dumps(error).encode() + b"\n"))
        try:
            read_messages(stream, 1)
        finally:
            stream.close()
