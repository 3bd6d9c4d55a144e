"""A packet socket (``AF_PACKET``, ``packet(7)``) that receives STT and native SCLP
segments before the kernel's IP (and TCP) layers see them.

Why: STT (draft-davie-stt §2) is pseudo-TCP to port 7471 that no TCP socket serves.
Read through a raw TCP socket, every segment also goes up the kernel's TCP stack,
which looks for a socket, finds none and builds a RST (that an nftables output rule
then drops).  With veth the receiver's softirq runs on the sender's CPU, so that work
halves STT's throughput.  Native SCLP (IP protocol 234) read through a raw socket
walks IP input (route lookup, netfilter, raw delivery) for every segment.  Instead:

* an nftables ``netdev``/``ingress`` rule on the underlay device drops the segments
  before IP processing (:func:`sclp.io.nft.install_ingress_drop`);
* this socket still gets them: ``ETH_P_ALL`` taps run in ``__netif_receive_skb_core``
  *before* the ingress hook, whereas ``ETH_P_IP`` handlers (IP itself, and a packet
  socket bound to ``ETH_P_IP``) run after it (checked on Linux 6.18: the ``ETH_P_ALL``
  socket got all 10 test segments dropped at ingress, an ``ETH_P_IP`` one none).

``SOCK_DGRAM`` strips the link-layer header, so a message starts with the IPv4
header, as on an IPv4 raw socket.  A classic BPF filter (``SO_ATTACH_FILTER``) lets
through only IPv4 non-fragments of the tunnel's protocol (and port) to the local
address (:func:`ipv4_filter`: :func:`stt_filter`, :func:`sclp_filter`), so the
socket's queue never holds other traffic; ``PACKET_IGNORE_OUTGOING`` (Linux 4.20)
keeps our own transmissions out (and saves the kernel cloning them for us).  The
filter is attached before ``bind``: a packet socket created with protocol 0 has no
hook until then, so no unfiltered packet can queue.

What the IP layer would have checked is now ours to check (a tap sees the packet as
it came off the wire): version, header length, header checksum, total length (the
frame may carry link-layer padding past it).  :meth:`PacketTap.recv_batch` does that
for a whole ``recvmmsg`` batch in NumPy; :func:`ipv4_payload_bounds` is the
per-packet reference for the packets the fast check does not take (offset -1).  No IP
reassembly: the filter passes only non-fragments (STT and SCLP senders set DF).
:class:`sclp.io.rxring.RxRing` reads the same packets through an mmapped ring.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct
from collections.abc import Iterable
from typing import Final, NamedTuple, Self

from sclp.io._mmsg import BatchReceiver, RawBatch
from sclp.io._sockopt import (
    DEFAULT_SOCKET_BUFFER,
    SocketAdapter,
    closed_on_error,
    set_socket_buffers,
)
from sclp.io.linux import (
    BPF_ALU_AND_K,
    BPF_JMP_JEQ_K,
    BPF_JMP_JSET_K,
    BPF_LD_B_ABS,
    BPF_LD_H_ABS,
    BPF_LD_H_IND,
    BPF_LD_W_ABS,
    BPF_LDX_B_MSH,
    BPF_MAXINSNS,
    BPF_RET_K,
    ETH_P_ALL,
    IPPROTO_SCLP,
    IPPROTO_TCP,
    PACKET_IGNORE_OUTGOING,
    SO_ATTACH_FILTER,
    SOL_PACKET,
)
from sclp.io.netns import run_in_netns
from sclp.wire.checksum import Buffer, ones_sum
from sclp.wire.errors import DropReason, MalformedPacket

__all__ = [
    "ETH_P_ALL",
    "MAX_FILTER_PEERS",
    "PACKET_IGNORE_OUTGOING",
    "BpfInsn",
    "PacketTap",
    "RawBatch",
    "attach_filter",
    "drop_all_filter",
    "ipv4_filter",
    "ipv4_payload_bounds",
    "open_ipv4_tap",
    "sclp_filter",
    "stt_filter",
]

IPV4_HLEN: Final = 20
_ACCEPT_LEN: Final = 0x40000  # bytes to keep of an accepted packet: all of it
_INSN: Final = struct.Struct("=HBBI")  # struct sock_filter
_FPROG: Final = struct.Struct("@HP")  # struct sock_fprog (native alignment: 16 bytes)


class BpfInsn(NamedTuple):
    """One ``struct sock_filter``: jumps are relative to the next instruction."""

    code: int
    jt: int
    jf: int
    k: int


MAX_FILTER_PEERS: Final = 32  # more peers: the filter leaves the source to the caller


def ipv4_filter(
    local: str, protocol: int, port: int | None = None, peers: Iterable[str] | None = None
) -> list[BpfInsn]:
    """Accept IPv4 packets (from the network header on, as a ``SOCK_DGRAM`` packet
    socket sees them) of IP ``protocol``, not a fragment, addressed to ``local``, with
    ``port`` (TCP or UDP: the L4 header's destination port; None: any) and, with
    ``peers``, from one of their IPv4 addresses (one comparison each; IPv6 ones are
    ignored, a tap sees IPv4 only); drop everything else.  Above
    :data:`MAX_FILTER_PEERS` IPv4 peers the source is not checked here (the caller's
    peer check still is)."""
    if not 0 <= protocol < 256:
        raise ValueError(f"IP protocol {protocol} out of range")
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    dst = int.from_bytes(socket.inet_aton(local), "big")
    sources: list[int] = []
    if peers is not None:
        sources = sorted(
            {
                int(a)
                for a in map(ipaddress.ip_address, peers)
                if isinstance(a, ipaddress.IPv4Address)
            }
        )
        if not sources:
            return drop_all_filter()
        if len(sources) > MAX_FILTER_PEERS:
            sources = []
    head = [
        BpfInsn(BPF_LD_B_ABS, 0, 0, 0),  # version/IHL byte
        BpfInsn(BPF_ALU_AND_K, 0, 0, 0xF0),
        (BPF_JMP_JEQ_K, 0x40),  # IPv4, else drop
        BpfInsn(BPF_LD_B_ABS, 0, 0, 9),  # protocol
        (BPF_JMP_JEQ_K, protocol),
        BpfInsn(BPF_LD_H_ABS, 0, 0, 6),  # flags + fragment offset
        (BPF_JMP_JSET_K, 0x3FFF),  # MF or an offset: a fragment, drop
        BpfInsn(BPF_LD_W_ABS, 0, 0, 16),  # destination address
        (BPF_JMP_JEQ_K, dst),
    ]
    if sources:
        head.append(BpfInsn(BPF_LD_W_ABS, 0, 0, 12))  # source address
        for i, src in enumerate(sources):  # a match jumps past the others
            last = i == len(sources) - 1
            head.append(
                BpfInsn(BPF_JMP_JEQ_K, len(sources) - 1 - i, 0, src)
                if not last
                else (BPF_JMP_JEQ_K, src)
            )
    if port is not None:
        head += [
            BpfInsn(BPF_LDX_B_MSH, 0, 0, 0),  # X = header length
            BpfInsn(BPF_LD_H_IND, 0, 0, 2),  # destination port
            (BPF_JMP_JEQ_K, port),
        ]
    head.append(BpfInsn(BPF_RET_K, 0, 0, _ACCEPT_LEN))
    drop = len(head)  # index of the final "ret 0"
    program: list[BpfInsn] = []
    for at, insn in enumerate(head):
        if isinstance(insn, BpfInsn):
            program.append(insn)
            continue
        code, k = insn  # a test whose failure drops (JSET: whose success drops)
        to_drop = drop - at - 1
        if code == BPF_JMP_JSET_K:
            program.append(BpfInsn(code, to_drop, 0, k))
        else:
            program.append(BpfInsn(code, 0, to_drop, k))
    program.append(BpfInsn(BPF_RET_K, 0, 0, 0))
    return program


def stt_filter(local: str, port: int, peers: Iterable[str] | None = None) -> list[BpfInsn]:
    """:func:`ipv4_filter` for STT: TCP to destination port ``port``."""
    return ipv4_filter(local, IPPROTO_TCP, port, peers)


def sclp_filter(local: str, peers: Iterable[str] | None = None) -> list[BpfInsn]:
    """:func:`ipv4_filter` for native SCLP: IP protocol 234, no port."""
    return ipv4_filter(local, IPPROTO_SCLP, None, peers)


def drop_all_filter() -> list[BpfInsn]:
    """A filter that accepts nothing: for a send-only raw socket, whose receive queue
    would otherwise fill with copies of every packet of its protocol."""
    return [BpfInsn(BPF_RET_K, 0, 0, 0)]


def attach_filter(sock: socket.socket, program: list[BpfInsn]) -> None:
    """``SO_ATTACH_FILTER``; the kernel copies the program, so the buffer may go."""
    if not 0 < len(program) <= BPF_MAXINSNS:
        raise ValueError("a classic BPF program has 1 to 4096 instructions")
    code = ctypes.create_string_buffer(b"".join(_INSN.pack(*insn) for insn in program))
    fprog = _FPROG.pack(len(program), ctypes.addressof(code))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def unbound_ipv4_tap(program: list[BpfInsn]) -> socket.socket:
    """An ``AF_PACKET``/``SOCK_DGRAM`` socket with ``program`` attached and our own
    transmissions ignored, not yet bound: a socket created with protocol 0 has no hook
    until :func:`bind_tap`, so no unfiltered packet can queue meanwhile (a receive
    ring is set up in between).  Call it in the namespace of the device to tap."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)  # no hook until bind
    with closed_on_error(sock):
        attach_filter(sock, program)
        sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    return sock


def bind_tap(sock: socket.socket, ifname: str) -> None:
    """Start the tap: every protocol (``ETH_P_ALL``, ahead of the ingress hook) on
    ``ifname``, non-blocking.  Raises OSError (ENODEV for no such device)."""
    sock.bind((ifname, ETH_P_ALL))
    sock.setblocking(False)


def open_ipv4_tap(ifname: str, program: list[BpfInsn]) -> socket.socket:
    """A non-blocking ``AF_PACKET``/``SOCK_DGRAM`` socket on ``ifname`` that gets the
    incoming packets ``program`` accepts, IP header first, ahead of the ingress hook.
    Call it in the namespace of ``ifname``.  Raises OSError (ENODEV for no such
    device, EPERM without CAP_NET_RAW)."""
    sock = unbound_ipv4_tap(program)
    with closed_on_error(sock):
        bind_tap(sock, ifname)
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


class PacketTap(SocketAdapter):
    """A non-blocking ``AF_PACKET`` socket (:func:`open_ipv4_tap`) read in batches.

    :meth:`recv_batch` gives a :class:`RawBatch` like
    :meth:`sclp.io.rawip.RawIpSocket.recv_batch`: ``sources`` are keys from the IPv4
    header's source address (:func:`sclp.io.rawip.source_key`); ``offsets[i]`` is the
    header length when the header passes the checks IP input would make (version 4,
    header checksum, total length equal to the size, which excludes link-layer
    padding), and -1 otherwise, for the caller to try :func:`ipv4_payload_bounds` on
    ``views[i]`` and ``sizes[i]`` (it raises :class:`MalformedPacket` with the drop
    reason).  :attr:`truncated` counts packets larger than a slot (dropped).
    """

    def __init__(self, sock: socket.socket, *, batch: int = 64, slot_size: int = 2048) -> None:
        self.sock = sock
        self._rx = BatchReceiver(batch, slot_size)

    @classmethod
    def open(
        cls,
        ifname: str,
        program: list[BpfInsn],
        *,
        netns: str | None = None,
        batch: int = 64,
        slot_size: int = 2048,
        socket_buffer: int = DEFAULT_SOCKET_BUFFER,
    ) -> Self:
        """A tap on ``ifname`` (in namespace ``netns``; None: the calling thread's)
        receiving what ``program`` accepts (e.g. :func:`stt_filter`), with
        ``batch`` slots of ``slot_size`` bytes.  Raises OSError (ENODEV: no such
        device; EPERM without CAP_NET_RAW)."""
        with run_in_netns(netns):
            sock = open_ipv4_tap(ifname, program)
        with closed_on_error(sock):
            set_socket_buffers(sock, socket_buffer)
            return cls(sock, batch=batch, slot_size=slot_size)

    @property
    def truncated(self) -> int:
        return self._rx.truncated

    def recv_batch(self, max_msgs: int | None = None) -> RawBatch:
        """Up to ``max_msgs`` (default: the ``batch`` size) packets with one
        ``recvmmsg``; ``count`` 0 when nothing is waiting.  Views valid until the next
        call."""
        rx = self._rx
        n = rx.receive_batch(self.sock.fileno(), max_msgs)
        if not n:
            return RawBatch(0, [], [], [], [], [])
        sizes = rx.sizes_column(n)
        offsets, l4_sums = rx.ipv4_columns(n, sizes, check_header=True)
        return rx.batch(n, sizes, rx.ipv4_header_sources(n), offsets, l4_sums)
