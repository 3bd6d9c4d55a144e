"""A packet socket read through a ``PACKET_RX_RING`` (``packet_mmap``), for the
segments :class:`sclp.io.packet.PacketTap` otherwise reads with ``recvmmsg``.

Why: a tap's ``recvmmsg`` costs a system call per batch and a copy of each packet out
of its socket buffer; with an RX ring the kernel writes each packet once, into memory
this process has mapped, and a batch is read without a system call while frames are
ready.  Readiness comes from ``poll``/``epoll`` on the socket, as before.

Layout (``include/uapi/linux/if_packet.h``, ``TPACKET_V2``): the ring is
``frame_nr`` frames of ``frame_size`` bytes, back to back (the frame size is a power of
two that divides the block size, so no block leaves a gap).  Each frame starts with a
``struct tpacket2_hdr``::

    u32 tp_status   u32 tp_len   u32 tp_snaplen   u16 tp_mac   u16 tp_net
    u32 tp_sec      u32 tp_nsec  u16 tp_vlan_tci  u16 tp_vlan_tpid  u8 tp_padding[4]

followed by a ``struct sockaddr_ll``; a ``SOCK_DGRAM`` socket's packet (its IPv4
header first) starts at ``tp_net`` = ``TPACKET_ALIGN(TPACKET2_HDRLEN) + 16`` = 80.  So
the ring is a 2-D NumPy array (frames × frame_size) and a batch's status, length and
addresses are columns of it: no Python per packet.  A frame is ours from
``TP_STATUS_USER`` until we write ``TP_STATUS_KERNEL`` back; we hand a batch out as
views of the frames and give the frames back at the next call, after zeroing their
packet area, so that a whole-frame word sum is the packet's sum (as with
:class:`sclp.io._mmsg.BatchReceiver`'s zeroed slots).  The status word is written
last, after the zeroing.  Loads are not reordered with loads on x86-64, which is what
reading the status column before the data relies on (the kernel sets the status
after a write barrier).

The checks and columns are :class:`sclp.io.packet.PacketTap`'s: offset 20 for an
IPv4 header without options whose checksum holds and whose total length is the
captured length, else -1 (the caller's :func:`sclp.io.packet.ipv4_payload_bounds`).
"""

from __future__ import annotations

import contextlib
import mmap
import socket
import struct
from typing import Any, Final, Self

import numpy as np
import numpy.typing as npt

from sclp.io._mmsg import RawBatch, checked_ipv4_columns, ipv4_header_sources
from sclp.io._sockopt import SocketAdapter, closed_on_error
from sclp.io.linux import (
    PACKET_RX_RING,
    PACKET_STATISTICS,
    PACKET_VERSION,
    SOL_PACKET,
    TP_STATUS_COPY,
    TP_STATUS_LOSING,
    TP_STATUS_USER,
    TPACKET2_HDRLEN,
    TPACKET_ALIGNMENT,
    TPACKET_V2,
)
from sclp.io.netns import run_in_netns
from sclp.io.packet import BpfInsn, attach_filter, bind_tap, drop_all_filter, unbound_ipv4_tap

__all__ = ["DEFAULT_RING_BYTES", "NET_OFFSET", "RxRing"]

DEFAULT_RING_BYTES: Final = 8 << 20  # ~4,000 frames of 2 KiB: ~50 ms at 1 Gbit/s
# Where a SOCK_DGRAM socket's packet starts in a TPACKET_V2 frame (tpacket_rcv):
# TPACKET_ALIGN(TPACKET2_HDRLEN) + 16.
NET_OFFSET: Final = ((TPACKET2_HDRLEN + TPACKET_ALIGNMENT - 1) & -TPACKET_ALIGNMENT) + 16
_REQ: Final = struct.Struct("=IIII")  # struct tpacket_req: block_size/nr, frame_size/nr
_STATS: Final = struct.Struct("=II")  # struct tpacket_stats: tp_packets, tp_drops
_MAX_BLOCK: Final = 1 << 17  # blocks are physically contiguous pages: keep them small
_EMPTY: Final = RawBatch(0, [], [], [], [], [])


