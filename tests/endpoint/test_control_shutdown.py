"""Regression: SIGTERM while a control client was connected.  The endpoint closes its
loop (the epoll object) before the control server, and the server's close unwatched
each open client on the closed epoll: ``ValueError: I/O operation on closed epoll
object``, logged as "cleanup step failed", and the control socket file was left
behind.  Found by the chaos test's fifty queries a second across a restart."""

from __future__ import annotations

import os
import socket
from collections import Counter
from pathlib import Path

from sclp.endpoint.config import parse_config
from sclp.endpoint.control import ControlServer
from sclp.endpoint.datapath import DataPath
from sclp.endpoint.runner import Runner, UnderlaySender


def test_closing_the_server_after_the_loop_with_a_client_connected(tmp_path: Path) -> None:
    cfg = parse_config(
        'name = "sd"\n[underlay]\nlocal = "10.77.0.1"\n'
        '[[network]]\nvni = 42\nprotocol = "vxlan"\ntap = "tap0"\npeers = ["10.77.0.2"]\n'
    )
    runner = Runner(DataPath(cfg, 1500), UnderlaySender({}, {}, Counter()), lambda: 0.0)
    server = ControlServer(
        str(tmp_path / "sd.sock"),
        {"stats": lambda: {}},
        watch=lambda fd, write, resume: runner.watch(fd, lambda _n: resume(), write),
        unwatch=runner.unwatch,
    )
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(server.path)
        server.handle_ready(now=0.0)  # the silent client is handed to the loop
        runner.close()  # the endpoint's clean-up order: the loop first ...
        server.close()  # ... then the server: no error, and the file goes
        assert not os.path.exists(server.path)
    finally:
        client.close()
