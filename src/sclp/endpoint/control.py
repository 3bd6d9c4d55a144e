"""The endpoint's control socket: a UNIX stream socket answering one JSON request.

Protocol: the client connects, sends one line (``stats``), reads a JSON document
until EOF.  A line is either exactly one of the server's requests (``stats``, ``show
ports``) or a command word and its arguments separated by single spaces (``attach
veth0 42``): the command's handler gets the arguments as strings and validates them;
an answer ``{"error": ...}`` says what was wrong.

The server side is non-blocking and is driven by the endpoint's event loop
(:meth:`ControlServer.handle_ready`) and never blocks it: a slow or silent client is
kept aside, served when its socket is ready, and dropped after a deadline.  A large
answer (a listing of many thousands of FDB entries) is a :class:`Streamed` one: made
and sent one part per turn of the loop, so forwarding goes on between the parts.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import stat
from collections.abc import Callable, Iterator
from typing import Any

MAX_REQUEST = 256
MAX_CLIENTS = 16
CLIENT_TIMEOUT = 2.0  # seconds a client may take to send its request and read the answer


class ControlError(Exception):
    """The control socket can't be used; the message says why and what to do."""


class Streamed:
    """An answer sent in parts: ``parts`` yields the bytes of one JSON document in
    order, each made when the previous one has gone to the socket, at most one per
    turn of the event loop (the loop calls back when the socket is writable)."""

    __slots__ = ("parts",)

    def __init__(self, parts: Iterator[bytes]) -> None:
        self.parts = parts


def socket_path(name: str, control_dir: str = "/run/sclp") -> str:
    return os.path.join(control_dir, f"{name}.sock")


