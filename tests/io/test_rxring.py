"""sclp.io.rxring (and the native SCLP tap set-up of sclp.io.packet and sclp.io.nft)
against the real kernel: SCLP segments (IP protocol 234) sent from one namespace over
a veth pair, read in the other through a PACKET_RX_RING or a recvmmsg tap."""

from __future__ import annotations

import json
import select
import socket
import time

import pytest

from sclp.io.netns import NetNS
from sclp.io.nft import (
    _nft,
    ingress_drops,
    install_ingress_drop,
    install_peer_filter,
    install_stt_ingress_drop,
    peer_filter_drops,
    remove_ingress_drop,
    remove_peer_filter,
    remove_stt_ingress_drop,
    stt_ingress_drops,
)
from sclp.io.packet import MAX_FILTER_PEERS, PacketTap, ipv4_filter, sclp_filter, stt_filter
from sclp.io.rawip import IPPROTO_SCLP, RawIpSocket, source_key
from sclp.io.rxring import NET_OFFSET, RxRing, frame_size_for
from sclp.wire.checksum import ones_sum

from .test_packet import DEV_A, DEV_B, IP_A, IP_B, STT_PORT, _ipv4, _tcp, veth_pair

__all__ = ["veth_pair"]  # the fixture, imported for the tests here

IP_A2 = "10.72.0.4"  # another address of A: not a peer
Reader = RxRing | PacketTap


def _read(reader: Reader, count: int, timeout: float = 3.0) -> list[tuple[bytes, object, int, int]]:
    """(packet bytes, source, offset, l4 sum) of up to ``count`` packets, waiting with
    ``select`` until ``timeout``; copies, since views last only until the next call."""
    out: list[tuple[bytes, object, int, int]] = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        batch = reader.recv_batch()
        for i in range(batch.count):
            packet = bytes(batch.views[i][: batch.sizes[i]])
            out.append((packet, batch.sources[i], batch.offsets[i], batch.l4_sums[i]))
        if batch.count:
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        select.select([reader], [], [], min(remaining, 0.1))
    return out


def _open(kind: str, ns: NetNS, program: list, **kw: int) -> Reader:
    if kind == "ring":
        return RxRing.open(DEV_B, program, netns=ns.name, **kw)
    return PacketTap.open(DEV_B, program, netns=ns.name, **kw)


def _tables(ns: NetNS) -> set[str]:
    listing = json.loads(_nft(["-j", "list", "tables"], None, ns.name))
    return {i["table"]["name"] for i in listing.get("nftables", []) if "table" in i}


# -- the ring ---------------------------------------------------------------------------------


def test_frame_size() -> None:
    assert NET_OFFSET == 80  # TPACKET_ALIGN(TPACKET2_HDRLEN) + 16, SOCK_DGRAM
    assert frame_size_for(1564) == 2048
    assert frame_size_for(2048 - 80) == 2048
    assert frame_size_for(2048 - 79) == 4096


@pytest.mark.netns
@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["ring", "tap"])
def test_segments_arrive_with_bytes_sources_offsets_and_sums(
    veth_pair: tuple[NetNS, NetNS], kind: str
) -> None:
    a, b = veth_pair
    segments = [bytes([i + 1]) * (1 + 97 * i) for i in range(12)]  # odd and even sizes
    with (
        _open(kind, b, sclp_filter(IP_B, [IP_A])) as reader,
        RawIpSocket.open(IPPROTO_SCLP, IP_A, netns=a.name) as tx,
    ):
        assert reader.recv_batch().count == 0
        for seg in segments:
            tx.send_to(seg, IP_B)
        got = _read(reader, len(segments))
        assert _read(reader, 1, timeout=0.2) == []
    assert [p[20:] for p, *_ in got] == segments
    assert {src for _, src, _, _ in got} == {source_key(IP_A)}
    assert [off for _, _, off, _ in got] == [20] * len(segments)
    assert [s for *_, s in got] == [ones_sum(seg) for seg in segments]


