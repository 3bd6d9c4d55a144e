"""``recvmmsg(2)`` and ``sendmmsg(2)`` through ctypes, shared by the UDP, raw IP and
packet adapters.

Python's ``socket`` module has no multi-message calls, so this module lays out the C
structures once (``struct iovec``, ``struct msghdr``, ``struct mmsghdr`` for LP64
Linux) over preallocated memory, resets them with one ``memmove`` per call and reads
the results back through a flat ``memoryview`` cast (or NumPy columns) instead of
ctypes attribute access, which costs several times more per field.  Nothing here
knows UDP or a tunnel format.

Measured (Linux 6.18, 2 vCPU, 1500-byte datagrams on loopback in a namespace, socket
prefilled with 10,000 datagrams, batches of 64, per datagram):

==================================  ==============  =================
call                                 run 1           run 2 (less load)
==================================  ==============  =================
``recvmmsg`` via ctypes (this)       1.87 us         1.05 us
loop of ``socket.recvmsg_into``      3.37 us         1.70 us
loop of ``socket.recvfrom_into``     2.62 us         1.38 us
``sendmmsg`` via ctypes, 2 pieces    10.6 / 5.1 us   (best version)
loop of ``socket.sendmsg``, 2 pieces 6.6 / 3.3 us
==================================  ==============  =================

``recvmmsg`` wins because filling N slots costs one ctypes call.  A general
``sendmmsg`` loses because every piece's address must be fetched through the buffer
protocol from Python (~0.45 us each), which ``socket.sendmsg`` does in C anyway; so the
UDP socket loops over ``sendmsg`` (and uses UDP GSO for bulk).  The exception is
:class:`StridedSender`: when the packets already lie back to back in one buffer at a
fixed stride (:class:`sclp.engine.segmenter.SegmentBatch`), the iovec array is an
arithmetic progression written by one NumPy assignment, and one ``sendmmsg`` sends a
payload's ~45 segments.  :class:`BatchReceiver` likewise reads a batch's sizes, sources
and checksums as NumPy columns.  With a single datagram waiting a ``recvmmsg`` call
costs ~1.5 us more than one ``recvmsg_into``, but a batch shorter than requested proves
the queue is drained, which saves the EAGAIN probe (~1.2 us, an exception in Python) a
``recvmsg_into`` loop needs.

Layout (LP64)::

    struct iovec   { void *iov_base; size_t iov_len; }                         16 bytes
    struct msghdr  { void *msg_name; socklen_t msg_namelen; [pad 4]
                     struct iovec *msg_iov; size_t msg_iovlen;
                     void *msg_control; size_t msg_controllen; int msg_flags; [pad 4]}  56
    struct mmsghdr { struct msghdr msg_hdr; unsigned int msg_len; [pad 4] }     64 bytes
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
import sys
from collections.abc import Hashable
from typing import Any, Final, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from sclp.io.errqueue import PENDING_ERRNOS
from sclp.io.linux import MSG_DONTWAIT, MSG_TRUNC
from sclp.wire.checksum import Buffer

SOCKADDR_SPACE: Final = 28  # sizeof(struct sockaddr_in6) >= sizeof(struct sockaddr_in)

Address = tuple[str, int]


class Iovec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class Msghdr(ctypes.Structure):
    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class Mmsghdr(ctypes.Structure):
    _fields_ = (("msg_hdr", Msghdr), ("msg_len", ctypes.c_uint))


assert ctypes.sizeof(Iovec) == 16 and ctypes.sizeof(Mmsghdr) == 64, "LP64 Linux only"
assert sys.byteorder == "little", "the word offsets below assume little-endian"

# Offsets in 32-bit words inside one 64-byte mmsghdr (16 words).
_MMSG_WORDS: Final = 16
_W_NAMELEN: Final = 2
_W_CONTROLLEN: Final = 10  # low half of the size_t (little-endian)
_W_FLAGS: Final = 12
_W_LEN: Final = 14

_libc = ctypes.CDLL(None, use_errno=True)
_recvmmsg = _libc.recvmmsg
_recvmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p)
_recvmmsg.restype = ctypes.c_int
_sendmmsg = _libc.sendmmsg
_sendmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
_sendmmsg.restype = ctypes.c_int
_LITTLE: Final = sys.byteorder == "little"

_PORT = struct.Struct("!H")


def encode_sockaddr(address: str, port: int = 0) -> bytes:
    """A ``struct sockaddr_in`` (16 bytes) or, for an address with ':', a
    ``struct sockaddr_in6`` (28 bytes, flow info and scope id 0)."""
    if ":" in address:
        return (
            socket.AF_INET6.to_bytes(2, sys.byteorder)
            + _PORT.pack(port)
            + bytes(4)
            + socket.inet_pton(socket.AF_INET6, address)
            + bytes(4)
        )
    return (
        socket.AF_INET.to_bytes(2, sys.byteorder)
        + _PORT.pack(port)
        + socket.inet_pton(socket.AF_INET, address)
        + bytes(8)
    )


def decode_sockaddr(raw: bytes) -> Address:
    family = int.from_bytes(raw[:2], sys.byteorder)  # sa_family is host order
    port = _PORT.unpack_from(raw, 2)[0]
    if family == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    return socket.inet_ntoa(raw[4:8]), port


def _raise_errno(what: str) -> None:
    code = ctypes.get_errno()
    raise OSError(code, f"{what}: {os.strerror(code)}")


class MmsgReceiver:
    """``count`` receive slots of ``buffer_size`` bytes each (one slab), with room for
    a source address and ``control_size`` bytes of ancillary data per slot.

    After :meth:`receive` returned ``n``, slot ``i < n`` holds ``size(i)`` bytes in
    ``views[i]``; the slots are reused by the next call.
    """

    def __init__(self, count: int, buffer_size: int, control_size: int) -> None:
        if count < 1 or buffer_size < 1:
            raise ValueError("count and buffer_size must be positive")
        self.count = count
        self.buffer_size = buffer_size
        self.control_size = control_size
        self.slab = bytearray(count * buffer_size)
        self.names = bytearray(count * SOCKADDR_SPACE)
        self.controls = bytearray(max(1, count * control_size))
        self._c_slab = (ctypes.c_char * len(self.slab)).from_buffer(self.slab)
        self._c_names = (ctypes.c_char * len(self.names)).from_buffer(self.names)
        self._c_controls = (ctypes.c_char * len(self.controls)).from_buffer(self.controls)
        self._iov = (Iovec * count)()
        self._hdrs = (Mmsghdr * count)()
        slab, names, controls = (
            ctypes.addressof(self._c_slab),
            ctypes.addressof(self._c_names),
            ctypes.addressof(self._c_controls),
        )
        for i in range(count):
            self._iov[i].iov_base = slab + i * buffer_size
            self._iov[i].iov_len = buffer_size
            hdr = self._hdrs[i].msg_hdr
            hdr.msg_name = names + i * SOCKADDR_SPACE
            hdr.msg_namelen = SOCKADDR_SPACE
            hdr.msg_iov = ctypes.addressof(self._iov) + i * ctypes.sizeof(Iovec)
            hdr.msg_iovlen = 1
            if control_size:
                hdr.msg_control = controls + i * control_size
                hdr.msg_controllen = control_size
        self._pristine = bytes(self._hdrs)  # reset template: namelen/controllen/flags
        self._hdrs_addr = ctypes.addressof(self._hdrs)
        self.words = memoryview(self._hdrs).cast("B").cast("I")
        slab_view = memoryview(self.slab)
        self.views = [slab_view[i * buffer_size : (i + 1) * buffer_size] for i in range(count)]
        self._addr_cache: dict[bytes, Address] = {}

    def receive(self, fd: int, max_msgs: int) -> int:
        """One non-blocking ``recvmmsg``; returns how many slots were filled (0 when
        nothing is waiting).  Raises OSError for other errors."""
        n = min(max_msgs, self.count)
        if n <= 0:
            return 0
        ctypes.memmove(self._hdrs_addr, self._pristine, n * 64)
        got = int(_recvmmsg(fd, self._hdrs_addr, n, MSG_DONTWAIT, None))
        if got < 0:
            code = ctypes.get_errno()
            if code in (errno.EAGAIN, errno.EWOULDBLOCK):
                return 0
            if code not in PENDING_ERRNOS:
                _raise_errno("recvmmsg")
            # A pending error an ICMP error left (IP_RECVERR), reported once and now
            # cleared; the error itself waits in the error queue.  Receive again.
            got = int(_recvmmsg(fd, self._hdrs_addr, n, MSG_DONTWAIT, None))
            if got < 0:
                if ctypes.get_errno() in (errno.EAGAIN, errno.EWOULDBLOCK, *PENDING_ERRNOS):
                    return 0
                _raise_errno("recvmmsg")
        return got

    def size(self, i: int) -> int:
        return int(self.words[i * _MMSG_WORDS + _W_LEN])

    def flags(self, i: int) -> int:
        return int(self.words[i * _MMSG_WORDS + _W_FLAGS])

    def control_len(self, i: int) -> int:
        return int(self.words[i * _MMSG_WORDS + _W_CONTROLLEN])

    def source(self, i: int) -> Address:
        start = i * SOCKADDR_SPACE
        raw = bytes(self.names[start : start + self.words[i * _MMSG_WORDS + _W_NAMELEN]])
        addr = self._addr_cache.get(raw)
        if addr is None:
            if len(self._addr_cache) > 4096:
                self._addr_cache.clear()
            addr = self._addr_cache[raw] = decode_sockaddr(raw)
        return addr


# -- NumPy batches for the segment-per-packet paths (raw IP and packet sockets) ------------


class RawBatch(NamedTuple):
    """One receive batch of a raw IP or packet socket: ``count`` packets in parallel
    lists.

    ``views[i]`` (``i < count``) is a whole receive slot; packet ``i`` is
    ``views[i][:sizes[i]]``, its L4 packet (the tunnel's segment) starts at
    ``offsets[i]`` (after the IPv4 header; 0 on IPv6, whose raw sockets deliver no IP
    header) and ``l4_sums[i]`` is the folded ones' complement sum of
    ``views[i][offsets[i]:sizes[i]]`` in network byte order, as
    :func:`sclp.wire.checksum.ones_sum` gives it.  ``offsets[i] == -1`` flags a packet
    whose IP header is unusable (the caller counts it or parses it the slow way);
    its ``l4_sums[i]`` is then 0.  ``sources[i]`` is a hashable key of the source
    address (:func:`sclp.io.rawip.source_key`).  The views and ``views`` itself belong
    to the socket: the next ``recv_batch`` overwrites them.
    """

    count: int  # type: ignore[assignment]  # shadows tuple.count, on purpose
    views: list[memoryview]
    sizes: list[int]
    sources: list[Hashable]
    offsets: list[int]
    l4_sums: list[int]


class RawReceiver(Protocol):
    """What reads an underlay raw channel a :class:`RawBatch` at a time: a raw IP
    socket (:class:`sclp.io.rawip.RawIpSocket`), a packet tap
    (:class:`sclp.io.packet.PacketTap`) or a receive ring
    (:class:`sclp.io.rxring.RxRing`).  ``sock`` is the socket itself (a ring's
    packets are read from its mapped frames, never with ``recvfrom``)."""

    sock: socket.socket

    def fileno(self) -> int: ...

    def recv_batch(self, max_msgs: int | None = None) -> RawBatch: ...

    def close(self) -> None: ...


def _fold(sums: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Fold 32-bit word sums (of host-order 16-bit words) to 16 bits, then give them in
    network byte order (the ones' complement sum commutes with byte swapping)."""
    sums = (sums & 0xFFFF) + (sums >> 16)
    sums = (sums & 0xFFFF) + (sums >> 16)
    if _LITTLE:
        sums = ((sums & 0xFF) << 8) | (sums >> 8)
    return sums


class StridedSender:
    """Sends ``count`` messages that lie back to back in one buffer at a fixed
    ``stride`` (the last may be shorter) to one destination, with ``sendmmsg``.
    Not thread-safe; one per sending thread."""

    def __init__(self, max_msgs: int = 128) -> None:
        self.max_msgs = max_msgs
        self._hdrs = (Mmsghdr * max_msgs)()
        self._iov = (Iovec * max_msgs)()
        self._name = ctypes.create_string_buffer(SOCKADDR_SPACE)
        self._hdr_words = np.frombuffer(memoryview(self._hdrs).cast("B"), dtype=np.uint64).reshape(
            max_msgs, 8
        )
        iov_base = ctypes.addressof(self._iov)
        self._hdr_words[:, 0] = ctypes.addressof(self._name)  # msg_name
        self._hdr_words[:, 2] = iov_base + 16 * np.arange(max_msgs, dtype=np.uint64)  # msg_iov
        self._hdr_words[:, 3] = 1  # msg_iovlen
        self._namelen = 0
        self._iov_words = np.frombuffer(memoryview(self._iov).cast("B"), dtype=np.uint64).reshape(
            max_msgs, 2
        )
        self._steps = np.arange(max_msgs, dtype=np.uint64)
        self._hdrs_addr = ctypes.addressof(self._hdrs)

    def send(self, fd: int, buf: Buffer, stride: int, sockaddr: bytes) -> int:
        """Send ``buf`` cut at ``stride`` as separate messages to ``sockaddr`` (from
        :func:`encode_sockaddr`); returns the number of messages the kernel took
        (fewer when the socket buffer filled up).  Raises OSError for errors other
        than EAGAIN."""
        total = len(buf)
        if total == 0:
            return 0
        if stride <= 0:
            raise ValueError(f"stride {stride} must be positive")
        count = -(-total // stride)
        base = np.frombuffer(buf, dtype=np.uint8).ctypes.data
        if len(sockaddr) != self._namelen:
            self._namelen = len(sockaddr)
            self._hdr_words[:, 1] = self._namelen  # msg_namelen (low half, LE)
        self._name.raw = sockaddr.ljust(SOCKADDR_SPACE, b"\0")
        iov = self._iov_words
        sent = 0
        while sent < count:
            n = min(self.max_msgs, count - sent)
            iov[:n, 0] = base + (sent * stride) + stride * self._steps[:n]
            iov[:n, 1] = stride
            if sent + n == count:
                iov[n - 1, 1] = total - (count - 1) * stride
            got = int(_sendmmsg(fd, self._hdrs_addr, n, MSG_DONTWAIT))
            if got < 0:
                code = ctypes.get_errno()
                if code in (errno.EAGAIN, errno.EWOULDBLOCK):
                    return sent
                raise OSError(code, f"sendmmsg: {os.strerror(code)}")
            sent += got
            if got < n:
                return sent
        return sent


class BatchReceiver(MmsgReceiver):
    """``recvmmsg`` into ``count`` zeroed slots of ``slot_size`` bytes, with the batch's
    sizes, sources and ones' complement sums as NumPy columns.

    The slots a batch used are zeroed before the next receive, so the bytes past a
    message are zero and a slot's sum is its message's sum.
    """

    def __init__(self, count: int = 64, slot_size: int = 2048, *, zeroed: bool = True) -> None:
        slot_size += slot_size % 2
        if not 64 <= slot_size <= 1 << 17:  # room for any IPv4 header; no uint32 overflow
            raise ValueError(f"slot_size {slot_size} out of range 64-131072")
        super().__init__(count, slot_size, 0)
        self._hdr_words = np.frombuffer(self.words, dtype=np.uint32).reshape(count, 16)
        self._slab8 = np.frombuffer(self.slab, dtype=np.uint8)
        self._rows8 = self._slab8.reshape(count, slot_size)
        self._slab16 = self._slab8.view(np.uint16).reshape(count, slot_size // 2)
        self._names8 = np.frombuffer(self.names, dtype=np.uint8).reshape(count, SOCKADDR_SPACE)
        self._names32 = self._names8.view(np.uint32)
        self._used = 0
        self._zeroed = zeroed
        self.truncated = 0

    def receive_batch(self, fd: int, max_msgs: int | None = None) -> int:
        """One ``recvmmsg``; returns how many slots were filled (0: nothing waiting).
        The slots of the previous batch are zeroed first (unless the receiver was made
        with ``zeroed=False``: then slot sums are meaningless, and not asked for)."""
        if self._used and self._zeroed:
            self._slab8[: self._used * self.buffer_size] = 0
            self._used = 0
        n = self.receive(fd, self.count if max_msgs is None else max_msgs)
        self._used = n
        return n

    # -- NumPy columns -----------------------------------------------------------------

    def sizes_column(self, n: int) -> npt.NDArray[np.uint32]:
        return self._hdr_words[:n, _W_LEN]

    def slot_sums(self, n: int) -> npt.NDArray[np.uint32]:
        """Unfolded sum of each slot's host-order 16-bit words."""
        sums: npt.NDArray[np.uint32] = self._slab16[:n].sum(axis=1, dtype=np.uint32)
        return sums

    def l4_sums(self, n: int) -> npt.NDArray[np.uint32]:
        """Folded sum of each whole slot in network byte order: the message's sum
        when the message is all L4 packet (IPv6 raw sockets)."""
        return _fold(self.slot_sums(n))

    def ipv4_sources(self, n: int) -> npt.NDArray[np.uint32]:
        """The address of each message's ``sockaddr_in`` as :func:`v4_key`."""
        return self._names32[:n, 1]

    def ipv6_sources(self, n: int) -> npt.NDArray[np.void]:
        """The 16 address bytes of each message's ``sockaddr_in6``."""
        return np.ascontiguousarray(self._names8[:n, 8:24]).view("V16")[:, 0]

    def ipv4_header_sources(self, n: int) -> npt.NDArray[np.uint32]:
        """Bytes 12-15 of each message (an IPv4 header's source) as :func:`v4_key`."""
        return ipv4_header_sources(self._rows8[:n])

    def ipv4_columns(
        self, n: int, sizes: npt.NDArray[np.uint32], *, check_header: bool
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint32]]:
        """``(offsets, l4_sums)`` of messages that begin with an IPv4 header.

        The offset is the header length (IHL * 4), or -1 when it is below 20 bytes or
        beyond the message.  ``check_header`` (a packet socket: no IP layer vetted the
        header) requires version 4 without options, a valid header checksum and a
        total length equal to the message size (options, link-layer padding or
        truncation give -1); its L4 sum is exact: the slot's word sum minus the
        header's ten words, folded.

        Without ``check_header`` (a raw IPv4 socket: the kernel verified the header,
        whose words then sum to 0xFFFF, the identity of ones' complement addition) the
        slot's sum *is* the L4 sum, up to the two spellings of zero (an all-zero L4
        packet sums to 0xFFFF instead of 0), at a third of the cost: it runs once per
        receive batch of the native tunnels."""
        rows = self._rows8[:n]
        if not check_header:
            ihl4 = (rows[:, 0] & 0x0F).astype(np.int64) * 4
            ok = (ihl4 >= 20) & (ihl4 <= sizes)
            if not self._zeroed:  # sums not wanted (see receive_batch)
                return np.where(ok, ihl4, -1), np.zeros(n, dtype=np.uint32)
            sums = _fold(self.slot_sums(n))
            return np.where(ok, ihl4, -1), np.where(ok, sums, 0).astype(np.uint32)
        return checked_ipv4_columns(rows, self._slab16[:n], sizes)

    def batch(
        self,
        n: int,
        sizes: npt.NDArray[np.uint32],
        sources: npt.NDArray[np.generic],
        offsets: npt.NDArray[np.int64],
        l4_sums: npt.NDArray[np.uint32],
    ) -> RawBatch:
        """The :class:`RawBatch` of ``n`` received messages given their columns, less
        the truncated ones (MSG_TRUNC: larger than a slot), which are counted in
        :attr:`truncated`."""
        views = self.views
        truncated = (self._hdr_words[:n, _W_FLAGS] & MSG_TRUNC) != 0
        if truncated.any():
            keep = np.flatnonzero(~truncated)
            self.truncated += n - len(keep)
            n = len(keep)
            sizes, sources, offsets, l4_sums = (
                sizes[keep],
                sources[keep],
                offsets[keep],
                l4_sums[keep],
            )
            views = [views[i] for i in keep.tolist()]
        return RawBatch(
            n, views, sizes.tolist(), sources.tolist(), offsets.tolist(), l4_sums.tolist()
        )


def checked_ipv4_columns(
    rows8: npt.NDArray[np.uint8], rows16: npt.NDArray[np.uint16], sizes: npt.NDArray[np.uint32]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint32]]:
    """``(offsets, l4_sums)`` of packets that begin with an IPv4 header nobody checked
    (a packet socket's, or a receive ring's): row ``i`` (bytes ``rows8[i]``, the same
    memory as 16-bit words ``rows16[i]``, zero past the packet) holds a packet of
    ``sizes[i]`` bytes.  The fast path takes the usual header (version 4, no options:
    the first 10 words) and checks what IP input would: header checksum, total length
    equal to the size.  Offset 20 and the L4 packet's folded sum (the row's word sum
    minus the header's) when it passes; -1 and 0 otherwise (options, link-layer
    padding, truncation, damage), for the caller's slow way."""
    header = rows16[:, :10].sum(axis=1, dtype=np.uint32)
    total = rows8[:, 2].astype(np.uint32) << 8 | rows8[:, 3]
    valid = (rows8[:, 0] == 0x45) & (total == sizes) & (_fold(header) == 0xFFFF)
    offsets = np.where(valid, 20, -1)
    l4_sums = np.where(valid, _fold(rows16.sum(axis=1, dtype=np.uint32) - header), 0)
    return offsets, l4_sums.astype(np.uint32)


def ipv4_header_sources(rows8: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint32]:
    """Bytes 12-15 of each row (an IPv4 header's source) as :func:`v4_key`."""
    return rows8[:, 12:16].copy().view(np.uint32)[:, 0]


def v4_key(address: str) -> int:
    """The key :meth:`BatchReceiver.ipv4_sources` reports for an IPv4 ``address``: its
    four bytes read as a host-order uint32."""
    return int.from_bytes(socket.inet_pton(socket.AF_INET, address), sys.byteorder)


def v6_key(address: str) -> bytes:
    """The key :meth:`BatchReceiver.ipv6_sources` reports: the 16 address bytes."""
    return socket.inet_pton(socket.AF_INET6, address)
