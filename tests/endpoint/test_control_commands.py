"""Control requests with arguments (``attach <ifname> <vni>``, ``detach <ifname>``):
the exact requests keep working, a command's arguments are validated strictly before
its handler runs, and a bad one is an ``{"error": ...}`` answer, never an exception.
No root: a UNIX socket in a temporary directory and a stand-in for the ports."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sclp.endpoint.config import ConfigError, parse_config
from sclp.endpoint.control import ControlServer, query
from sclp.endpoint.ports import control_commands


class FakePorts:
    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def request(self, name: str, vni: int) -> dict[str, Any]:
        self.calls.append(("attach", name, str(vni)))
        return {"attached": name, "vni": vni}

    def release(self, name: str) -> dict[str, Any]:
        self.calls.append(("detach", name))
        return {"detached": False, "ifname": name}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ControlServer, FakePorts]]:
    ports = FakePorts()
    server = ControlServer(
        str(tmp_path / "ep.sock"),
        {"stats": lambda: {"ok": 1}, "show ports": lambda: {"rows": []}},
        commands=control_commands(lambda: ports),  # type: ignore[arg-type, return-value]
    )
    yield server, ports
    server.close()


def test_exact_requests_and_commands(served: tuple[ControlServer, FakePorts]) -> None:
    server, ports = served
    assert server.answer("stats") == {"ok": 1}
    assert server.answer("show ports") == {"rows": []}
    assert server.answer("attach sclp0123 42") == {"attached": "sclp0123", "vni": 42}
    assert server.answer("detach sclp0123") == {"detached": False, "ifname": "sclp0123"}
    assert ports.calls == [("attach", "sclp0123", "42"), ("detach", "sclp0123")]
    assert "unknown request" in server.answer("stats now")["error"]
    assert "unknown request" in server.answer("frobnicate x")["error"]


@pytest.mark.parametrize(
    ("request_line", "words"),
    [
        ("attach", "usage: attach <ifname> <vni>"),
        ("attach eth0", "usage"),
        ("attach eth0 42 43", "usage"),
        ("attach eth0  42", "single spaces"),
        ("attach a/b 42", "not an interface name"),
        ("attach .. 42", "not an interface name"),
        ("attach sixteen-chars-xx 42", "not an interface name"),
        ("attach eth0 -1", "not a VNI"),
        ("attach eth0 16777216", "not a VNI"),
        ("attach eth0 0x2a", "not a VNI"),
        ("attach eth\u00e90 42", "printable ASCII"),
        ("attach eth0\t42", "printable ASCII"),
        ("detach", "usage: detach <ifname>"),
        ("detach a b", "usage"),
        ("detach a;b", "not an interface name"),
    ],
)
def test_bad_arguments_never_reach_the_ports(
    served: tuple[ControlServer, FakePorts], request_line: str, words: str
) -> None:
    server, ports = served
    answer = server.answer(request_line)
    assert words in answer["error"]
    assert ports.calls == []


def test_over_the_socket(tmp_path: Path) -> None:
    """A client served as the endpoint's loop serves it: accepted, then watched until
    its request arrives (a client accepted before it wrote is kept, not dropped)."""
    ports = FakePorts()
    watched: dict[int, Callable[[], None]] = {}
    server = ControlServer(
        str(tmp_path / "ep.sock"),
        {},
        watch=lambda fd, _writing, callback: watched.__setitem__(fd, callback),
        unwatch=lambda fd: watched.pop(fd, None),
        commands=control_commands(lambda: ports),  # type: ignore[arg-type, return-value]
    )
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(query(server.path, "attach v1 7")))
    try:
        thread.start()
        deadline = time.monotonic() + 10.0
        while thread.is_alive() and time.monotonic() < deadline:
            server.handle_ready()  # a loop would wait for readiness; polling is the same
            for callback in list(watched.values()):
                callback()
            thread.join(0.01)
    finally:
        server.close()
        thread.join(5.0)
    assert result == [{"attached": "v1", "vni": 7}]
    assert ports.calls == [("attach", "v1", "7")]


def test_a_network_with_an_empty_attach_takes_only_requested_ports() -> None:
    """``attach = []``: no TAP, no pattern; ports come from sclp-cni.  Leaving both
    out stays an error that now also names this choice."""
    base = 'name = "h"\n[underlay]\nlocal = "10.0.0.1"\n[[network]]\nvni = 5\n'
    cfg = parse_config(base + "attach = []\n")
    assert cfg.networks[0].tap is None and cfg.networks[0].attach == ()
    with pytest.raises(ConfigError, match=re.escape("attach = [] if only containers join")):
        parse_config(base)
