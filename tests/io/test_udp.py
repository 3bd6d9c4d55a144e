"""sclp.io.udp against the real kernel: UDP GSO sends, GRO receives, recvmmsg batches,
and the kernel limits the module documents."""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
from collections.abc import Callable

import pytest

from sclp.io.linux import (
    IP_MTU_DISCOVER,
    IP_PMTUDISC_DONT,
    IPV6_MTU_DISCOVER,
    IPV6_PMTUDISC_DO,
    SO_NO_CHECK,
)
from sclp.io.netns import NetNS, create_veth
from sclp.io.udp import (
    GSO_COALESCED_MAX_V4,
    SOL_UDP,
    UDP_GRO,
    UDP_MAX_PAYLOAD_V4,
    UDP_MAX_SEGMENTS,
    UDP_SEGMENT,
    UdpBatch,
    UdpSocket,
)

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]

NsFactory = Callable[[], NetNS]


def _collect(rx: UdpSocket, nbytes: int, timeout: float = 5.0) -> UdpBatch:
    """Receive until ``nbytes`` arrived (or the timeout), merging the batches."""
    out = UdpBatch([], [], [], [])
    got = 0
    while got < nbytes:
        ready, _, _ = select.select([rx], [], [], timeout)
        if not ready:
            break
        batch = rx.recv_batch()
        out.views.extend(memoryview(bytes(v)) for v in batch.views)  # copies: slots reused
        out.sizes.extend(batch.sizes)
        out.sources.extend(batch.sources)
        out.gso_sizes.extend(batch.gso_sizes)
        got += sum(batch.sizes)
    return out


@pytest.fixture
def veth_pair(netns_factory: NsFactory) -> tuple[NetNS, NetNS]:
    """Two namespaces joined by a veth pair, 10.70.0.1 <-> 10.70.0.2, MTU 1500."""
    a, b = netns_factory(), netns_factory()
    create_veth("sclpva", a, "sclpvb", b, mtu=1500)
    a.add_address("sclpva", "10.70.0.1/24")
    b.add_address("sclpvb", "10.70.0.2/24")
    return a, b


def test_gso_send_arrives_as_one_gro_buffer_on_loopback(netns: NetNS) -> None:
    with (
        UdpSocket.bind("127.0.0.1", 0, netns=netns.name) as rx,
        UdpSocket.bind("127.0.0.1", 0, netns=netns.name) as tx,
    ):
        payload = os.urandom(40 * 1400 - 7)
        assert tx.send_gso(payload, 1400, rx.local_address) == 40
        batch = _collect(rx, len(payload))
        assert batch.sizes == [len(payload)]
        assert batch.gso_sizes == [1400]
        assert batch.sources == [tx.local_address]
        assert bytes(batch.views[0]) == payload


def test_gso_send_arrives_as_one_gro_buffer_across_veth(veth_pair: tuple[NetNS, NetNS]) -> None:
    a, b = veth_pair
    with (
        UdpSocket.bind("10.70.0.2", 0, netns=b.name) as rx,
        UdpSocket.bind("10.70.0.1", 0, netns=a.name) as tx,
    ):
        payload = os.urandom(46 * 1400)
        assert tx.send_gso(payload, 1400, rx.local_address) == 46
        batch = _collect(rx, len(payload))
        assert batch.sizes == [len(payload)]
        assert batch.gso_sizes == [1400]
        assert bytes(batch.views[0]) == payload


def test_socket_without_gro_gets_single_datagrams(netns: NetNS) -> None:
    with (
        UdpSocket.bind("127.0.0.1", 0, netns=netns.name, gro=False) as rx,
        UdpSocket.bind("127.0.0.1", 0, netns=netns.name) as tx,
    ):
        payload = os.urandom(10 * 1000)
        assert tx.send_gso(payload, 1000, rx.local_address) == 10
        batch = _collect(rx, len(payload))
        assert batch.sizes == [1000] * 10
        assert batch.gso_sizes == batch.sizes
        assert b"".join(batch.views) == payload


def test_more_segments_than_the_kernel_allows_are_split(netns: NetNS) -> None:
    with (
        UdpSocket.bind("127.0.0.1", 0, netns=netns.name) as rx,
        UdpSocket.bind("127.0.0.1", 0, netns=netns.name) as tx,
    ):
        payload = os.urandom(200 * 300)  # 60,000 bytes, but 200 > 128 segments
        assert tx.send_gso(payload, 300, rx.local_address) == 200
        batch = _collect(rx, len(payload))
        assert b"".join(batch.views) == payload
        assert set(batch.gso_sizes) == {300}
        assert batch.sizes == [UDP_MAX_SEGMENTS * 300, (200 - UDP_MAX_SEGMENTS) * 300]