def frame_size_for(slot_size: int) -> int:
    """The frame size for packets of up to ``slot_size`` bytes: a power of two with room
    for the frame header."""
    return 1 << (NET_OFFSET + slot_size - 1).bit_length()


class RxRing(SocketAdapter):
    """A non-blocking ``AF_PACKET``/``SOCK_DGRAM`` socket with a ``TPACKET_V2`` receive
    ring, read in batches like :class:`sclp.io.packet.PacketTap` (same
    :class:`RawBatch` contract: ``views[i]`` is frame ``i``'s packet area, valid until
    the next :meth:`recv_batch`).

    :attr:`truncated` counts packets larger than a frame (dropped), :attr:`drops` the
    packets the kernel dropped because the ring was full (``tp_drops``, read when a
    frame says ``TP_STATUS_LOSING`` and by :meth:`read_drops`).
    """

    def __init__(
        self, sock: socket.socket, *, batch: int = 64, slot_size: int = 2048, ring_bytes: int = 0
    ) -> None:
        """Set up the ring on ``sock`` (a fresh, unbound packet socket) and map it:
        ``ring_bytes`` (default :data:`DEFAULT_RING_BYTES`) of frames of
        :func:`frame_size_for` ``slot_size``.  Raises OSError from the kernel."""
        if batch < 1:
            raise ValueError("batch must be positive")
        frame = frame_size_for(slot_size)
        block = max(frame, min(_MAX_BLOCK, mmap.PAGESIZE * 16))
        ring_bytes = max(ring_bytes or DEFAULT_RING_BYTES, block)
        blocks = ring_bytes // block
        self.sock = sock
        self.batch = batch
        self.frame_size = frame
        self.frame_nr = blocks * (block // frame)
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
        sock.setsockopt(SOL_PACKET, PACKET_RX_RING, _REQ.pack(block, blocks, frame, self.frame_nr))
        self._mm = mmap.mmap(
            sock.fileno(), block * blocks, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
        )
        ring8 = np.frombuffer(self._mm, dtype=np.uint8).reshape(self.frame_nr, frame)
        self._ring8 = ring8
        self._words = ring8.view(np.uint32)  # column 0 status, 1 len, 2 snaplen
        self._net = ring8.view(np.uint16)[:, 7]  # tp_net
        self._rows8 = ring8[:, NET_OFFSET:]
        self._rows16 = ring8.view(np.uint16)[:, NET_OFFSET // 2 :]
        whole = memoryview(self._mm)
        self._views = [
            whole[i * frame + NET_OFFSET : (i + 1) * frame] for i in range(self.frame_nr)
        ]
        self._steps = np.arange(self.frame_nr, dtype=np.int64)
        self._head = 0  # the next frame to read
        self._taken = 0  # frames from _head - _taken on that the caller may still read
        self.truncated = 0
        self.drops = 0

    @classmethod
    def open(
        cls,
        ifname: str,
        program: list[BpfInsn],
        *,
        netns: str | None = None,
        batch: int = 64,
        slot_size: int = 2048,
        ring_bytes: int = 0,
    ) -> Self:
        """A ring on ``ifname`` (in namespace ``netns``; None: the calling thread's)
        receiving what ``program`` accepts (e.g. :func:`sclp.io.packet.sclp_filter`),
        ahead of the ingress hook, without our own transmissions.  Raises OSError
        (ENODEV: no such device; EPERM without CAP_NET_RAW; ENOMEM for the ring)."""
        with run_in_netns(netns):
            sock = unbound_ipv4_tap(program)
        with closed_on_error(sock):
            ring = cls(sock, batch=batch, slot_size=slot_size, ring_bytes=ring_bytes)
            try:
                with run_in_netns(netns):
                    bind_tap(sock, ifname)
            except BaseException:
                ring.close()
                raise
            return ring

    @property
    def ring_bytes(self) -> int:
        return self.frame_nr * self.frame_size

    def read_drops(self) -> int:
        """Add the kernel's ``tp_drops`` since the last read to :attr:`drops` (reading
        resets the kernel's counters) and return the total (just :attr:`drops` once
        closed)."""
        if self.sock.fileno() < 0:
            return self.drops
        _packets, dropped = _STATS.unpack(
            self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS.size)
        )
        self.drops += dropped
        return self.drops

    def _release(self) -> None:
        """Give the frames of the previous batch back to the kernel: packet areas
        zeroed first, then the status words."""
        taken, self._taken = self._taken, 0
        if not taken:
            return
        start = (self._head - taken) % self.frame_nr
        for a, b in self._spans(start, taken):
            self._rows8[a:b] = 0
            self._words[a:b, 0] = 0

    def _spans(self, start: int, count: int) -> list[tuple[int, int]]:
        """``count`` frames from ``start`` as at most two ranges (the ring wraps)."""
        end = start + count
        if end <= self.frame_nr:
            return [(start, end)]
        return [(start, self.frame_nr), (0, end - self.frame_nr)]

    def recv_batch(self, max_msgs: int | None = None) -> RawBatch:
        """Up to ``max_msgs`` (default: the ``batch`` size) packets the ring holds,
        with no system call; ``count`` 0 when none is ready.  Views valid until the
        next call, which gives their frames back to the kernel."""
        self._release()
        limit = min(self.batch if max_msgs is None else max_msgs, self.frame_nr)
        if limit <= 0:
            return _EMPTY
        head = self._head
        status = self._words[(head + self._steps[:limit]) % self.frame_nr, 0]
        ready = (status & TP_STATUS_USER) != 0
        n = limit if ready.all() else int(ready.argmin())
        if not n:
            return _EMPTY
        self._head = (head + n) % self.frame_nr
        self._taken = n
        spans = self._spans(head, n)
        parts = [self._columns(a, b) for a, b in spans]
        views = self._views[spans[0][0] : spans[0][1]]
        if len(parts) == 1:
            status, sizes, lengths, nets, sources, offsets, sums = parts[0]
        else:
            views = views + self._views[spans[1][0] : spans[1][1]]
            status, sizes, lengths, nets, sources, offsets, sums = (
                np.concatenate(columns) for columns in zip(*parts, strict=True)
            )
        if (status & TP_STATUS_LOSING).any():
            self.read_drops()
        bad = ((status & TP_STATUS_COPY) != 0) | (sizes < lengths) | (nets != NET_OFFSET)
        if bad.any():  # larger than a frame (or an unexpected layout): dropped
            keep = np.flatnonzero(~bad)
            self.truncated += n - len(keep)
            n = len(keep)
            sizes, sources, offsets, sums = sizes[keep], sources[keep], offsets[keep], sums[keep]
            views = [views[i] for i in keep.tolist()]
        return RawBatch(n, views, sizes.tolist(), sources.tolist(), offsets.tolist(), sums.tolist())

    def _columns(self, a: int, b: int) -> tuple[npt.NDArray[Any], ...]:
        """(status, sizes, lengths, nets, sources, offsets, l4_sums) of frames a..b-1:
        the fast IP input check of :func:`sclp.io._mmsg.checked_ipv4_columns`."""
        words = self._words[a:b]
        status, lengths, sizes = words[:, 0], words[:, 1], words[:, 2]
        rows8 = self._rows8[a:b]
        offsets, sums = checked_ipv4_columns(rows8, self._rows16[a:b], sizes)
        sources = ipv4_header_sources(rows8)
        return (
            status.copy(),
            sizes.copy(),
            lengths.copy(),
            self._net[a:b].copy(),
            sources,
            offsets,
            sums,
        )

    def close(self) -> None:
        """Stop receiving and unmap the ring.  If the caller still holds views of the
        last batch, the mapping (and the duplicate of the socket that Python's
        ``mmap`` keeps) lives on until they go; the drop-all filter keeps it idle."""
        if self.sock.fileno() < 0:
            return
        with contextlib.suppress(OSError):
            attach_filter(self.sock, drop_all_filter())
        self._views = []
        empty = np.zeros((1, 64), dtype=np.uint8)
        self._ring8, self._rows8 = empty, empty
        self._words = empty.view(np.uint32)
        self._rows16 = self._net = empty.view(np.uint16)
        with contextlib.suppress(BufferError):
            self._mm.close()
        self.sock.close()
