"""sclp.io.rawip and sclp.io.nft against the real kernel: raw IPv4 and IPv6 tunnel
packets between two namespaces over a veth pair (strided sendmmsg, recvmmsg batches
with NumPy sums), and the STT RST guard."""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time
from collections.abc import Callable

import numpy as np
import pytest

from sclp.engine.segmenter import Segmenter
from sclp.io._mmsg import BatchReceiver
from sclp.io.netns import NetNS, NetnsError, create_veth, run_in_netns
from sclp.io.nft import (
    NftError,
    _nft,
    install_stt_rst_guard,
    remove_stt_rst_guard,
    stt_guard_table,
    stt_rst_guard_drops,
)
from sclp.io.rawip import (
    IPPROTO_GRE,
    IPPROTO_SCLP,
    IPPROTO_TCP,
    RawBatch,
    RawIpSocket,
    source_key,
)
from sclp.wire.checksum import internet_checksum, ones_sum
from sclp.wire.stt import STT_PORT

from ..e2e.helpers import wait_for

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]

NsFactory = Callable[[], NetNS]
IP_A, IP_B = "10.71.0.1", "10.71.0.2"
IP6_A, IP6_B = "fd71::1", "fd71::2"


@pytest.fixture
def veth_pair(netns_factory: NsFactory) -> tuple[NetNS, NetNS]:
    """10.71.0.1 / fd71::1 in A <-> 10.71.0.2 / fd71::2 in B, MTU 1500, no IPv6 DAD
    (the addresses are usable at once)."""
    a, b = netns_factory(), netns_factory()
    create_veth("sclpva", a, "sclpvb", b, mtu=1500)
    for ns, dev, ip4, ip6 in ((a, "sclpva", IP_A, IP6_A), (b, "sclpvb", IP_B, IP6_B)):
        # The kernel runs DAD when either "all" or the device asks for it.
        ns.write_sysctl("net.ipv6.conf.all.accept_dad", 0)
        ns.write_sysctl(f"net.ipv6.conf.{dev}.accept_dad", 0)
        ns.add_address(dev, f"{ip4}/24")
        ns.add_address(dev, f"{ip6}/64")
    for ns, ip6 in ((a, IP6_A), (b, IP6_B)):  # a tentative address cannot be bound yet
        wait_for(lambda ns=ns, ip6=ip6: _usable(ns, ip6), 5.0, what=f"{ip6} usable")
    return a, b


def _usable(ns: NetNS, address: str) -> bool:
    """Is ``address`` on an interface of ``ns`` and past duplicate address detection
    (not IFA_F_TENTATIVE)?"""
    found = ns.ipr.get_addr(family=socket.AF_INET6, address=address)
    return bool(found) and not any(msg["flags"] & 0x40 for msg in found)


Packet = tuple[bytes, object, int, int]  # (packet, source key, L4 offset, L4 sum)


def _collect(rx: RawIpSocket, count: int, timeout: float = 5.0) -> list[Packet]:
    """``count`` packets (or what came before the timeout), copied out of the slots."""
    out: list[Packet] = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([rx], [], [], remaining)[0]:
            break
        b = rx.recv_batch()
        for i in range(b.count):
            out.append((bytes(b.views[i][: b.sizes[i]]), b.sources[i], b.offsets[i], b.l4_sums[i]))
    return out


@pytest.mark.parametrize("protocol", [IPPROTO_SCLP, IPPROTO_GRE])
def test_send_and_receive_between_namespaces(veth_pair: tuple[NetNS, NetNS], protocol: int) -> None:
    a, b = veth_pair
    with (
        RawIpSocket.open(protocol, IP_B, netns=b.name) as rx,
        RawIpSocket.open(protocol, IP_A, netns=a.name) as tx,
    ):
        msgs = [[b"HDR%d" % i, os.urandom(100 + i)] for i in range(5)]
        for parts in msgs:
            assert tx.send_to(parts, IP_B) == sum(map(len, parts))
        got = _collect(rx, 5)
        assert len(got) == 5
        for (packet, source, offset, l4_sum), parts in zip(got, msgs, strict=True):
            assert source == source_key(IP_A)
            assert offset == 20
            assert packet[offset:] == b"".join(parts)
            assert l4_sum == ones_sum(b"".join(parts))
            assert packet[9] == protocol
            assert packet[6] & 0x40  # DF: the kernel never fragments tunnel packets
            (total,) = struct.unpack_from("!H", packet, 2)
            assert total == len(packet)


