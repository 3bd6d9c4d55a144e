"""sclp.io.rawip and sclp.io.nft against the real kernel: raw IPv4 tunnels between two
namespaces over a veth pair, and the STT RST guard."""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time
from collections.abc import Callable

import pytest

from sclp.io.netns import NetNS, NetnsError, create_veth
from sclp.io.nft import (
    NftError,
    _nft,
    install_stt_rst_guard,
    remove_stt_rst_guard,
    stt_guard_table,
    stt_rst_guard_drops,
)
from sclp.io.rawip import IPPROTO_GRE, IPPROTO_SCLP, IPPROTO_TCP, RawBatch, RawIpSocket
from sclp.wire.checksum import internet_checksum

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]

NsFactory = Callable[[], NetNS]
IP_A, IP_B = "10.71.0.1", "10.71.0.2"
STT_PORT = 7471


@pytest.fixture
def veth_pair(netns_factory: NsFactory) -> tuple[NetNS, NetNS]:
    a, b = netns_factory(), netns_factory()
    create_veth("sclpva", a, "sclpvb", b, mtu=1500)
    a.add_address("sclpva", f"{IP_A}/24")
    b.add_address("sclpvb", f"{IP_B}/24")
    return a, b


def _collect(rx: RawIpSocket, count: int, timeout: float = 5.0) -> list[tuple[bytes, str, int]]:
    """(packet, source, payload offset) for ``count`` packets, copied out of the slots."""
    out: list[tuple[bytes, str, int]] = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([rx], [], [], remaining)[0]:
            break
        batch = rx.recv_batch()
        out.extend(zip((bytes(v) for v in batch.views), batch.sources, batch.offsets, strict=True))
    return out


@pytest.mark.parametrize("protocol", [IPPROTO_SCLP, IPPROTO_GRE])
def test_send_and_receive_between_namespaces(veth_pair: tuple[NetNS, NetNS], protocol: int) -> None:
    a, b = veth_pair
    with (
        RawIpSocket.open(protocol, netns=b.name) as rx,
        RawIpSocket.open(protocol, netns=a.name) as tx,
    ):
        msgs = [([b"HDR%d" % i, os.urandom(100 + i)], IP_B) for i in range(5)]
        assert tx.send_batch(msgs) == 5
        got = _collect(rx, 5)
        assert len(got) == 5
        for (packet, source, offset), (parts, _) in zip(got, msgs, strict=True):
            assert source == IP_A
            assert offset == 20
            assert packet[offset:] == b"".join(parts)
            assert packet[9] == protocol
            assert packet[6] & 0x40  # DF: the kernel never fragments tunnel packets
            (total,) = struct.unpack_from("!H", packet, 2)
            assert total == len(packet)


def test_packet_over_the_mtu_is_emsgsize(veth_pair: tuple[NetNS, NetNS]) -> None:
    a, b = veth_pair
    with (
        RawIpSocket.open(IPPROTO_SCLP, netns=b.name) as rx,
        RawIpSocket.open(IPPROTO_SCLP, netns=a.name) as tx,
    ):
        with pytest.raises(OSError) as info:
            tx.send_to([bytes(1500 - 20 + 1)], IP_B)
        assert info.value.errno == errno.EMSGSIZE
        assert tx.send_to([bytes(10), bytes(1500 - 20 - 10)], IP_B) == 1480
        ((packet, _, _),) = _collect(rx, 1)
        assert len(packet) == 1500


def test_recv_batch_limits_and_drains(veth_pair: tuple[NetNS, NetNS]) -> None:
    a, b = veth_pair
    with (
        RawIpSocket.open(IPPROTO_SCLP, netns=b.name, batch=16) as rx,
        RawIpSocket.open(IPPROTO_SCLP, netns=a.name) as tx,
    ):
        assert rx.recv_batch() == RawBatch([], [], [], [])
        assert tx.send_batch([([b"%02d" % i], IP_B) for i in range(10)]) == 10
        time.sleep(0.1)
        select.select([rx], [], [], 5)
        first = rx.recv_batch(3)
        payloads = [bytes(v[o:]) for v, o in zip(first.views, first.offsets, strict=True)]
        rest = rx.recv_batch()
        payloads += [bytes(v[o:]) for v, o in zip(rest.views, rest.offsets, strict=True)]
        assert len(first.sizes) == 3
        assert len(rest.sizes) == 7
        assert payloads == [b"%02d" % i for i in range(10)]
        assert rx.recv_batch().sizes == []


def test_bind_addr_filters_by_destination(veth_pair: tuple[NetNS, NetNS]) -> None:
    a, b = veth_pair
    b.add_address("sclpvb", "10.71.0.3/24")
    with (
        RawIpSocket.open(IPPROTO_SCLP, netns=b.name, bind_addr=IP_B) as bound,
        RawIpSocket.open(IPPROTO_SCLP, netns=b.name) as unbound,
        RawIpSocket.open(IPPROTO_SCLP, netns=a.name) as tx,
    ):
        tx.send_to([b"to .3"], "10.71.0.3")
        tx.send_to([b"to .2"], IP_B)
        assert [p[o:] for p, _, o in _collect(unbound, 2)] == [b"to .3", b"to .2"]
        assert [p[o:] for p, _, o in _collect(bound, 2, timeout=0.5)] == [b"to .2"]


def test_truncated_packets_are_counted(veth_pair: tuple[NetNS, NetNS]) -> None:
    a, b = veth_pair
    with (
        RawIpSocket.open(IPPROTO_SCLP, netns=b.name, buffer_size=200) as rx,
        RawIpSocket.open(IPPROTO_SCLP, netns=a.name) as tx,
    ):
        tx.send_to([bytes(500)], IP_B)
        tx.send_to([bytes(50)], IP_B)
        got = _collect(rx, 2, timeout=1.0)
        assert [len(p) for p, _, _ in got] == [70]
        assert rx.truncated == 1


def test_invalid_protocol() -> None:
    for bad in (0, 255, -1):
        with pytest.raises(ValueError):
            RawIpSocket.open(bad)


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
    for packet, src, offset in _collect(rx, 1_000, timeout=timeout):
        (sport,) = struct.unpack_from("!H", packet, offset)
        if src == source and sport == STT_PORT and packet[offset + 13] & 0x04:
            count += 1
    return count


def test_raw_tcp_socket_sees_every_tcp_packet(veth_pair: tuple[NetNS, NetNS]) -> None:
    a, b = veth_pair
    with RawIpSocket.open(IPPROTO_TCP, netns=b.name) as rx:
        listener = b.socket(socket.AF_INET, socket.SOCK_STREAM)
        client = a.socket(socket.AF_INET, socket.SOCK_STREAM)
        with listener, client:
            listener.bind((IP_B, 0))
            listener.listen(1)
            client.settimeout(5)
            client.connect(listener.getsockname())
            port = listener.getsockname()[1]
            dports = {struct.unpack_from("!H", p, o + 2)[0] for p, _, o in _collect(rx, 2)}
        # Not STT at all: the endpoint has to filter by destination port.
        assert port in dports


def test_stt_rst_guard(veth_pair: tuple[NetNS, NetNS]) -> None:
    a, b = veth_pair
    segment = _stt_like_segment(IP_A, IP_B, b"stt payload")
    with (
        RawIpSocket.open(IPPROTO_TCP, netns=a.name) as a_tcp,
        RawIpSocket.open(IPPROTO_TCP, netns=b.name) as b_tcp,
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
            assert [p[o + 20 :] for p, _, o in got] == [b"stt payload"]  # endpoint sees it
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
