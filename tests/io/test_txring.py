"""sclp.io.txring and sclp.io.nexthop: the header builder and path choice (pure), and
an AF_PACKET TX ring between two namespaces over a veth pair, received by a raw IP
socket (real kernel, root)."""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from pyroute2 import IPRoute

from sclp.io.netns import NetNS, create_veth, run_in_netns
from sclp.io.nexthop import NextHopCache, resolve_next_hop
from sclp.io.rawip import IPPROTO_SCLP, RawIpSocket
from sclp.io.txring import (
    ETH_IP_HLEN,
    HeaderTemplate,
    PacketTxRing,
    TxPath,
    TxRingSender,
    choose_path,
    fill_ipv4_headers,
)
from sclp.wire import ipv4
from sclp.wire.checksum import ones_sum

from ..e2e.helpers import wait_for

NsFactory = Callable[[], NetNS]
IP_A, IP_B = "10.72.0.1", "10.72.0.2"
MAC_A, MAC_B = "02:00:00:72:00:01", "02:00:00:72:00:02"


# -- pure: headers and the path decision -----------------------------------------------


def test_headers_decode_with_valid_checksums() -> None:
    template = HeaderTemplate.build(
        b"\x02\0\0\0\0\x01", b"\x02\0\0\0\0\x02", "192.0.2.1", "198.51.100.7", 234
    )
    lengths = np.array([1400, 1400, 7, 0, 65515], dtype=np.uint32)
    rows = np.zeros((5, 40), dtype=np.uint8)
    fill_ipv4_headers(rows, template, lengths, 0xFFFE)  # the IDs wrap
    for i, row in enumerate(rows):
        raw = bytes(row[:ETH_IP_HLEN])
        assert raw[:14] == b"\x02\0\0\0\0\x02" + b"\x02\0\0\0\0\x01" + b"\x08\x00"
        ip = raw[14:]
        assert ones_sum(ip) == 0xFFFF  # the header checksum
        hdr = ipv4.decode(ip + bytes(int(lengths[i])), verify_checksum=True)
        assert hdr.total_length == 20 + lengths[i]
        assert hdr.ident == (0xFFFE + i) & 0xFFFF
        assert hdr.flags == ipv4.IPv4Flags.DF and hdr.frag_offset == 0
        assert (hdr.ttl, hdr.protocol) == (64, 234)
        assert hdr.src == socket.inet_aton("192.0.2.1")
        assert hdr.dst == socket.inet_aton("198.51.100.7")
        # the same header as the slow, one-at-a-time encoder writes
        assert ip == ipv4.encode(
            ipv4.IPv4Header(hdr.src, hdr.dst, 234, hdr.total_length, ident=hdr.ident)
        )
    assert not rows[:, ETH_IP_HLEN:].any()  # nothing past the headers


@pytest.mark.parametrize(
    ("dst", "ifindex", "stale", "fits", "path"),
    [
        ("10.0.0.1", 3, False, True, TxPath.RING),
        ("fd00::1", 3, False, True, TxPath.IPV6),
        ("10.0.0.1", None, False, True, TxPath.NO_NEIGHBOUR),
        ("10.0.0.1", -1, False, True, TxPath.OTHER_DEVICE),
        ("10.0.0.1", 3, True, True, TxPath.CONFIRM),
        ("10.0.0.1", 3, False, False, TxPath.TOO_BIG),
    ],
)
def test_choose_path(dst: str, ifindex: int | None, stale: bool, fits: bool, path: TxPath) -> None:
    assert choose_path(dst, ifindex, stale, fits) is path


# -- the real kernel ---------------------------------------------------------------------


