"""A packet socket (``AF_PACKET``, ``packet(7)``) that receives STT segments before
the kernel's IP and TCP layers see them.

Why: STT (draft-davie-stt §2) is pseudo-TCP to port 7471 that no TCP socket serves.
Read through a raw TCP socket, every segment also goes up the kernel's TCP stack,
which looks for a socket, finds none and builds a RST (that an nftables output rule
then drops).  With veth the receiver's softirq runs on the sender's CPU, so that work
halves STT's throughput.  Instead:

* an nftables ``netdev``/``ingress`` rule on the underlay device drops the segments
  before IP processing (:func:`sclp.io.nft.install_stt_ingress_drop`);
* this socket still gets them: ``ETH_P_ALL`` taps run in ``__netif_receive_skb_core``
  *before* the ingress hook, whereas ``ETH_P_IP`` handlers (IP itself, and a packet
  socket bound to ``ETH_P_IP``) run after it (checked on Linux 6.18: the ``ETH_P_ALL``
  socket got all 10 test segments dropped at ingress, an ``ETH_P_IP`` one none).

``SOCK_DGRAM`` strips the link-layer header, so a message starts with the IPv4
header, as on an IPv4 raw socket.  A classic BPF filter (``SO_ATTACH_FILTER``) lets
through only IPv4 TCP non-fragments to the local address and STT port, so the
socket's queue never holds other traffic; ``PACKET_IGNORE_OUTGOING`` (Linux 4.20)
keeps our own transmissions out (and saves the kernel cloning them for us).  The
filter is attached before ``bind``: a packet socket created with protocol 0 has no
hook until then, so no unfiltered packet can queue.

What the IP layer would have checked is now ours to check (a tap sees the packet as
it came off the wire): version, header length, header checksum, total length (the
frame may carry link-layer padding past it).  :class:`PacketBatchReceiver` does that
for a whole ``recvmmsg`` batch in NumPy; :func:`ipv4_payload_bounds` is the
per-packet reference for the packets the fast check does not take.  No IP
reassembly: the filter passes only non-fragments (STT senders set DF).
"""

from __future__ import annotations

import ctypes
import socket
import struct
from typing import Final, NamedTuple

import numpy as np

from sclp.io.batch import BatchReceiver
from sclp.wire.checksum import Buffer, ones_sum
from sclp.wire.errors import DropReason, MalformedPacket

__all__ = [
    "ETH_P_ALL",
    "PACKET_IGNORE_OUTGOING",
    "BpfInsn",
    "PacketBatchReceiver",
    "attach_filter",
    "drop_all_filter",
    "ipv4_payload_bounds",
    "open_ipv4_tap",
    "stt_filter",
]

ETH_P_ALL: Final = 0x0003  # linux/if_ether.h
SOL_PACKET: Final = 263  # linux/socket.h
PACKET_IGNORE_OUTGOING: Final = 23  # linux/if_packet.h
SO_ATTACH_FILTER: Final = 26  # asm-generic/socket.h
IPV4_HLEN: Final = 20

# Classic BPF opcodes (linux/filter.h, linux/bpf_common.h).
_LDB_ABS: Final = 0x30  # A = byte at [k]
_LDH_ABS: Final = 0x28  # A = half-word at [k]
_LDW_ABS: Final = 0x20  # A = word at [k]
_LDXB_MSH: Final = 0xB1  # X = 4 * ([k] & 0xF)
_LDH_IND: Final = 0x48  # A = half-word at [X + k]
_AND_K: Final = 0x54  # A &= k
_JEQ_K: Final = 0x15  # if A == k goto +jt else +jf
_JSET_K: Final = 0x45  # if A & k goto +jt else +jf
_RET_K: Final = 0x06
_ACCEPT_LEN: Final = 0x40000  # bytes to keep of an accepted packet: all of it
_INSN: Final = struct.Struct("=HBBI")  # struct sock_filter
_FPROG: Final = struct.Struct("@HP")  # struct sock_fprog (native alignment: 16 bytes)


class BpfInsn(NamedTuple):
    """One ``struct sock_filter``: jumps are relative to the next instruction."""

    code: int
    jt: int
    jf: int
    k: int


def stt_filter(local: str, port: int) -> list[BpfInsn]:
    """Accept IPv4 packets (from the network header on, as a ``SOCK_DGRAM`` packet
    socket sees them) that are TCP, not a fragment, addressed to ``local`` and to TCP
    destination port ``port``; drop everything else."""
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    dst = int.from_bytes(socket.inet_aton(local), "big")
    drop = 13  # index of the final "ret 0"

    def to_drop(at: int) -> int:
        return drop - at - 1

    return [
        BpfInsn(_LDB_ABS, 0, 0, 0),  # 0: version/IHL byte
        BpfInsn(_AND_K, 0, 0, 0xF0),  # 1
        BpfInsn(_JEQ_K, 0, to_drop(2), 0x40),  # 2: IPv4
        BpfInsn(_LDB_ABS, 0, 0, 9),  # 3: protocol
        BpfInsn(_JEQ_K, 0, to_drop(4), socket.IPPROTO_TCP),  # 4
        BpfInsn(_LDH_ABS, 0, 0, 6),  # 5: flags + fragment offset
        BpfInsn(_JSET_K, to_drop(6), 0, 0x3FFF),  # 6: MF or an offset: a fragment
        BpfInsn(_LDW_ABS, 0, 0, 16),  # 7: destination address
        BpfInsn(_JEQ_K, 0, to_drop(8), dst),  # 8
        BpfInsn(_LDXB_MSH, 0, 0, 0),  # 9: X = header length
        BpfInsn(_LDH_IND, 0, 0, 2),  # 10: TCP destination port
        BpfInsn(_JEQ_K, 0, to_drop(11), port),  # 11
        BpfInsn(_RET_K, 0, 0, _ACCEPT_LEN),  # 12
        BpfInsn(_RET_K, 0, 0, 0),  # 13: drop
    ]


