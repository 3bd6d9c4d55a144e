"""sclp.io.attach and sclp.io.links against the real kernel: two "containers" (network
namespaces behind veth pairs) whose host sides are attached with packet sockets, and
a switch of a few lines in this test forwarding between them.

What the endpoint relies on: TCP between the containers works through the sockets,
frames arrive whole as GSO frames with their virtio-net header (far above the MTU),
what we write is not read back, an interface that goes away is an error on read (not
a crash), and link notifications report interfaces appearing and going.
"""

from __future__ import annotations

import hashlib
import select
import subprocess
import sys
import threading
from collections.abc import Callable

import pytest

from sclp.io.attach import AttachedPort
from sclp.io.links import LinkWatch, current_links
from sclp.io.netns import NetNS, create_veth, run_in_netns
from sclp.wire.virtio_net import VNET_HDR

from ..e2e.helpers import wait_for

NsFactory = Callable[[], NetNS]

MTU = 1500
_SERVER = r"""
import hashlib, socket, sys
srv = socket.create_server(("10.73.0.2", 9100))
srv.settimeout(20)
print("ready", flush=True)
conn, _ = srv.accept()
conn.settimeout(20)
d, n = hashlib.sha256(), 0
while chunk := conn.recv(1 << 20):
    d.update(chunk)
    n += len(chunk)
print(n, d.hexdigest(), flush=True)
"""
_CLIENT = r"""
import socket
data = bytes(range(256)) * 40960  # 10 MiB
with socket.create_connection(("10.73.0.2", 9100), timeout=20) as s:
    s.sendall(data)
"""


def _containers(netns_factory: NsFactory) -> tuple[NetNS, NetNS, NetNS]:
    host, one, two = netns_factory(), netns_factory(), netns_factory()
    create_veth("hv-one", host, "eth0", one, mtu=MTU)
    create_veth("hv-two", host, "eth0", two, mtu=MTU)
    for ns, address in ((one, "10.73.0.1/24"), (two, "10.73.0.2/24")):
        ns.add_address("eth0", address)
        ns.write_sysctl("net.ipv6.conf.all.disable_ipv6", 1)
    host.set_link("hv-one", up=True)
    host.set_link("hv-two", up=True)
    return host, one, two


class Switch:
    """Forward every frame read on one port to the other, header and all; remember
    the headers."""

    def __init__(self, a: AttachedPort, b: AttachedPort) -> None:
        self.ports = {a.fileno(): (a, b), b.fileno(): (b, a)}
        self.headers: list[tuple[int, ...]] = []
        self.sizes: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Switch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        buf = bytearray(70_000)
        while not self._stop.is_set():
            ready, _, _ = select.select(list(self.ports), [], [], 0.05)
            for fd in ready:
                src, dst = self.ports[fd]
                while size := src.read_into(buf):
                    self.headers.append(VNET_HDR.unpack_from(buf))
                    self.sizes.append(size - 10)
                    dst.write(bytes(buf[:10]), memoryview(buf)[10:size])


@pytest.mark.timeout(60)
def test_tcp_through_two_attached_ports_arrives_whole_as_gso_frames(
    netns_factory: NsFactory,
) -> None:
    host, one, two = _containers(netns_factory)
    with run_in_netns(host.name):
        a, b = AttachedPort.open("hv-one"), AttachedPort.open("hv-two")
    with a, b, Switch(a, b) as switch:
        server = subprocess.Popen(
            ["ip", "netns", "exec", two.name, sys.executable, "-c", _SERVER],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
            subprocess.run(
                ["ip", "netns", "exec", one.name, sys.executable, "-c", _CLIENT],
                check=True,
                timeout=30,
            )
            out, _ = server.communicate(timeout=30)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
    expected = bytes(range(256)) * 40960
    assert out.split() == [str(len(expected)), hashlib.sha256(expected).hexdigest()]
    gso = [(h, s) for h, s in zip(switch.headers, switch.sizes, strict=True) if h[1] != 0]
    assert gso, "no GSO frame read"
    header, size = max(gso, key=lambda hs: hs[1])
    assert size > 4 * MTU  # a TSO frame, whole
    assert header[0] & 1 and header[1] == 1 and 0 < header[3] <= MTU - 40  # NEEDS_CSUM, TCPV4


@pytest.mark.timeout(30)
def test_what_we_write_is_not_read_back_and_reaches_the_container(
    netns_factory: NsFactory,
) -> None:
    host, one, _ = _containers(netns_factory)
    with run_in_netns(host.name):
        port = AttachedPort.open("hv-one")
    with port:
        before = one.link_info("eth0").rx_packets
        frame = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x99" + b"\x88\xb5" + b"x" * 100
        assert port.write(bytes(10), frame) == 10 + len(frame)
        wait_for(lambda: one.link_info("eth0").rx_packets > before, 2.0, what="delivered")
        assert port.read_into(bytearray(2048)) == 0


@pytest.mark.timeout(30)
def test_a_vanished_interface_is_an_error_on_read_not_a_crash(netns_factory: NsFactory) -> None:
    host, _, _ = _containers(netns_factory)
    with run_in_netns(host.name):
        port = AttachedPort.open("hv-one")
    with port:
        host.ipr.link("del", index=host.link_index("hv-one"))
        with pytest.raises(OSError):
            for _ in range(3):
                port.read_into(bytearray(2048))
        assert port.read_into(bytearray(2048)) == 0  # reported once


@pytest.mark.timeout(30)
def test_open_names_a_missing_interface(netns_factory: NsFactory) -> None:
    host = netns_factory()
    with run_in_netns(host.name), pytest.raises(OSError):
        AttachedPort.open("no-such-if")


@pytest.mark.timeout(30)
def test_link_notifications_report_interfaces_appearing_and_going(
    netns_factory: NsFactory,
) -> None:
    host, other = netns_factory(), netns_factory()
    with run_in_netns(host.name):
        watch = LinkWatch.open()
    with watch:
        create_veth("lw-a", host, "lw-b", other)
        seen: list[tuple[str, bool]] = []

        def has(name: str, present: bool) -> bool:
            if select.select([watch], [], [], 0.05)[0]:
                events, lost = watch.drain()
                assert not lost
                seen.extend((e.ifname, e.present) for e in events)
            return (name, present) in seen

        wait_for(lambda: has("lw-a", True), 2.0, what="lw-a appears")
        assert "lw-b" not in {n for n, _ in seen}  # the other namespace's end
        with run_in_netns(host.name):
            assert "lw-a" in current_links().values()
        host.ipr.link("del", index=host.link_index("lw-a"))
        wait_for(lambda: has("lw-a", False), 2.0, what="lw-a goes")