def test_payload_larger_than_one_gso_send_is_split(netns: NetNS) -> None:
    with (
        UdpSocket.bind("127.0.0.1", 0, netns=netns.name) as rx,
        UdpSocket.bind("127.0.0.1", 0, netns=netns.name) as tx,
    ):
        payload = os.urandom(150_000 + 3)
        assert tx.send_gso(payload, 1400, rx.local_address) == -(-len(payload) // 1400)
        batch = _collect(rx, len(payload))
        assert b"".join(batch.views) == payload
        assert set(batch.gso_sizes) == {1400}
        assert len(batch.sizes) == 3  # 46 + 46 + 16 segments: every call coalesced whole
        assert max(batch.sizes) <= GSO_COALESCED_MAX_V4


def test_single_short_payload_is_one_plain_datagram(netns: NetNS) -> None:
    with (
        UdpSocket.bind("127.0.0.1", 0, netns=netns.name) as rx,
        UdpSocket.bind("127.0.0.1", 0, netns=netns.name) as tx,
    ):
        assert tx.send_gso(b"short", 1400, rx.local_address) == 1
        batch = _collect(rx, 5)
        assert (batch.sizes, batch.gso_sizes) == ([5], [5])
        with pytest.raises(ValueError):
            tx.send_gso(b"x", 0, rx.local_address)


def test_gso_pieces_interleaved_with_headers_arrive_as_one_gro_buffer(netns: NetNS) -> None:
    """An iovec of 12-byte headers and 1,388-byte views: the kernel cuts at gso_size
    whatever the piece boundaries, and the receiver gets one GRO buffer."""
    with (
        UdpSocket.bind("127.0.0.1", 0, netns=netns.name) as rx,
        UdpSocket.bind("127.0.0.1", 0, netns=netns.name) as tx,
    ):
        data = memoryview(os.urandom(40 * 1388 - 9))
        pieces: list[bytes | memoryview] = []
        for i, off in enumerate(range(0, len(data), 1388)):
            pieces += [i.to_bytes(12, "big"), data[off : off + 1388]]
        whole = b"".join(pieces)
        assert tx.send_gso_pieces(pieces, len(whole), 1400, rx.local_address) == 40
        batch = _collect(rx, len(whole))
        assert (batch.sizes, batch.gso_sizes) == ([len(whole)], [1400])
        assert bytes(batch.views[0]) == whole
        # One datagram: no UDP_SEGMENT; more than one call allows: joined and split.
        assert tx.send_gso_pieces([b"ab", b"c"], 3, 1400, rx.local_address) == 1
        assert bytes(_collect(rx, 3).views[0]) == b"abc"
        big = [bytes([i]) * 1000 for i in range(200)]
        assert tx.send_gso_pieces(big, 200_000, 1000, rx.local_address) == 200
        assert b"".join(_collect(rx, 200_000).views) == b"".join(big)


def test_segment_larger_than_path_mtu_is_emsgsize(veth_pair: tuple[NetNS, NetNS]) -> None:
    a, _ = veth_pair
    with UdpSocket.bind("10.70.0.1", 0, netns=a.name) as tx:
        with pytest.raises(OSError) as info:
            tx.send_gso(bytes(3000), 1500 - 28 + 1, ("10.70.0.2", 9))
        assert info.value.errno == errno.EMSGSIZE
        assert tx.send_gso(bytes(3000), 1500 - 28, ("10.70.0.2", 9)) == 3


def test_gso_refused_falls_back_to_single_sends(veth_pair: tuple[NetNS, NetNS]) -> None:
    a, b = veth_pair
    with (
        UdpSocket.bind("10.70.0.2", 0, netns=b.name) as rx,
        UdpSocket.bind("10.70.0.1", 0, netns=a.name) as tx,
    ):
        # Zero UDP checksums (SO_NO_CHECK) make the kernel refuse GSO with EINVAL.
        tx.sock.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
        payload = os.urandom(20 * 1000)
        assert tx.send_gso(payload, 1000, rx.local_address) == 20
        assert not tx.gso_ok
        assert tx.gso_fallbacks == 1
        batch = _collect(rx, len(payload))
        assert b"".join(batch.views) == payload
        assert batch.sizes == [1000] * 20  # sent one by one, so no GRO either


def test_tx_checksum_offload_off_does_not_disable_gso(veth_pair: tuple[NetNS, NetNS]) -> None:
    a, b = veth_pair
    a.set_offloads("sclpva", {"tx-checksum-ip-generic": False})
    with (
        UdpSocket.bind("10.70.0.2", 0, netns=b.name) as rx,
        UdpSocket.bind("10.70.0.1", 0, netns=a.name) as tx,
    ):
        payload = os.urandom(20 * 1000)
        assert tx.send_gso(payload, 1000, rx.local_address) == 20
        assert tx.gso_ok
        assert b"".join(_collect(rx, len(payload)).views) == payload


def test_recv_batch_limits_and_drains(netns: NetNS) -> None:
    with (
        UdpSocket.bind("127.0.0.1", 0, netns=netns.name, batch=8) as rx,
        UdpSocket.bind("127.0.0.1", 0, netns=netns.name, gro=False) as tx,
    ):
        assert rx.recv_batch() == UdpBatch([], [], [], [])
        sent = tx.send_batch([([b"dg", b"%02d" % i], rx.local_address) for i in range(11)])
        assert sent == 11
        select.select([rx], [], [], 5)
        first = rx.recv_batch(4)
        assert len(first.sizes) == 4
        payloads = [bytes(v) for v in first.views]  # copy: the next call reuses the slots
        second = rx.recv_batch()
        assert len(second.sizes) == 7  # the rest; 7 < 8 slots: the queue is drained
        assert rx.recv_batch().sizes == []
        payloads += [bytes(v) for v in second.views]
        assert payloads == [b"dg%02d" % i for i in range(11)]
        assert set(first.sources + second.sources) == {tx.local_address}


def test_batch_views_are_reused_slots(netns: NetNS) -> None:
    """The documented ownership rule: a view is valid until the next recv_batch."""
    with (
        UdpSocket.bind("127.0.0.1", 0, netns=netns.name, batch=1) as rx,
        UdpSocket.bind("127.0.0.1", 0, netns=netns.name) as tx,
    ):
        tx.send_to(b"first", rx.local_address)
        select.select([rx], [], [], 5)
        (kept,) = rx.recv_batch().views
        assert kept == b"first"
        tx.send_to([b"sec", b"ond"], rx.local_address)
        select.select([rx], [], [], 5)
        assert rx.recv_batch().views == [b"second"]
        assert kept == b"secon"  # same slot, overwritten


def test_oversized_datagram_is_counted_as_truncated(netns: NetNS) -> None:
    with (
        UdpSocket.bind("127.0.0.1", 0, netns=netns.name, buffer_size=100, gro=False) as rx,
        UdpSocket.bind("127.0.0.1", 0, netns=netns.name) as tx,
    ):
        tx.send_to(bytes(200), rx.local_address)
        tx.send_to(bytes(50), rx.local_address)
        select.select([rx], [], [], 5)
        batch = rx.recv_batch()
        assert batch.sizes == [50]
        assert rx.truncated == 1


def test_ipv6_gso_and_gro(netns: NetNS) -> None:
    with (
        UdpSocket.bind("::1", 0, netns=netns.name) as rx,
        UdpSocket.bind("::1", 0, netns=netns.name) as tx,
    ):
        payload = os.urandom(30 * 1200)
        assert tx.send_gso(payload, 1200, rx.local_address) == 30
        batch = _collect(rx, len(payload))
        assert (batch.sizes, batch.gso_sizes) == ([len(payload)], [1200])
        assert batch.sources[0][0] == "::1"


def test_large_socket_buffers(netns: NetNS) -> None:
    with UdpSocket.bind("127.0.0.1", 0, netns=netns.name, socket_buffer=8 << 20) as s:
        # The kernel doubles the value for bookkeeping; FORCE passes rmem_max as root.
        assert s.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 8 << 20
        assert s.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= 8 << 20


def test_reuse_port_sockets_share_a_port(netns: NetNS) -> None:
    with UdpSocket.bind("127.0.0.1", 0, netns=netns.name, reuse_port=True) as one:
        port = one.local_address[1]
        with UdpSocket.bind("127.0.0.1", port, netns=netns.name, reuse_port=True) as two:
            assert two.local_address == one.local_address


# -- the kernel limits the module relies on (Linux 6.18) ------------------------------


def _raw_gso_send(sock: socket.socket, nbytes: int, seg: int, dst: tuple[str, int]) -> None:
    sock.sendmsg([bytes(nbytes)], [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", seg))], 0, dst)


def test_kernel_limits(netns: NetNS) -> None:
    with UdpSocket.bind("127.0.0.1", 0, netns=netns.name) as rx:
        raw = netns.socket(socket.AF_INET, socket.SOCK_DGRAM)
        dst = rx.local_address
        with raw:
            _raw_gso_send(raw, UDP_MAX_SEGMENTS * 100, 100, dst)
            with pytest.raises(OSError) as info:
                _raw_gso_send(raw, (UDP_MAX_SEGMENTS + 1) * 100, 100, dst)
            assert info.value.errno == errno.EINVAL
            _raw_gso_send(raw, UDP_MAX_PAYLOAD_V4, 1400, dst)
            with pytest.raises(OSError) as info:
                _raw_gso_send(raw, UDP_MAX_PAYLOAD_V4 + 1, 1400, dst)
            assert info.value.errno == errno.EMSGSIZE
            _collect(rx, UDP_MAX_SEGMENTS * 100 + UDP_MAX_PAYLOAD_V4)
            # Coalesced up to GSO_COALESCED_MAX_V4; one byte more is segmented on the
            # sender (gso_max_size 65,536 counts the Ethernet header).
            _raw_gso_send(raw, GSO_COALESCED_MAX_V4, 1000, dst)
            assert len(_collect(rx, GSO_COALESCED_MAX_V4).sizes) == 1
            _raw_gso_send(raw, GSO_COALESCED_MAX_V4 + 1, 1000, dst)
            assert len(_collect(rx, GSO_COALESCED_MAX_V4 + 1).sizes) == 66
        assert rx.sock.getsockopt(SOL_UDP, UDP_GRO) == 1


# -- what the endpoint relies on: empty datagrams, DF, bind errors ---------------------


@pytest.mark.parametrize("gro", [True, False])
def test_empty_datagram_is_reported_with_size_zero(netns: NetNS, gro: bool) -> None:
    with (
        UdpSocket.bind("127.0.0.1", 0, netns=netns.name, gro=gro) as rx,
        UdpSocket.bind("127.0.0.1", 0, netns=netns.name) as tx,
    ):
        assert tx.send_to(b"", rx.local_address) == 0
        tx.send_to(b"after", rx.local_address)
        batch = _collect(rx, 5)
        assert batch.sizes == [0, 5]
        assert batch.gso_sizes == [0, 5]
        assert batch.sources == [tx.local_address] * 2
        assert [bytes(v) for v in batch.views] == [b"", b"after"]


def test_pmtu_discover_do_refuses_oversize_and_dont_fragments(
    veth_pair: tuple[NetNS, NetNS],
) -> None:
    a, b = veth_pair
    too_big = bytes(1500 - 28 + 1)
    with (
        UdpSocket.bind("10.70.0.2", 0, netns=b.name) as rx,
        UdpSocket.bind("10.70.0.1", 0, netns=a.name, pmtu_discover=True) as df,
        UdpSocket.bind("10.70.0.1", 0, netns=a.name, pmtu_discover=False) as frag,
    ):
        with pytest.raises(OSError) as info:
            df.send_to(too_big, rx.local_address)
        assert info.value.errno == errno.EMSGSIZE
        with pytest.raises(OSError) as info:
            df.send_gso(bytes(2 * len(too_big)), len(too_big), rx.local_address)
        assert info.value.errno == errno.EMSGSIZE
        assert frag.send_to(too_big, rx.local_address) == len(too_big)  # two fragments
        batch = _collect(rx, len(too_big))
        assert batch.sizes == [len(too_big)]
        assert batch.sources == [frag.local_address]


def test_pmtu_discover_on_ipv6(netns: NetNS) -> None:
    with UdpSocket.bind("::1", 0, netns=netns.name, pmtu_discover=True) as s:
        assert s.sock.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER) == IPV6_PMTUDISC_DO
    with UdpSocket.bind("127.0.0.1", 0, netns=netns.name, pmtu_discover=False) as s:
        assert s.sock.getsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER) == IP_PMTUDISC_DONT


def test_bind_errors_keep_their_errno(netns: NetNS) -> None:
    with UdpSocket.bind("127.0.0.1", 0, netns=netns.name) as one:
        with pytest.raises(OSError) as info:
            UdpSocket.bind("127.0.0.1", one.local_address[1], netns=netns.name)
        assert info.value.errno == errno.EADDRINUSE
    with pytest.raises(OSError) as info:
        UdpSocket.bind("10.99.0.1", 0, netns=netns.name)
    assert info.value.errno == errno.EADDRNOTAVAIL
