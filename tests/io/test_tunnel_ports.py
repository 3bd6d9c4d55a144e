"""The classic tunnels' configured UDP ports (``underlay.vxlan_port``,
``underlay.geneve_port``) on real sockets: the endpoint's provisioning binds the
configured port, its sender puts every datagram of the network on it, and what a peer
sends to it comes back to the VM's port.  Inside one namespace made for the test, on
its loopback (``127.0.0.1`` the endpoint, ``127.0.0.2`` the peer)."""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable

import pytest

from sclp.endpoint import provision
from sclp.endpoint.config import parse_config
from sclp.endpoint.datapath import FRAME_BUF, HEADROOM, DataPath
from sclp.endpoint.runner import UnderlaySender
from sclp.endpoint.tunnels import Channel
from sclp.io.netns import NetNS, run_in_netns
from sclp.io.udp import UdpSocket
from sclp.wire import geneve, vxlan
from sclp.wire.virtio_net import VNET_HDR_LEN, VNET_HDR_NONE

NsFactory = Callable[[], NetNS]
LOCAL, PEER = "127.0.0.1", "127.0.0.2"
VNI = 42
MAC_VM, MAC_REMOTE = bytes.fromhex("020000000a01"), bytes.fromhex("020000000b01")
# protocol, its channel, the key, the port set, the header a datagram starts with
CASES = [
    ("vxlan", Channel.VXLAN, "vxlan_port", 8472, vxlan.header(VNI)),
    ("geneve", Channel.GENEVE, "geneve_port", 6082, geneve.header(VNI)),
]


def _config(protocol: str, key: str, port: int) -> str:
    return (
        f'name = "ports"\n[underlay]\nlocal = "{LOCAL}"\nmtu = 1500\n{key} = {port}\n'
        f'[[network]]\nvni = {VNI}\nprotocol = "{protocol}"\ntap = "t42"\n'
        f'peers = ["{PEER}"]\n'
    )


def _frame(dst: bytes, src: bytes, tag: bytes) -> bytes:
    """A small Ethernet frame (an experimental EtherType) that carries ``tag``."""
    return dst + src + struct.pack("!H", 0x88B5) + tag.ljust(46, b".")


def _wait_readable(sock: socket.socket, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not select.select([sock], [], [], max(0.0, deadline - time.monotonic()))[0]:
        if time.monotonic() > deadline:
            pytest.fail(f"nothing arrived at {sock.getsockname()} within {timeout} s")


@pytest.mark.netns
@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("protocol", "channel", "key", "port", "header"), CASES, ids=[c[0] for c in CASES]
)
def test_classic_tunnel_uses_the_configured_port(
    netns_factory: NsFactory,
    protocol: str,
    channel: Channel,
    key: str,
    port: int,
    header: bytes,
) -> None:
    ns = netns_factory()
    cfg = parse_config(_config(protocol, key, port))
    dp = DataPath(cfg, 1500)
    assert provision.filter_ports(cfg, dp) == ([port], [], [])
    vm_port = dp.ports["t42"]
    with contextlib.ExitStack() as stack, run_in_netns(ns.name):
        sockets = provision.open_underlay(cfg, dp, stack)
        ours, send_port = sockets.udp[channel]
        assert send_port == port
        assert ours.local_address == (LOCAL, port)
        peer = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        peer.bind((PEER, port))

        # Sent: a broadcast from the VM leaves for the peer's configured port.
        buf = bytearray(FRAME_BUF)
        out_frame = _frame(b"\xff" * 6, MAC_VM, b"to the peer")
        buf[HEADROOM : HEADROOM + len(out_frame)] = out_frame
        sends = dp.from_vm(vm_port, buf, VNET_HDR_LEN + len(out_frame), 0.0)
        counters: Counter[str] = Counter()
        sender = UnderlaySender(sockets.udp, sockets.raw, counters)
        for send in sends:
            sender.send(send, 0.0)  # type: ignore[arg-type]
        assert not +counters, counters  # nothing counted (zeros listed)
        _wait_readable(peer)
        data, (src, sport) = peer.recvfrom(4096)
        assert (src, sport) == (LOCAL, port)  # from our socket, bound to the port
        assert data == header + out_frame

        # Received: the peer's datagram to the configured port reaches the VM's port.
        in_frame = _frame(MAC_VM, MAC_REMOTE, b"from the peer")
        peer.sendto(header + in_frame, (LOCAL, port))
        _wait_readable(ours.sock)
        views, sizes, sources, seg_sizes = ours.recv_batch()
        assert sizes == [len(header) + len(in_frame)]
        assert sources == [(PEER, port)]
        delivered = dp.from_udp(channel, sources[0][0], views[0], seg_sizes[0], 0.0)
        assert [(d.port, d.vnet, bytes(d.frame)) for d in delivered] == [
            (vm_port, VNET_HDR_NONE, in_frame)
        ]


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_port_in_use_names_the_key(netns_factory: NsFactory) -> None:
    """A kernel vxlan device on 8472 in the endpoint's own namespace holds the port:
    the one-line error says which key set it."""
    ns = netns_factory()
    cfg = parse_config(_config("vxlan", "vxlan_port", 8472))
    dp = DataPath(cfg, 1500)
    with contextlib.ExitStack() as stack, run_in_netns(ns.name):
        taken = UdpSocket.bind("0.0.0.0", 8472, gro=False)
        stack.callback(taken.close)
        with pytest.raises(provision.EndpointError) as info:
            provision.open_underlay(cfg, dp, stack)
    message = str(info.value)
    assert "UDP port 8472 (VXLAN, underlay.vxlan_port) on 127.0.0.1 is in use" in message
