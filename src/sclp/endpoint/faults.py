"""Fault injection on the underlay: a wrapper around the sender, never a branch in
the data path.

This kernel has no netem, so loss, reordering, duplication and bit errors for the
robustness tests and the security figures are made here, in user space, on the
packets the endpoint sends.  :class:`FaultInjector` decides per packet;
:class:`~sclp.endpoint.runner.FaultySender` puts it between the data path's sends
and the sockets when ``[underlay.faults]`` is configured.  Off by default.
"""

from __future__ import annotations

import ipaddress
import random
import socket
from collections import Counter
from collections.abc import Callable
from typing import Any, Final

from sclp.wire.checksum import Buffer

FAULT_COUNTERS: Final = (
    "fault_packets",
    "fault_dropped",
    "fault_corrupted",
    "fault_duplicated",
    "fault_reordered",
    "fault_send_errors",
)


class FaultInjector:
    """Drops, delays (reorders), duplicates and corrupts outgoing underlay packets
    with a seeded RNG (this kernel has no netem).  Off unless configured.

    Every packet handed to :meth:`send` draws, in this order: drop; corrupt (one bit
    flipped); duplicate (sent twice); reorder (one copy held back until
    ``reorder_depth`` more packets have been sent, or until the underlay has been idle
    for a whole housekeeping tick, see :meth:`flush`).  The same seed and the same
    packets give the same faults.

    Corruption models a bit error on the wire, after the sender's checksums.  A raw
    socket's packet already carries its own checksum (SCLP's, STT's TCP one) and goes
    out damaged as it is.  A UDP socket would checksum the damaged bytes, making the
    error invisible, so a damaged datagram leaves through an ``IPPROTO_RAW`` socket
    with the UDP checksum of the undamaged one, from the same address and port: the
    receiving kernel drops it (UDP ``InCsumErrors``) as it would a real bit error.
    """

    def __init__(self, faults: Any) -> None:
        self.cfg = faults
        self.rng = random.Random(faults.seed)
        self.held: list[tuple[int, socket.socket, bytes, tuple[Any, ...]]] = []
        self.stats: Counter[str] = Counter(dict.fromkeys(FAULT_COUNTERS, 0))
        self.sent = 0
        self._sent_at_flush = 0
        self._raw: dict[int, socket.socket] = {}  # family -> IPPROTO_RAW sender
        self.raw_socket_factory: Callable[[int], socket.socket] = lambda family: socket.socket(
            family, socket.SOCK_RAW, socket.IPPROTO_RAW
        )

    def __str__(self) -> str:
        c = self.cfg
        return (
            f"drop={c.drop} reorder={c.reorder} (depth {c.reorder_depth}) "
            f"duplicate={c.duplicate} corrupt={c.corrupt} seed={c.seed}"
        )

    def counters(self) -> dict[str, int]:
        return dict(self.stats)

    def send(self, sock: socket.socket, packet: Buffer, addr: tuple[Any, ...], now: float) -> None:
        """Send ``packet`` to ``addr`` on ``sock``, or not, or twice, or later, or
        damaged.  The packet is copied; the caller may reuse its buffer."""
        c, rng, stats = self.cfg, self.rng, self.stats
        self.sent += 1
        stats["fault_packets"] += 1
        if rng.random() < c.drop:
            stats["fault_dropped"] += 1
            return
        data = bytes(packet)
        if rng.random() < c.corrupt and data:
            index, bit = rng.randrange(len(data)), rng.randrange(8)
            stats["fault_corrupted"] += 1
            if sock.type == socket.SOCK_DGRAM:
                sock, data, addr = self._damaged_datagram(sock, data, addr, index, bit)
            else:
                data = data[:index] + bytes([data[index] ^ (1 << bit)]) + data[index + 1 :]
        copies = 1
        if rng.random() < c.duplicate:
            stats["fault_duplicated"] += 1
            copies = 2
        if rng.random() < c.reorder:
            stats["fault_reordered"] += 1
            self.held.append((self.sent + max(1, c.reorder_depth), sock, data, addr))
            copies -= 1
        for _ in range(copies):
            self._send(sock, data, addr)
        if self.held and self.held[0][0] <= self.sent:
            due = [h for h in self.held if h[0] <= self.sent]
            self.held = [h for h in self.held if h[0] > self.sent]
            for _, s, d, a in due:
                self._send(s, d, a)

    def flush(self, now: float) -> None:
        """Called from housekeeping (every 0.1 s): once no packet at all was sent
        since the previous call, release the held ones, so that a packet held at the
        end of a burst is late rather than lost."""
        if self.sent != self._sent_at_flush:
            self._sent_at_flush = self.sent
            return
        held, self.held = self.held, []
        for _, s, d, a in held:
            self._send(s, d, a)

    def close(self) -> None:
        for sock in self._raw.values():
            sock.close()
        self._raw.clear()

    def _send(self, sock: socket.socket, data: bytes, addr: tuple[Any, ...]) -> None:
        try:
            sock.sendto(data, addr)
        except OSError:
            self.stats["fault_send_errors"] += 1

    def _damaged_datagram(
        self, sock: socket.socket, data: bytes, addr: tuple[Any, ...], index: int, bit: int
    ) -> tuple[socket.socket, bytes, tuple[Any, ...]]:
        """The whole IP packet ``sock`` would send for ``data`` (checksummed), with bit
        ``bit`` of data byte ``index`` flipped afterwards, and the raw socket for it."""
        from sclp.wire import ipv4, ipv6, udp  # fault injection only

        local = sock.getsockname()
        src = ipaddress.ip_address(local[0])
        dst = ipaddress.ip_address(addr[0])
        length = udp.UDP_HLEN + len(data)
        if src.version == 4:
            pseudo = ipv4.pseudo_header_sum(src.packed, dst.packed, socket.IPPROTO_UDP, length)
            ip_header = ipv4.encode(
                ipv4.IPv4Header(
                    src.packed,
                    dst.packed,
                    socket.IPPROTO_UDP,
                    ipv4.IPV4_HLEN + length,
                    flags=ipv4.IPv4Flags(0),
                )
            )
            family = socket.AF_INET
        else:
            pseudo = ipv6.pseudo_header_sum(src.packed, dst.packed, socket.IPPROTO_UDP, length)
            ip_header = ipv6.encode(
                ipv6.IPv6Header(src.packed, dst.packed, socket.IPPROTO_UDP, length)
            )
            family = socket.AF_INET6
        sport, dport = int(local[1]), int(addr[1])
        checksum = udp.udp_checksum(pseudo, udp.encode(udp.UdpHeader(sport, dport, length)) + data)
        datagram = bytearray(udp.encode(udp.UdpHeader(sport, dport, length, checksum)) + data)
        datagram[udp.UDP_HLEN + index] ^= 1 << bit
        raw = self._raw.get(family)
        if raw is None:
            raw = self._raw[family] = self.raw_socket_factory(family)
            raw.setblocking(False)
        return raw, ip_header + bytes(datagram), (addr[0], 0)