@pytest.mark.netns
@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["ring", "tap"])
def test_headers_ip_input_would_reject_get_offset_minus_one(
    veth_pair: tuple[NetNS, NetNS], kind: str
) -> None:
    a, b = veth_pair
    seg = b"sclp segment"
    good = _ipv4(IP_A, IP_B, IPPROTO_SCLP, seg)
    bad_sum = bytearray(good)
    bad_sum[10] ^= 0x01
    options = _ipv4(IP_A, IP_B, IPPROTO_SCLP, seg, ihl=6)
    padded = good + bytes(6)
    too_big = _ipv4(IP_A, IP_B, IPPROTO_SCLP, bytes(700))  # larger than a 512-byte frame
    packets = [good, bytes(bad_sum), options, padded, too_big, good]
    with (
        _open(kind, b, sclp_filter(IP_B), slot_size=400) as reader,
        a.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0) as raw,
    ):
        for pkt in packets:  # Ethernet broadcast: no need to know B's MAC
            raw.sendto(pkt, (DEV_A, 0x0800, 0, 0, b"\xff" * 6))
        got = _read(reader, 5)
        assert reader.truncated == 1
    assert [p for p, *_ in got] == [good, bytes(bad_sum), options, padded, good]
    assert [off for _, _, off, _ in got] == [20, -1, -1, -1, 20]
    assert [s for *_, s in got] == [ones_sum(seg), 0, 0, 0, ones_sum(seg)]


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_ring_wraps_around_over_many_batches(veth_pair: tuple[NetNS, NetNS]) -> None:
    a, b = veth_pair
    with (
        RxRing.open(
            DEV_B, sclp_filter(IP_B), netns=b.name, batch=7, slot_size=1500, ring_bytes=1
        ) as ring,
        RawIpSocket.open(IPPROTO_SCLP, IP_A, netns=a.name) as tx,
    ):
        frames = ring.frame_nr
        assert ring.frame_size == 2048 and 8 <= frames <= 64  # the smallest ring: one block
        chunk_len = frames // 2 + 1  # batches of 7 straddle the ring's end
        sent: list[bytes] = []
        got: list[bytes] = []
        for round_ in range(4 * frames // chunk_len + 1):  # about four times round
            chunk = [bytes([round_, i]) * (10 + i) for i in range(chunk_len)]
            for seg in chunk:
                tx.send_to(seg, IP_B)
            sent += chunk
            got += [p[20:] for p, *_ in _read(ring, len(chunk))]
        assert got == sent
        assert ring.read_drops() == 0 and ring.truncated == 0


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_ring_counts_drops_when_full(veth_pair: tuple[NetNS, NetNS]) -> None:
    a, b = veth_pair
    with (
        RxRing.open(DEV_B, sclp_filter(IP_B), netns=b.name, slot_size=1500, ring_bytes=1) as ring,
        RawIpSocket.open(IPPROTO_SCLP, IP_A, netns=a.name) as tx,
    ):
        for i in range(ring.frame_nr + 10):
            tx.send_to(i.to_bytes(4, "big"), IP_B)
        got = _read(ring, ring.frame_nr)
        assert len(got) == ring.frame_nr
        assert [int.from_bytes(p[20:], "big") for p, *_ in got] == list(range(ring.frame_nr))
        assert ring.read_drops() == 10
        assert ring.recv_batch().count == 0  # gives the last batch's frames back
        tx.send_to(b"after", IP_B)  # so the ring takes packets again
        assert [p[20:] for p, *_ in _read(ring, 1)] == [b"after"]


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_close_with_views_still_held(veth_pair: tuple[NetNS, NetNS]) -> None:
    a, b = veth_pair
    ring = RxRing.open(DEV_B, sclp_filter(IP_B), netns=b.name)
    with RawIpSocket.open(IPPROTO_SCLP, IP_A, netns=a.name) as tx:
        tx.send_to(b"held", IP_B)
        deadline = time.monotonic() + 3
        while (batch := ring.recv_batch()).count == 0 and time.monotonic() < deadline:
            select.select([ring], [], [], 0.1)
    ring.close()
    assert bytes(batch.views[0][20:24]) == b"held"  # the mapping outlives the socket
    ring.close()  # idempotent
    assert ring.sock.fileno() == -1


# -- the filter -------------------------------------------------------------------------------


@pytest.mark.netns
@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["ring", "tap"])
def test_filter_rejects_non_peers_and_other_protocols(
    veth_pair: tuple[NetNS, NetNS], kind: str
) -> None:
    a, b = veth_pair
    a.add_address(DEV_A, f"{IP_A2}/24")
    with (
        _open(kind, b, sclp_filter(IP_B, [IP_A])) as reader,
        a.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as tx,
    ):
        sends = [
            _ipv4(IP_A, IP_B, IPPROTO_SCLP, b"peer 1"),
            _ipv4(IP_A2, IP_B, IPPROTO_SCLP, b"not a peer"),
            _ipv4(IP_A, IP_B, 47, b"gre"),
            _ipv4(IP_A, IP_B, 6, _tcp(IP_A, IP_B, STT_PORT, b"stt")),
            _ipv4(IP_A, IP_B, IPPROTO_SCLP, b"first fragment", frag=0x2000),
            _ipv4(IP_A, IP_B, IPPROTO_SCLP, b"peer 2"),
        ]
        for pkt in sends:
            tx.sendto(pkt, (IP_B, 0))
        got = _read(reader, 3, timeout=1.0)
    assert [p[20:] for p, *_ in got] == [b"peer 1", b"peer 2"]