@pytest.fixture
def veth_pair(netns_factory: NsFactory) -> tuple[NetNS, NetNS]:
    """IP_A on sclpta (in A) <-> IP_B on sclptb (in B), MTU 1500, fixed MACs."""
    a, b = netns_factory(), netns_factory()
    create_veth("sclpta", a, "sclptb", b, mtu=1500, up=False)
    for ns, dev, ip, mac in ((a, "sclpta", IP_A, MAC_A), (b, "sclptb", IP_B, MAC_B)):
        ns.ipr.link("set", index=ns.link_index(dev), address=mac)
        ns.set_link(dev, up=True)
        ns.add_address(dev, f"{ip}/24")
    return a, b


@pytest.fixture
def ipr_a(veth_pair: tuple[NetNS, NetNS]) -> Iterator[IPRoute]:
    with run_in_netns(veth_pair[0].name):
        ipr = IPRoute()
    yield ipr
    ipr.close()


def _receive(rx: RawIpSocket, count: int, timeout: float = 5.0) -> list[bytes]:
    """Up to ``count`` whole IPv4 packets (header included), or what came in time."""
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([rx.sock], [], [], remaining)[0]:
            break
        try:
            out.append(rx.sock.recv(4096))
        except BlockingIOError:
            continue
    return out


def _check_packets(got: list[bytes], buf: bytes, stride: int, ring: bool = True) -> None:
    """``ring``: sent by the ring, whose IDs differ (the kernel gives DF packets of a
    raw socket ID 0)."""
    segments = [buf[i : i + stride] for i in range(0, len(buf), stride)]
    assert [p[20:] for p in got] == segments
    ids = set()
    for packet in got:
        hdr = ipv4.decode(packet, verify_checksum=True)
        assert hdr.header_len == 20
        assert hdr.total_length == len(packet)
        assert hdr.flags == ipv4.IPv4Flags.DF
        assert (hdr.ttl, hdr.protocol) == (64, IPPROTO_SCLP)
        assert (hdr.src, hdr.dst) == (socket.inet_aton(IP_A), socket.inet_aton(IP_B))
        ids.add(hdr.ident)
    if ring:
        assert len(ids) == len(got)


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_ring_sends_strided_segments(veth_pair: tuple[NetNS, NetNS]) -> None:
    a, b = veth_pair
    buf = os.urandom(45 * 1400 + 123)  # 45 full segments and a short one
    with (
        RawIpSocket.open(IPPROTO_SCLP, IP_B, netns=b.name) as rx,
        contextlib.closing(PacketTxRing.open("sclpta", netns=a.name)) as ring,
    ):
        assert ring.mac == _mac(MAC_A)
        assert ring.mtu == 1500
        template = HeaderTemplate.build(ring.mac, _mac(MAC_B), IP_A, IP_B, IPPROTO_SCLP)
        for _ in range(3):  # wraps around the ring (2048 frames) no matter the start
            assert ring.send_strided(buf, 1400, template) == 46
            _check_packets(_receive(rx, 46), buf, 1400)
        big = bytes(1500 - 20) + b"!"  # one byte over the MTU
        with pytest.raises(OSError) as exc:
            ring.send_strided(big, len(big), template)
        assert exc.value.errno == errno.EMSGSIZE
        assert ring.send_strided(big[:-1], len(big), template) == 1  # exactly the MTU
        assert len(_receive(rx, 1)[0]) == 1500
        assert ring.wrong_format == 0


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_full_ring_queues_fewer_and_sends_later(veth_pair: tuple[NetNS, NetNS]) -> None:
    a, b = veth_pair
    with (
        RawIpSocket.open(IPPROTO_SCLP, IP_B, netns=b.name) as rx,
        contextlib.closing(PacketTxRing.open("sclpta", netns=a.name, frames=32)) as ring,
    ):
        assert ring.frames == 32
        template = HeaderTemplate.build(ring.mac, _mac(MAC_B), IP_A, IP_B, IPPROTO_SCLP)
        b.set_link("sclptb", up=False)  # no carrier on sclpta: the driver refuses
        wait_for(lambda: not a.link_info("sclpta").up or _no_carrier(a), 5.0, what="carrier")
        buf = bytes(range(100)) * 40  # 40 segments of 100
        assert ring.send_strided(buf, 100, template) == 32  # the ring holds 32
        assert ring.deferred >= 1
        assert ring.send_strided(buf, 100, template) == 0  # full
        b.set_link("sclptb", up=True)
        wait_for(lambda: not _no_carrier(a), 5.0, what="carrier back")
        ring.kick()
        got = _receive(rx, 32)
        assert [p[20:] for p in got] == [buf[i : i + 100] for i in range(0, 3200, 100)]
        wait_for(lambda: ring.free_frames(32) == 32, 5.0, what="frames back")
        assert ring.send_strided(buf, 100, template) == 40 - 8  # 32 frames again ...
        assert len(_receive(rx, 32)) == 32