def drop_all_filter() -> list[BpfInsn]:
    """A filter that accepts nothing: for a send-only raw socket, whose receive queue
    would otherwise fill with copies of every packet of its protocol."""
    return [BpfInsn(_RET_K, 0, 0, 0)]


def attach_filter(sock: socket.socket, program: list[BpfInsn]) -> None:
    """``SO_ATTACH_FILTER``; the kernel copies the program, so the buffer may go."""
    if not 0 < len(program) <= 4096:
        raise ValueError("a classic BPF program has 1 to 4096 instructions")
    code = ctypes.create_string_buffer(b"".join(_INSN.pack(*insn) for insn in program))
    fprog = _FPROG.pack(len(program), ctypes.addressof(code))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def open_ipv4_tap(ifname: str, program: list[BpfInsn]) -> socket.socket:
    """A non-blocking ``AF_PACKET``/``SOCK_DGRAM`` socket on ``ifname`` that gets the
    incoming packets ``program`` accepts, IP header first, ahead of the ingress hook.
    Call it in the namespace of ``ifname``.  Raises OSError (ENODEV for no such
    device, EPERM without CAP_NET_RAW)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)  # no hook until bind
    try:
        attach_filter(sock, program)
        sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        sock.bind((ifname, ETH_P_ALL))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def ipv4_payload_bounds(packet: Buffer, size: int) -> tuple[int, int]:
    """``(start, end)`` of the payload of the IPv4 packet in ``packet[:size]``, after
    the checks IP input would make: version 4, header length, header checksum, total
    length within ``size`` (bytes past it are link-layer padding).  Raises
    :class:`MalformedPacket`."""
    if size < IPV4_HLEN or len(packet) < size:
        raise MalformedPacket(DropReason.TOO_SHORT, "shorter than an IPv4 header")
    if packet[0] >> 4 != 4:
        raise MalformedPacket(DropReason.BAD_VERSION, f"IP version {packet[0] >> 4}")
    ihl = (packet[0] & 0x0F) * 4
    total = packet[2] << 8 | packet[3]
    if ihl < IPV4_HLEN or total < ihl:
        raise MalformedPacket(DropReason.MALFORMED, f"header length {ihl}, total {total}")
    if total > size:
        raise MalformedPacket(DropReason.TOO_SHORT, f"total length {total} > {size} received")
    if ones_sum(memoryview(packet)[:ihl]) != 0xFFFF:
        raise MalformedPacket(DropReason.BAD_CHECKSUM, "IPv4 header checksum")
    return ihl, total


class PacketBatchReceiver(BatchReceiver):
    """:class:`BatchReceiver` for a packet socket: the source address comes from the
    IPv4 header (the socket address is a ``sockaddr_ll``), and :meth:`plain_ok` does
    the IP input checks for the common packet in one NumPy pass."""

    def __init__(self, count: int = 64, slot_size: int = 2048) -> None:
        super().__init__(count, slot_size)
        self._rows8 = self._slab8.reshape(count, self.buffer_size)

    def sources_v4(self, n: int) -> list[int]:
        """The IPv4 source (header bytes 12-15) of each message, as the int
        :func:`sclp.io.batch.v4_key` gives for the address."""
        return self._rows8[:n, 12:16].copy().view(np.uint32)[:, 0].tolist()  # type: ignore[no-any-return]

    def plain_ok(self, n: int, sizes: list[int]) -> list[bool]:
        """Per message: a 20-byte IPv4 header (no options) with a valid checksum and a
        total length equal to the received size.  Those carry their L4 packet at
        ``[20:size]`` and :meth:`ones_sums` is that packet's sum; the others need
        :func:`ipv4_payload_bounds`."""
        rows = self._rows8[:n]
        total = rows[:, 2].astype(np.uint32) << 8 | rows[:, 3]
        hsum = self._slab16[:n, :10].sum(axis=1, dtype=np.uint32)
        hsum = (hsum & 0xFFFF) + (hsum >> 16)
        hsum = (hsum & 0xFFFF) + (hsum >> 16)
        ok = (rows[:, 0] == 0x45) & (hsum == 0xFFFF) & (total == np.asarray(sizes, np.uint32))
        return ok.tolist()  # type: ignore[no-any-return]