def test_filter_builder_shapes() -> None:
    plain = sclp_filter(IP_B)
    assert len(plain) == len(stt_filter(IP_B, STT_PORT)) - 3  # no port: 3 fewer
    assert ipv4_filter(IP_B, 6, STT_PORT) == stt_filter(IP_B, STT_PORT)
    assert len(sclp_filter(IP_B, [IP_A, "2001:db8::1"])) == len(plain) + 2
    many = [f"10.9.{i // 250}.{i % 250 + 1}" for i in range(MAX_FILTER_PEERS + 1)]
    assert sclp_filter(IP_B, many) == plain
    with pytest.raises(ValueError):
        ipv4_filter(IP_B, 256)
    with pytest.raises(ValueError):
        ipv4_filter(IP_B, 6, 0)


# -- the ingress drop -------------------------------------------------------------------------


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_ingress_drop_hides_sclp_from_ip_but_not_from_the_ring(
    veth_pair: tuple[NetNS, NetNS],
) -> None:
    a, b = veth_pair
    with (
        RxRing.open(DEV_B, sclp_filter(IP_B, [IP_A]), netns=b.name) as ring,
        RawIpSocket.open(IPPROTO_SCLP, IP_B, netns=b.name) as kernel_rx,
        RawIpSocket.open(IPPROTO_SCLP, IP_A, netns=a.name) as tx,
    ):
        tx.send_to(b"before", IP_B)  # no rule: both get it
        assert [p[20:] for p, *_ in _read(ring, 1)] == [b"before"]
        assert select.select([kernel_rx], [], [], 2.0)[0]
        assert kernel_rx.recv_batch().count == 1
        try:
            table = install_ingress_drop([DEV_B], IP_B, IPPROTO_SCLP, name="ep1", netns=b.name)
            assert table == "sclp_ep1"
            install_stt_ingress_drop([DEV_B], IP_B, STT_PORT, "ep1", netns=b.name)  # shared
            install_ingress_drop([DEV_B], IP_B, IPPROTO_SCLP, name="ep1", netns=b.name)  # again
            for i in range(5):
                tx.send_to(b"seg%d" % i, IP_B)
            assert [p[20:] for p, *_ in _read(ring, 5)] == [b"seg%d" % i for i in range(5)]
            assert not select.select([kernel_rx], [], [], 0.3)[0]  # IP never saw them
            assert ingress_drops(IPPROTO_SCLP, name="ep1", netns=b.name) == 5
            assert stt_ingress_drops("ep1", netns=b.name) == 0
            remove_ingress_drop(IPPROTO_SCLP, name="ep1", netns=b.name)
            assert "sclp_ep1" in _tables(b)  # STT's chain is still there
            assert ingress_drops(IPPROTO_SCLP, name="ep1", netns=b.name) == 0
            tx.send_to(b"after", IP_B)
            assert select.select([kernel_rx], [], [], 2.0)[0]  # back to IP
        finally:
            remove_ingress_drop(IPPROTO_SCLP, name="ep1", netns=b.name)
            remove_stt_ingress_drop("ep1", netns=b.name)
        assert "sclp_ep1" not in _tables(b)
        remove_stt_ingress_drop("ep1", netns=b.name)  # idempotent


def test_ingress_drop_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        install_ingress_drop([], IP_B, IPPROTO_SCLP)
    with pytest.raises(ValueError):
        install_ingress_drop(["eth0"], IP_B, 300)
    with pytest.raises(ValueError):
        install_ingress_drop(["eth0"], "2001:db8::1", IPPROTO_SCLP)


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_peer_filter_counts_a_strangers_sclp_segment_at_ingress(
    veth_pair: tuple[NetNS, NetNS],
) -> None:
    """The kernel's peer filter, with SCLP among its ingress protocols, runs ahead of
    the SCLP ingress drop: a stranger's segment is counted as not from a peer, the
    peer's reaches the drop; the ring (filtered for the peer) got only the peer's."""
    a, b = veth_pair
    a.add_address(DEV_A, f"{IP_A2}/24")
    with (
        RxRing.open(DEV_B, sclp_filter(IP_B, [IP_A]), netns=b.name) as ring,
        a.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as tx,
    ):
        try:
            install_ingress_drop([DEV_B], IP_B, IPPROTO_SCLP, name="ep4", netns=b.name)
            install_peer_filter(
                "ep4",
                IP_B,
                [IP_A],
                protocols=[IPPROTO_SCLP],
                ingress_devices=[DEV_B],
                ingress_protocols=[IPPROTO_SCLP],
                netns=b.name,
            )
            for src, tag in ((IP_A2, b"stranger"), (IP_A, b"peer"), (IP_A2, b"again")):
                tx.sendto(_ipv4(src, IP_B, IPPROTO_SCLP, tag), (IP_B, 0))
            assert [p[20:] for p, *_ in _read(ring, 3, timeout=1.0)] == [b"peer"]
            assert peer_filter_drops("ep4", netns=b.name) == 2
            assert ingress_drops(IPPROTO_SCLP, name="ep4", netns=b.name) == 1
        finally:
            remove_peer_filter("ep4", netns=b.name)
            remove_ingress_drop(IPPROTO_SCLP, name="ep4", netns=b.name)
        assert not {"sclp_ep4", "sclp_ep4_peers"} & _tables(b)