def _no_carrier(ns: NetNS) -> bool:
    link = ns.ipr.get_links(ns.link_index("sclpta"))[0]
    return bool(link.get_attr("IFLA_CARRIER") == 0)


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_sender_falls_back_until_the_neighbour_is_known(
    veth_pair: tuple[NetNS, NetNS], ipr_a: IPRoute
) -> None:
    a, b = veth_pair
    buf = os.urandom(10 * 1000 + 1)
    raw = RawIpSocket.open(IPPROTO_SCLP, IP_A, netns=a.name)
    ring = PacketTxRing.open("sclpta", netns=a.name)
    with RawIpSocket.open(IPPROTO_SCLP, IP_B, netns=b.name) as rx, raw:
        sender = TxRingSender(raw, [ring], IP_A, IPPROTO_SCLP, ipr_a)
        try:
            sender.tick(100.0)
            assert resolve_next_hop(ipr_a, IP_B) is None
            assert sender.send_strided(buf, 1000, IP_B) == 11  # the kernel's way: it ARPs
            assert sender.paths == {TxPath.NO_NEIGHBOUR: 1}
            _check_packets(_receive(rx, 11), buf, 1000, ring=False)
            hop = wait_for(lambda: resolve_next_hop(ipr_a, IP_B), 5.0, what="ARP")
            assert hop.mac == _mac(MAC_B)
            assert hop.ifindex == ring.ifindex
            sender.tick(100.5)  # the unresolved answer is still cached
            assert sender.send_strided(buf, 1000, IP_B) == 11
            assert sender.paths[TxPath.RING] == 0
            _check_packets(_receive(rx, 11), buf, 1000, ring=False)
            sender.tick(102.0)
            assert sender.send_strided(buf, 1000, IP_B) == 11
            assert sender.paths[TxPath.RING] == 1
            _check_packets(_receive(rx, 11), buf, 1000)
            with pytest.raises(OSError) as exc:
                sender.send_strided(bytes(2962), 1481, IP_B)  # the ring refuses it
            assert exc.value.errno == errno.EMSGSIZE
            # One packet takes the raw socket, however well the neighbour is known.
            assert sender.send_strided(buf[:700], 1000, IP_B) == 1
            assert sender.paths[TxPath.ONE] == 1 and sender.paths[TxPath.RING] == 1
            _check_packets(_receive(rx, 1), buf[:700], 1000, ring=False)
        finally:
            sender.close()


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_next_hop_cache_uses_now(veth_pair: tuple[NetNS, NetNS], ipr_a: IPRoute) -> None:
    a, _ = veth_pair
    cache = NextHopCache(ipr_a, ttl=5.0, retry=1.0)
    assert cache.get(IP_B, 0.0) is None
    a.add_neighbor("sclpta", IP_B, MAC_B)
    assert cache.get(IP_B, 0.9) is None  # cached "unknown"
    hop = cache.get(IP_B, 1.0)
    assert hop is not None and hop.mac == _mac(MAC_B)
    assert not hop.stale and hop.mtu is None
    assert cache.lookups == 2
    assert cache.get(IP_B, 5.9) is hop
    assert cache.lookups == 2
    assert cache.get("10.99.0.1", 0.0) is None  # no route at all


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))