class ControlServer:
    """Listens on ``path``; ``handlers`` map a request line to a JSON-able answer,
    ``commands`` a command word to a handler of its arguments (``attach ...``).

    Nothing here blocks: :meth:`handle_ready` accepts and reads what is there; a
    client whose request or answer is not complete yet is kept (at most
    :data:`MAX_CLIENTS`, each for :data:`CLIENT_TIMEOUT` seconds) and its socket is
    handed to ``watch(fd, want_write, callback)`` so the event loop calls back when it
    is ready; ``unwatch(fd)`` is called when the client is done.  Without ``watch``
    such a client is dropped at once."""

    def __init__(
        self,
        path: str,
        handlers: dict[str, Callable[[], Any]],
        watch: Callable[[int, bool, Callable[[], None]], None] | None = None,
        unwatch: Callable[[int], None] | None = None,
        commands: dict[str, Callable[[list[str]], Any]] | None = None,
    ) -> None:
        self.path = path
        self.handlers = handlers
        self.commands: dict[str, Callable[[list[str]], Any]] = dict(commands or {})
        self._watch = watch
        self._unwatch = unwatch
        self._clients: dict[int, _Client] = {}
        self.sock = self._listen(path)

    @staticmethod
    def _listen(path: str) -> socket.socket:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        if os.path.exists(path):
            if not stat.S_ISSOCK(os.stat(path).st_mode):
                raise ControlError(f"{path} exists and is not a socket; remove it")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            probe.settimeout(1.0)
            try:
                probe.connect(path)
            except OSError as exc:
                if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                    raise
                os.unlink(path)  # left by an endpoint that was killed: reclaim it
            else:
                raise ControlError(
                    f"an endpoint named {os.path.basename(path)[:-5]!r} is already running "
                    f"({path}); stop it first or choose another name"
                )
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(8)
        sock.setblocking(False)
        return sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def handle_ready(self, now: float = 0.0) -> None:
        """Accept the pending clients and serve what they sent (called when the
        listening socket is readable).  Never blocks."""
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return
            except OSError:  # e.g. EMFILE: leave it for the next round
                return
            conn.setblocking(False)
            client = _Client(conn, now + CLIENT_TIMEOUT)
            self._step(client)
            if client.done:
                client.close()
            else:
                self._keep(client)

    def expire(self, now: float) -> None:
        """Drop clients that did not finish within :data:`CLIENT_TIMEOUT`."""
        for client in [c for c in self._clients.values() if c.deadline <= now]:
            self._finish(client)

    def _keep(self, client: _Client) -> None:
        if self._watch is None or len(self._clients) >= MAX_CLIENTS:
            client.close()
            return
        fd = client.fd
        self._clients[fd] = client
        self._watch(fd, client.writing, lambda: self._resume(client))

    def _resume(self, client: _Client) -> None:
        was_writing = client.writing
        self._step(client)
        if client.done:
            self._finish(client)
        elif client.writing != was_writing and self._watch is not None:
            fd = client.fd
            if self._unwatch is not None:
                self._unwatch(fd)
            self._watch(fd, True, lambda: self._resume(client))

    def _finish(self, client: _Client) -> None:
        """Stop watching the client, then close it (in that order: a closed
        descriptor cannot be unregistered)."""
        fd = client.fd
        if self._clients.pop(fd, None) is not None and self._unwatch is not None:
            self._unwatch(fd)
        client.close()

    def _step(self, client: _Client) -> None:
        """Read until the request line is there, then write the answer (of a
        :class:`Streamed` one, the next part); ``done`` once answered (or failed).
        The caller closes."""
        conn = client.conn
        try:
            if client.answer is None:
                while b"\n" not in client.request and len(client.request) < MAX_REQUEST:
                    data = conn.recv(MAX_REQUEST)
                    if not data:
                        break
                    client.request += data
                request = client.request.decode("ascii", "replace").strip()
                answer: Any = self.answer(request)
                if isinstance(answer, Streamed):
                    client.parts = answer.parts
                    client.answer = memoryview(b"")
                else:
                    client.answer = memoryview(json.dumps(answer).encode())
            while True:
                if not client.answer and client.parts is not None:
                    part = next(client.parts, None)
                    if part is None:
                        client.parts = None
                    else:
                        client.answer = memoryview(part)
                while client.answer:
                    sent = conn.send(client.answer)
                    client.answer = client.answer[sent:]
                # One part per turn of the loop; without a loop to call back, all now.
                if client.parts is None or self._watch is not None:
                    break
            client.done = client.parts is None
        except BlockingIOError:
            return
        except OSError:
            client.done = True

    def answer(self, request: str) -> Any:
        """The answer to one request line: an exact request, else a command with its
        arguments (words separated by one space; nothing but printable ASCII)."""
        handler = self.handlers.get(request)
        if handler is not None:
            return handler()
        word, _, rest = request.partition(" ")
        command = self.commands.get(word)
        if command is None:
            return {"error": f"unknown request {request[:64]!r}"}
        if not request.isascii() or not request.isprintable() or "\n" in request:
            return {"error": f"{word}: arguments must be printable ASCII"}
        args = rest.split(" ") if rest else []
        if any(not arg for arg in args):
            return {"error": f"{word}: arguments are separated by single spaces"}
        return command(args)

    def close(self) -> None:
        for client in list(self._clients.values()):
            self._finish(client)
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class _Client:
    __slots__ = ("answer", "conn", "deadline", "done", "fd", "parts", "request")

    def __init__(self, conn: socket.socket, deadline: float) -> None:
        self.conn = conn
        self.fd = conn.fileno()
        self.deadline = deadline
        self.request = b""
        self.answer: memoryview | None = None  # None until the request is read
        self.parts: Iterator[bytes] | None = None  # a Streamed answer's parts to come
        self.done = False

    @property
    def writing(self) -> bool:
        """The request is read: what is left is to write the answer."""
        return self.answer is not None

    def close(self) -> None:
        self.done = True
        self.conn.close()


def query(path: str, request: str = "stats", timeout: float = 3.0) -> Any:
    """Send ``request`` to the endpoint listening on ``path``; return its JSON answer."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except FileNotFoundError:
        raise ControlError(
            f"no endpoint control socket at {path}; is `sclp run` running with that name?"
        ) from None
    except ConnectionRefusedError:
        raise ControlError(f"{path} is stale (the endpoint is gone); start it again") from None
    except PermissionError:
        raise ControlError(f"permission denied on {path}; run as root") from None
    with sock:
        sock.sendall(request.encode() + b"\n")
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    return json.loads(b"".join(chunks))
