"""The control socket never blocks the loop: a client that connects and says nothing
(or reads nothing) is kept aside, watched, and dropped at its deadline, while other
clients are answered at once.  No root: a UNIX socket in a temporary directory."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from sclp.endpoint.control import CLIENT_TIMEOUT, ControlServer, Streamed


def test_a_silent_client_does_not_stall_the_others(tmp_path: Path) -> None:
    watched: dict[int, Callable[[], None]] = {}
    server = ControlServer(
        str(tmp_path / "ep.sock"),
        {"stats": lambda: {"ok": 1}},
        watch=lambda fd, write, resume: watched.__setitem__(fd, resume),
        unwatch=lambda fd: watched.pop(fd),
    )
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        silent.connect(server.path)
        started = time.monotonic()
        server.handle_ready(now=0.0)
        assert time.monotonic() - started < 0.2  # returned at once, nothing to read yet
        assert len(watched) == 1  # kept aside, its descriptor handed to the loop

        # another client is answered while the silent one waits
        talker = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        talker.connect(server.path)
        talker.sendall(b"stats\n")
        server.handle_ready(now=0.1)
        talker.settimeout(2.0)
        assert json.loads(talker.recv(4096)) == {"ok": 1}
        talker.close()

        # the silent one speaks late: the loop calls back, it gets its answer
        silent.sendall(b"stats\n")
        (resume,) = watched.values()
        resume()
        silent.settimeout(2.0)
        assert json.loads(silent.recv(4096)) == {"ok": 1}
        assert watched == {}
    finally:
        silent.close()
        server.close()


def test_a_client_past_its_deadline_is_dropped(tmp_path: Path) -> None:
    watched: dict[int, Callable[[], None]] = {}
    server = ControlServer(
        str(tmp_path / "ep.sock"),
        {"stats": lambda: {}},
        watch=lambda fd, write, resume: watched.__setitem__(fd, resume),
        unwatch=lambda fd: watched.pop(fd),
    )
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        silent.connect(server.path)
        server.handle_ready(now=10.0)
        server.expire(10.0 + CLIENT_TIMEOUT / 2)
        assert len(watched) == 1
        server.expire(10.0 + CLIENT_TIMEOUT)
        assert watched == {}
        silent.settimeout(2.0)
        assert silent.recv(10) == b""  # closed by the server
    finally:
        silent.close()
        server.close()


def test_a_streamed_answer_goes_one_part_per_turn_of_the_loop(tmp_path: Path) -> None:
    watched: dict[int, tuple[bool, Callable[[], None]]] = {}
    made: list[int] = []

    def parts() -> Iterator[bytes]:
        for i, part in enumerate((b'{"rows": [', b"1, 2", b", 3", b"]}")):
            made.append(i)
            yield part

    server = ControlServer(
        str(tmp_path / "ep.sock"),
        {"show fdb": lambda: Streamed(parts())},
        watch=lambda fd, write, resume: watched.__setitem__(fd, (write, resume)),
        unwatch=lambda fd: watched.pop(fd),
    )
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(server.path)
        client.sendall(b"show fdb\n")
        server.handle_ready(now=0.0)
        assert made == [0]  # the first part only; the rest when the loop comes back
        ((write, resume),) = watched.values()
        assert write  # called back when the socket is writable
        for turn in (1, 2, 3):
            resume()
            assert made == list(range(turn + 1))
        assert len(watched) == 1
        resume()  # nothing left: done, unwatched, closed
        assert watched == {}
        client.settimeout(2.0)
        received = b""
        while chunk := client.recv(4096):
            received += chunk
        assert json.loads(received) == {"rows": [1, 2, 3]}
    finally:
        client.close()
        server.close()


def test_without_a_loop_a_streamed_answer_goes_at_once(tmp_path: Path) -> None:
    server = ControlServer(
        str(tmp_path / "ep.sock"), {"big": lambda: Streamed(iter((b"[1, ", b"2]")))}
    )
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(server.path)
        client.sendall(b"big\n")
        server.handle_ready(now=0.0)
        client.settimeout(2.0)
        assert json.loads(client.recv(4096)) == [1, 2]
        assert client.recv(10) == b""
    finally:
        client.close()
        server.close()
