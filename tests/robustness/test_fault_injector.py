"""The underlay fault injector (``[underlay.faults]``) against fake sockets: the
same seed gives the same faults, the counters match what reached the sockets, a
reordered packet is released ``reorder_depth`` packets later (or after an idle
tick), and corruption flips exactly one bit *after* the checksum: a raw packet
keeps its original checksum bytes, and a UDP datagram leaves through a raw socket
with the UDP checksum of the undamaged datagram, so the receiving kernel drops it.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest

from sclp.endpoint.config import Faults, parse_config
from sclp.endpoint.faults import FAULT_COUNTERS, FaultInjector
from sclp.endpoint.nve import Endpoint
from sclp.wire import ipv4, ipv6, udp
from sclp.wire.checksum import internet_checksum

LOCAL4, PEER4 = "10.77.0.1", "10.77.0.2"
LOCAL6, PEER6 = "fd00:77::1", "fd00:77::2"


class FakeSocket:
    """Records ``sendto`` calls; optionally fails the ``fail``-th and later ones."""

    def __init__(
        self, kind: int = socket.SOCK_RAW, name: tuple[str, int] = (LOCAL4, 0), fail: int = -1
    ) -> None:
        self.type = kind
        self.name = name
        self.sent: list[tuple[bytes, tuple[Any, ...]]] = []
        self.fail = fail
        self.closed = False
        self.blocking = True

    def sendto(self, data: bytes, addr: tuple[Any, ...]) -> int:
        if 0 <= self.fail <= len(self.sent):
            raise BlockingIOError("send buffer full")
        self.sent.append((bytes(data), addr))
        return len(data)

    def getsockname(self) -> tuple[str, int]:
        return self.name

    def setblocking(self, flag: bool) -> None:
        self.blocking = flag

    def close(self) -> None:
        self.closed = True


class ScriptedRandom:
    """Stands in for ``random.Random``: ``random()`` returns the scripted values in
    order (then 0.99: no fault); ``randrange(n)`` returns 0."""

    def __init__(self, values: list[float]) -> None:
        self.values: Iterator[float] = iter(values)

    def random(self) -> float:
        return next(self.values, 0.99)

    def randrange(self, n: int) -> int:
        return 0


def packets(n: int) -> list[bytes]:
    return [struct.pack("!I", i) + bytes(range(i % 7, i % 7 + 40)) for i in range(n)]


def run(faults: Faults, n: int, sock: FakeSocket | None = None) -> tuple[FaultInjector, FakeSocket]:
    sock = sock or FakeSocket()
    inj = FaultInjector(faults)
    for p in packets(n):
        inj.send(sock, p, (PEER4, 0), 0.0)  # type: ignore[arg-type]
    inj.flush(1.0)
    inj.flush(1.1)  # idle for a whole tick: the held packets go out
    return inj, sock


MIXED = Faults(drop=0.05, reorder=0.1, reorder_depth=3, duplicate=0.05, corrupt=0.02, seed=7)


def test_same_seed_same_faults_other_seed_other_faults() -> None:
    _, a = run(MIXED, 2000)
    _, b = run(MIXED, 2000)
    _, c = run(Faults(drop=0.05, reorder=0.1, duplicate=0.05, corrupt=0.02, seed=8), 2000)
    assert a.sent == b.sent
    assert a.sent != c.sent


def test_counters_match_what_reached_the_socket() -> None:
    n = 20000
    inj, sock = run(MIXED, n)
    stats = inj.counters()
    assert set(stats) == set(FAULT_COUNTERS)
    assert stats["fault_packets"] == n
    assert not inj.held
    # Every packet that was not dropped went out once, the duplicated ones twice.
    assert len(sock.sent) == n - stats["fault_dropped"] + stats["fault_duplicated"]
    originals = {p: i for i, p in enumerate(packets(n))}
    damaged = [data for data, _ in sock.sent if data not in originals]
    # Corrupted packets are sent (twice when also duplicated), never dropped afterwards.
    assert stats["fault_corrupted"] <= len(damaged) <= 2 * stats["fault_corrupted"]
    for key, rate in (
        ("fault_dropped", 0.05),
        ("fault_reordered", 0.1 * 0.95),
        ("fault_duplicated", 0.05 * 0.95),
        ("fault_corrupted", 0.02 * 0.95),
    ):
        expected = rate * n
        assert abs(stats[key] - expected) < 5 * expected**0.5 + 5, (key, stats[key], expected)
    # Order changed, and only by bounded delays.
    order = [originals[d] for d, _ in sock.sent if d in originals]
    assert order != sorted(order)
    assert stats["fault_send_errors"] == 0


def test_reordered_packet_is_released_after_depth_packets() -> None:
    # Packet 0: not dropped (0.99), not corrupted, not duplicated, reordered (0.0).
    inj = FaultInjector(Faults(reorder=0.5, reorder_depth=3))
    inj.rng = ScriptedRandom([0.99, 0.99, 0.99, 0.0])  # type: ignore[assignment]
    sock = FakeSocket()
    for p in packets(6):
        inj.send(sock, p, (PEER4, 0), 0.0)  # type: ignore[arg-type]
    order = [struct.unpack_from("!I", d)[0] for d, _ in sock.sent]
    assert order == [1, 2, 3, 0, 4, 5]
    assert inj.counters()["fault_reordered"] == 1 and not inj.held


def test_held_packet_goes_out_after_an_idle_tick_not_before() -> None:
    inj = FaultInjector(Faults(reorder=0.5, reorder_depth=10))
    inj.rng = ScriptedRandom([0.99, 0.99, 0.99, 0.0])  # type: ignore[assignment]
    sock = FakeSocket()
    for p in packets(2):
        inj.send(sock, p, (PEER4, 0), 0.0)  # type: ignore[arg-type]
    assert [struct.unpack_from("!I", d)[0] for d, _ in sock.sent] == [1]
    inj.flush(0.1)  # packets were sent since the last tick: keep holding
    assert len(sock.sent) == 1 and len(inj.held) == 1
    inj.flush(0.2)  # a whole tick without traffic: release
    assert [struct.unpack_from("!I", d)[0] for d, _ in sock.sent] == [1, 0]
    assert not inj.held


def test_duplicate_and_reorder_together_send_one_copy_now_one_later() -> None:
    inj = FaultInjector(Faults(duplicate=0.5, reorder=0.5, reorder_depth=1))
    # drop no, corrupt no, duplicate yes, reorder yes
    inj.rng = ScriptedRandom([0.99, 0.99, 0.0, 0.0])  # type: ignore[assignment]
    sock = FakeSocket()
    for p in packets(2):
        inj.send(sock, p, (PEER4, 0), 0.0)  # type: ignore[arg-type]
    assert [struct.unpack_from("!I", d)[0] for d, _ in sock.sent] == [0, 1, 0]


def test_drop_all_and_duplicate_all() -> None:
    inj, sock = run(Faults(drop=1.0), 50)
    assert sock.sent == [] and inj.counters()["fault_dropped"] == 50
    inj, sock = run(Faults(duplicate=1.0), 50)
    assert [d for d, _ in sock.sent] == [p for p in packets(50) for _ in range(2)]
    assert inj.counters()["fault_duplicated"] == 50


def _bit_differences(a: bytes, b: bytes) -> int:
    assert len(a) == len(b)
    return sum(bin(x ^ y).count("1") for x, y in zip(a, b, strict=True))


def test_corrupting_a_raw_packet_flips_exactly_one_bit() -> None:
    inj, sock = run(Faults(corrupt=1.0, seed=3), 200)
    assert inj.counters()["fault_corrupted"] == 200
    assert len(sock.sent) == 200
    for (data, addr), original in zip(sock.sent, packets(200), strict=True):
        assert addr == (PEER4, 0)
        assert _bit_differences(data, original) == 1


@pytest.mark.parametrize(("local", "peer"), [(LOCAL4, PEER4), (LOCAL6, PEER6)])
def test_corrupting_a_udp_datagram_keeps_the_undamaged_checksum(local: str, peer: str) -> None:
    udp_sock = FakeSocket(socket.SOCK_DGRAM, (local, 7234))
    raws: list[FakeSocket] = []

    def factory(family: int) -> FakeSocket:
        assert family == (socket.AF_INET if ":" not in local else socket.AF_INET6)
        raws.append(FakeSocket())
        return raws[-1]

    inj = FaultInjector(Faults(corrupt=1.0, seed=5))
    inj.raw_socket_factory = factory  # type: ignore[assignment]
    payloads = packets(50)
    for p in payloads:
        inj.send(udp_sock, p, (peer, 4789), 0.0)  # type: ignore[arg-type]
    assert udp_sock.sent == []  # every damaged datagram left through the raw socket
    assert len(raws) == 1 and not raws[0].blocking
    src, dst = ipaddress.ip_address(local).packed, ipaddress.ip_address(peer).packed
    for (packet, addr), original in zip(raws[0].sent, payloads, strict=True):
        assert addr == (peer, 0)
        if len(src) == 4:
            ip = ipv4.decode(packet)
            assert (ip.src, ip.dst, ip.protocol) == (src, dst, socket.IPPROTO_UDP)
            assert ip.total_length == len(packet)
            datagram = packet[ip.header_len :]
            pseudo = ipv4.pseudo_header_sum(src, dst, socket.IPPROTO_UDP, len(datagram))
        else:
            ip6 = ipv6.decode(packet)
            assert (ip6.src, ip6.dst, ip6.next_header) == (src, dst, socket.IPPROTO_UDP)
            datagram = packet[ipv6.IPV6_HLEN :]
            assert ip6.payload_length == len(datagram)
            pseudo = ipv6.pseudo_header_sum(src, dst, socket.IPPROTO_UDP, len(datagram))
        hdr = udp.decode(datagram)
        assert (hdr.sport, hdr.dport, hdr.length) == (7234, 4789, len(datagram))
        body = datagram[udp.UDP_HLEN :]
        assert _bit_differences(body, original) == 1
        assert internet_checksum(datagram, pseudo) != 0  # the receiver's check fails
        repaired = datagram[: udp.UDP_HLEN] + original
        assert internet_checksum(repaired, pseudo) == 0  # it was right for the original
    inj.close()
    assert raws[0].closed


def test_send_errors_are_counted_not_raised() -> None:
    inj, sock = run(Faults(duplicate=1.0), 10, FakeSocket(fail=5))
    assert len(sock.sent) == 5
    assert inj.counters()["fault_send_errors"] == 15


def test_endpoint_builds_an_injector_only_when_a_rate_is_set() -> None:
    base = """name = "f"
[underlay]
local = "10.77.0.1"
{faults}
[[network]]
vni = 42
tap = "tap0"
peers = ["10.77.0.2"]
"""
    off = Endpoint(parse_config(base.format(faults="")))
    assert off.stats()["faults"] is None
    on = Endpoint(parse_config(base.format(faults="[underlay.faults]\ndrop = 0.01\nseed = 4")))
    stats = on.stats()["faults"]
    assert stats == dict.fromkeys(FAULT_COUNTERS, 0)
