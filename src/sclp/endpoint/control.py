"""The endpoint's control socket: a UNIX stream socket answering one JSON request.

Protocol: the client connects, sends one line (``stats``), reads a JSON document
until EOF.  The server side is non-blocking and is driven by the endpoint's event
loop (:meth:`ControlServer.handle_ready`); a slow or silent client can't stall the
data path because each request gets one short, bounded exchange.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import stat
from collections.abc import Callable
from typing import Any

MAX_REQUEST = 256


class ControlError(Exception):
    """The control socket can't be used; the message says why and what to do."""


def socket_path(name: str, control_dir: str = "/run/sclp") -> str:
    return os.path.join(control_dir, f"{name}.sock")


class ControlServer:
    """Listens on ``path``; ``handlers`` map a request word to a JSON-able answer."""

    def __init__(self, path: str, handlers: dict[str, Callable[[], Any]]) -> None:
        self.path = path
        self.handlers = handlers
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

    def handle_ready(self) -> None:
        """Accept and answer the pending clients (called when the socket is readable)."""
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return
            with conn:
                conn.settimeout(0.5)
                try:
                    request = conn.recv(MAX_REQUEST).decode("ascii", "replace").strip()
                    handler = self.handlers.get(request)
                    answer: Any = (
                        handler() if handler else {"error": f"unknown request {request!r}"}
                    )
                    conn.sendall(json.dumps(answer).encode())
                except OSError:
                    continue

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


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
