"""Strided sendmmsg and batched recvmmsg with one NumPy checksum pass (native SCLP)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

import pytest

from sclp.engine.segmenter import Segmenter
from sclp.io.batch import BatchReceiver, StridedSender, sockaddr_in, v4_key
from sclp.io.netns import NetNS, create_veth
from sclp.wire.checksum import checksum_reference, ones_sum

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]

A_ADDR, B_ADDR = "10.72.0.1", "10.72.0.2"


@pytest.fixture
def veth_pair(netns_factory: Callable[[], NetNS]) -> tuple[NetNS, NetNS]:
    a, b = netns_factory(), netns_factory()
    create_veth("sclpba", a, "sclpbb", b, mtu=1500)
    a.add_address("sclpba", f"{A_ADDR}/24")
    b.add_address("sclpbb", f"{B_ADDR}/24")
    return a, b


def _raw(ns: NetNS, bind: str) -> socket.socket:
    sock = ns.socket(socket.AF_INET, socket.SOCK_RAW, 234)
    sock.bind((bind, 0))
    sock.setblocking(False)
    return sock


def _receive(rx: BatchReceiver, sock: socket.socket, want: int) -> list[tuple[bytes, int, int]]:
    got: list[tuple[bytes, int, int]] = []
    deadline = time.monotonic() + 5
    while len(got) < want and time.monotonic() < deadline:
        n = rx.receive_batch(sock.fileno())
        if not n:
            time.sleep(0.001)
            continue
        sizes, sources, sums = rx.sizes(n), rx.sources_v4(n), rx.ones_sums(n)
        got.extend((bytes(rx.views[i][: sizes[i]]), sources[i], sums[i]) for i in range(n))
    return got


def test_payload_segments_cross_intact_with_valid_sums(veth_pair: tuple[NetNS, NetNS]) -> None:
    a, b = veth_pair
    tx, rxsock = _raw(a, A_ADDR), _raw(b, B_ADDR)
    payload = os.urandom(65000)
    batch = Segmenter(ident_start=5).segment_payload(payload, 50000, 4789, 1468)
    try:
        sent = StridedSender(max_msgs=16).send(
            tx.fileno(), batch.buffer, batch.stride, sockaddr_in(B_ADDR)
        )
        assert sent == batch.count == 45  # several sendmmsg calls of at most 16
        got = _receive(BatchReceiver(64, 1600), rxsock, batch.count)
    finally:
        tx.close()
        rxsock.close()
    assert len(got) == batch.count
    segments = [packet[(packet[0] & 0x0F) * 4 :] for packet, _, _ in got]
    assert segments == [bytes(s) for s in batch.segments()]
    assert all(src == v4_key(A_ADDR) for _, src, _ in got)
    assert all(total == 0xFFFF for _, _, total in got)  # IP header + valid SCLP segment


def test_slot_sum_reveals_a_bad_checksum(veth_pair: tuple[NetNS, NetNS]) -> None:
    a, b = veth_pair
    tx, rxsock = _raw(a, A_ADDR), _raw(b, B_ADDR)
    good = bytearray(Segmenter(ident_start=6).segment_payload(b"y" * 301, 50000, 4789, 1468).buffer)
    bad = bytearray(good)
    bad[40] ^= 0x10
    rx = BatchReceiver(8, 1600)
    try:
        for packet in (good, bad, good[:13]):  # the last one is odd-sized
            tx.sendto(packet, (B_ADDR, 0))
        got = _receive(rx, rxsock, 3)
    finally:
        tx.close()
        rxsock.close()
    sums = [total for _, _, total in got]
    assert sums[0] == 0xFFFF
    assert sums[1] != 0xFFFF
    assert sums[1] == ones_sum(bad)  # network byte order, like ones_sum
    odd = got[2][0][20:]
    # the zeroed slab pads the odd tail exactly as RFC 1071 does
    expected = (~checksum_reference(odd)) & 0xFFFF
    assert sums[2] == 0xFFFF if expected == 0xFFFF else sums[2] != 0xFFFF