def test_send_strided_sends_separate_packets_with_valid_sums(
    veth_pair: tuple[NetNS, NetNS],
) -> None:
    a, b = veth_pair
    payload = os.urandom(65000)
    seg = Segmenter(ident_start=5).segment_payload(payload, 50000, 4789, 1468)
    with (
        RawIpSocket.open(IPPROTO_SCLP, IP_B, netns=b.name) as rx,
        RawIpSocket.open(IPPROTO_SCLP, IP_A, netns=a.name) as tx,
    ):
        assert tx.send_strided(seg.buffer, seg.stride, IP_B) == seg.count == 45
        got = _collect(rx, seg.count)
    segments = [bytes(s) for s in seg.segments()]
    assert [p[o:] for p, _, o, _ in got] == segments
    assert [len(p) for p, _, _, _ in got] == [20 + len(s) for s in segments]
    assert {src for _, src, _, _ in got} == {source_key(IP_A)}
    assert [s for _, _, _, s in got] == [ones_sum(s) for s in segments]
    assert all(s == 0xFFFF for _, _, _, s in got)  # valid SCLP checksums


def test_send_strided_more_than_one_sendmmsg(veth_pair: tuple[NetNS, NetNS]) -> None:
    a, b = veth_pair
    buf = bytes(range(256)) * 12 + b"odd"  # 279 packets of 11 bytes and a 6-byte one
    count = -(-len(buf) // 11)
    with (
        RawIpSocket.open(IPPROTO_GRE, IP_B, netns=b.name, batch=16) as rx,
        RawIpSocket.open(IPPROTO_GRE, IP_A, netns=a.name) as tx,
    ):
        assert count > 256  # the sender's iovec table holds 128: three sendmmsg calls
        assert tx.send_strided(buf, 11, IP_B) == count
        assert tx.send_strided(b"", 11, IP_B) == 0
        with pytest.raises(ValueError):
            tx.send_strided(buf, 0, IP_B)
        got = _collect(rx, count)
    assert b"".join(p[o:] for p, _, o, _ in got) == buf
    assert [len(p) - 20 for p, _, _, _ in got] == [11] * (count - 1) + [len(buf) % 11 or 11]


def test_packet_over_the_mtu_is_emsgsize(veth_pair: tuple[NetNS, NetNS]) -> None:
    a, b = veth_pair
    with (
        RawIpSocket.open(IPPROTO_SCLP, IP_B, netns=b.name) as rx,
        RawIpSocket.open(IPPROTO_SCLP, IP_A, netns=a.name) as tx,
    ):
        with pytest.raises(OSError) as info:
            tx.send_to(bytes(1500 - 20 + 1), IP_B)
        assert info.value.errno == errno.EMSGSIZE
        with pytest.raises(OSError) as info:
            tx.send_strided(bytes(3000), 1500 - 20 + 1, IP_B)
        assert info.value.errno == errno.EMSGSIZE
        assert tx.send_to([bytes(10), bytes(1500 - 20 - 10)], IP_B) == 1480
        ((packet, _, _, _),) = _collect(rx, 1)
        assert len(packet) == 1500


def _ip_in_delivers(ns: NetNS) -> int:
    """``Ip: InDelivers`` of /proc/net/snmp in ``ns``."""
    with run_in_netns(ns.name), open("/proc/thread-self/net/snmp") as f:
        names, values = [line.split() for line in f if line.startswith("Ip:")][:2]
    return int(values[names.index("InDelivers")])


def test_recv_batch_limits_and_drains(veth_pair: tuple[NetNS, NetNS]) -> None:
    a, b = veth_pair
    with (
        RawIpSocket.open(IPPROTO_SCLP, IP_B, netns=b.name, batch=16) as rx,
        RawIpSocket.open(IPPROTO_SCLP, IP_A, netns=a.name) as tx,
    ):
        assert rx.recv_batch() == RawBatch(0, [], [], [], [], [])
        delivered = _ip_in_delivers(b)
        assert tx.send_strided(b"".join(b"%02d" % i for i in range(10)), 2, IP_B) == 10
        # All ten queued before the first read (the kernel counts a raw-only protocol's
        # packet as delivered after handing it to every raw socket).
        wait_for(
            lambda: _ip_in_delivers(b) - delivered >= 10,
            timeout=5.0,
            what="10 packets delivered in B",
        )
        select.select([rx], [], [], 5)
        first = rx.recv_batch(3)
        assert first.count == 3
        payloads = [bytes(first.views[i][20 : first.sizes[i]]) for i in range(3)]
        rest = rx.recv_batch()
        assert rest.count == 7
        payloads += [bytes(rest.views[i][20 : rest.sizes[i]]) for i in range(7)]
        assert payloads == [b"%02d" % i for i in range(10)]
        assert rx.recv_batch().count == 0


def test_bind_addr_filters_by_destination(veth_pair: tuple[NetNS, NetNS]) -> None:
    a, b = veth_pair
    b.add_address("sclpvb", "10.71.0.3/24")
    with (
        RawIpSocket.open(IPPROTO_SCLP, IP_B, netns=b.name) as bound,
        RawIpSocket.open(IPPROTO_SCLP, "10.71.0.3", netns=b.name) as other,
        RawIpSocket.open(IPPROTO_SCLP, IP_A, netns=a.name) as tx,
    ):
        tx.send_to(b"to .3", "10.71.0.3")
        tx.send_to(b"to .2", IP_B)
        assert [p[o:] for p, _, o, _ in _collect(other, 2, timeout=0.5)] == [b"to .3"]
        assert [p[o:] for p, _, o, _ in _collect(bound, 2, timeout=0.5)] == [b"to .2"]


def test_bind_errors_keep_their_errno(netns: NetNS) -> None:
    with pytest.raises(OSError) as info:
        RawIpSocket.open(IPPROTO_SCLP, "10.99.0.1", netns=netns.name)
    assert info.value.errno == errno.EADDRNOTAVAIL
    for bad in (0, 255, -1):
        with pytest.raises(ValueError):
            RawIpSocket.open(bad, "127.0.0.1", netns=netns.name)


def test_truncated_packets_are_counted(veth_pair: tuple[NetNS, NetNS]) -> None:
    a, b = veth_pair
    with (
        RawIpSocket.open(IPPROTO_SCLP, IP_B, netns=b.name, slot_size=200) as rx,
        RawIpSocket.open(IPPROTO_SCLP, IP_A, netns=a.name) as tx,
    ):
        tx.send_to(bytes(500), IP_B)
        tx.send_to(b"\x01" * 50, IP_B)
        got = _collect(rx, 2, timeout=1.0)
        assert [(len(p), o, s) for p, _, o, s in got] == [(70, 20, ones_sum(b"\x01" * 50))]
        assert rx.truncated == 1


def test_ipv6_strided_send_and_receive(veth_pair: tuple[NetNS, NetNS]) -> None:
    a, b = veth_pair
    buf = os.urandom(10 * 1400 + 33)
    with (
        RawIpSocket.open(IPPROTO_SCLP, IP6_B, netns=b.name) as rx,
        RawIpSocket.open(IPPROTO_SCLP, IP6_A, netns=a.name) as tx,
    ):
        assert rx.family == socket.AF_INET6
        assert tx.send_strided(buf, 1400, IP6_B) == 11
        assert tx.send_to([b"one", b" packet"], IP6_B) == 10
        got = _collect(rx, 12)
        with pytest.raises(OSError) as info:  # IPV6_PMTUDISC_DO: no fragments either
            tx.send_to(bytes(1500 - 40 + 1), IP6_B)
        assert info.value.errno == errno.EMSGSIZE
    pieces = [buf[i : i + 1400] for i in range(0, len(buf), 1400)] + [b"one packet"]
    assert [p for p, _, _, _ in got] == pieces  # no IP header on IPv6 raw sockets
    assert {(src, o) for _, src, o, _ in got} == {(source_key(IP6_A), 0)}
    assert [s for _, _, _, s in got] == [ones_sum(p) for p in pieces]


def test_source_keys() -> None:
    assert source_key("10.0.0.1") != source_key("10.0.0.2")
    assert source_key("fd00::") == bytes([0xFD]) + bytes(15)  # trailing zeros kept
    assert source_key("fd00::1") != source_key("fd00::")


def _slots(packets: list[bytes]) -> tuple[BatchReceiver, list[int]]:
    rx = BatchReceiver(len(packets), 128)
    for view, pkt in zip(rx.views, packets, strict=False):
        view[: len(pkt)] = pkt
    return rx, [len(p) for p in packets]


def _checked_header(length: int) -> bytes:
    header = bytearray([0x40 | length // 4]) + bytes(length - 1)
    header[10:12] = internet_checksum(bytes(header)).to_bytes(2, "big")
    return bytes(header)


def test_offsets_flag_unusable_ipv4_headers() -> None:
    """What the kernel hands a raw IPv4 socket is checked, so only the header length
    matters; it must be at least 20 and fit in the packet, else offset -1.  (The
    headers with a length are checksummed, as the kernel would deliver them.)"""
    payload = b"\x12\x34" * 20 + b"\x56"
    good = _checked_header(20) + payload
    options = _checked_header(24) + payload
    packets = [good, options, b"\x4f" + bytes(40), b"\x44" + bytes(30), b"", b"\x45" + bytes(10)]
    rx, sizes = _slots(packets)
    offsets, sums = rx.ipv4_columns(len(packets), np.asarray(sizes, np.uint32), check_header=False)
    assert offsets.tolist() == [20, 24, -1, -1, -1, -1]
    assert sums.tolist() == [ones_sum(payload), ones_sum(payload), 0, 0, 0, 0]


def test_l4_sum_of_an_all_zero_packet_is_zero_where_the_header_is_unchecked() -> None:
    """A packet socket's columns (nobody vetted the header) are exact, like ones_sum:
    0, not the 0xFFFF a slot sum including the header gives.  A raw socket's columns
    take the slot sum (the kernel-checked header adds the identity), where an all-zero
    L4 packet reads 0xFFFF; the SCLP reassembler still drops an all-zero segment
    (a zero checksum field is 'not computed', refused in the IP carrier)."""
    header = bytearray(b"\x45" + bytes(19))
    header[2:4] = (28).to_bytes(2, "big")
    header[8] = 64
    header[9] = 234
    header[10:12] = internet_checksum(bytes(header)).to_bytes(2, "big")
    rx, sizes = _slots([bytes(header) + bytes(8)])
    _, exact = rx.ipv4_columns(1, np.asarray(sizes, np.uint32), check_header=True)
    assert exact.tolist() == [ones_sum(bytes(8))] == [0]
    _, kernel_checked = rx.ipv4_columns(1, np.asarray(sizes, np.uint32), check_header=False)
    assert kernel_checked.tolist() == [0xFFFF]


# -- STT: raw TCP and the RST guard -----------------------------------------------------


def _stt_like_segment(src: str, dst: str, payload: bytes) -> bytes:
    """A TCP segment (ACK|PSH) to the STT port with a valid checksum, as an STT sender
    emits it (the kernel adds the IPv4 header)."""
    header = bytearray(struct.pack("!HHIIBBHHH", 50000, STT_PORT, 1, 1, 5 << 4, 0x18, 65535, 0, 0))
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst)
    pseudo += struct.pack("!BBH", 0, 6, len(header) + len(payload))
    struct.pack_into("!H", header, 16, internet_checksum(pseudo + header + payload))
    return bytes(header) + payload


def _rsts_from(rx: RawIpSocket, source: str, timeout: float) -> int:
    count = 0
    for packet, src, offset, _ in _collect(rx, 1_000, timeout=timeout):
        (sport,) = struct.unpack_from("!H", packet, offset)
        if src == source_key(source) and sport == STT_PORT and packet[offset + 13] & 0x04:
            count += 1
    return count


def test_raw_tcp_socket_sees_every_tcp_packet(veth_pair: tuple[NetNS, NetNS]) -> None:
    a, b = veth_pair
    with RawIpSocket.open(IPPROTO_TCP, IP_B, netns=b.name) as rx:
        listener = b.socket(socket.AF_INET, socket.SOCK_STREAM)
        client = a.socket(socket.AF_INET, socket.SOCK_STREAM)
        with listener, client:
            listener.bind((IP_B, 0))
            listener.listen(1)
            client.settimeout(5)
            client.connect(listener.getsockname())
            port = listener.getsockname()[1]
            dports = {struct.unpack_from("!H", p, o + 2)[0] for p, _, o, _ in _collect(rx, 2)}
        # Not STT at all: the endpoint has to filter by destination port.
        assert port in dports


def test_stt_rst_guard(veth_pair: tuple[NetNS, NetNS]) -> None:
    a, b = veth_pair
    segment = _stt_like_segment(IP_A, IP_B, b"stt payload")
    with (
        RawIpSocket.open(IPPROTO_TCP, IP_A, netns=a.name) as a_tcp,
        RawIpSocket.open(IPPROTO_TCP, IP_B, netns=b.name) as b_tcp,
    ):
        # Without a guard, B's kernel answers the segment with a RST.
        a_tcp.send_to([segment], IP_B)
        assert _rsts_from(a_tcp, IP_B, timeout=2.0) == 1
        _collect(b_tcp, 1_000, timeout=0.2)

        try:
            assert install_stt_rst_guard(STT_PORT, "ep1", netns=b.name) == "sclp_ep1"
            install_stt_rst_guard(STT_PORT, "ep1", netns=b.name)  # idempotent
            a_tcp.send_to([segment], IP_B)
            got = _collect(b_tcp, 1, timeout=2.0)
            assert [p[o + 20 :] for p, _, o, _ in got] == [b"stt payload"]  # endpoint sees it
            assert _rsts_from(a_tcp, IP_B, timeout=0.5) == 0  # ... the RST is gone
            assert stt_rst_guard_drops("ep1", netns=b.name) == 1

            # A second endpoint's guard is a separate table; removing one keeps the other.
            install_stt_rst_guard(STT_PORT, "ep2", netns=b.name)
            remove_stt_rst_guard("ep1", netns=b.name)
            remove_stt_rst_guard("ep1", netns=b.name)  # idempotent
            assert stt_rst_guard_drops("ep1", netns=b.name) == 0
            a_tcp.send_to([segment], IP_B)
            assert _rsts_from(a_tcp, IP_B, timeout=0.5) == 0  # ep2's table still guards

            remove_stt_rst_guard("ep2", netns=b.name)
            a_tcp.send_to([segment], IP_B)
            assert _rsts_from(a_tcp, IP_B, timeout=2.0) == 1
        finally:
            remove_stt_rst_guard("ep1", netns=b.name)
            remove_stt_rst_guard("ep2", netns=b.name)
    # The guard lived in B only.
    assert stt_rst_guard_drops("ep1", netns=a.name) == 0


def test_guard_names_and_errors(netns: NetNS) -> None:
    assert stt_guard_table("node-1.a") == "sclp_node_1_a"
    with pytest.raises(ValueError):
        stt_guard_table("")
    with pytest.raises(ValueError):
        install_stt_rst_guard(0, netns=netns.name)
    with pytest.raises(NetnsError, match="does not exist"):
        install_stt_rst_guard(STT_PORT, netns=f"{netns.name}-gone")
    with pytest.raises(NftError, match="nft -j list table inet sclp_nosuch failed"):
        _nft(["-j", "list", "table", "inet", "sclp_nosuch"], None, netns.name)


def test_a_receiver_without_sums_gives_offsets_and_zero_sums() -> None:
    """GRE has no L4 checksum: its socket skips the sums (and the zeroing of the
    slots they need) and still finds the payload after the header."""
    payload = b"\x12\x34" * 20
    packets = [_checked_header(20) + payload, _checked_header(24) + payload]
    rx = BatchReceiver(len(packets), 128, zeroed=False)
    for view, pkt in zip(rx.views, packets, strict=False):
        view[: len(pkt)] = pkt
    sizes = np.asarray([len(p) for p in packets], np.uint32)
    offsets, sums = rx.ipv4_columns(len(packets), sizes, check_header=False)
    assert offsets.tolist() == [20, 24]
    assert sums.tolist() == [0, 0]
