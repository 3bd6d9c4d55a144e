"""Batch I/O for the segment-per-packet paths (native SCLP, NVGRE, STT): one
``sendmmsg`` per payload and one ``recvmmsg`` per receive batch, with every
per-message field computed by NumPy instead of a Python loop.

Why not :mod:`sclp.io.rawip`'s loops: a 64 KB payload is ~45 packets; at ~1 µs of
Python per packet on each side, the interpreter, not the kernel, would set the pace.
Here the segments of a payload already lie in one buffer at a fixed stride (see
:class:`sclp.engine.segmenter.SegmentBatch`), so the iovec array is an arithmetic
progression written in one NumPy assignment; on receive, the slots' sizes and
source addresses are read as NumPy columns of the ``mmsghdr`` array, and the slab
is zeroed after use so a slot's ones' complement sum can be taken over the whole slot
(:meth:`BatchReceiver.ones_sums`) in one pass for the batch.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import sys
from typing import Final

import numpy as np

from sclp.io._mmsg import Iovec, Mmsghdr, MmsgReceiver
from sclp.wire.checksum import Buffer

MSG_DONTWAIT: Final = 0x40
_LITTLE: Final = sys.byteorder == "little"

_libc = ctypes.CDLL(None, use_errno=True)
_sendmmsg = _libc.sendmmsg
_sendmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
_sendmmsg.restype = ctypes.c_int


def sockaddr_in(address: str, port: int = 0) -> bytes:
    """A ``struct sockaddr_in`` (16 bytes) for an IPv4 address."""
    return (
        socket.AF_INET.to_bytes(2, "little")
        + port.to_bytes(2, "big")
        + socket.inet_aton(address)
        + bytes(8)
    )


class StridedSender:
    """Sends ``count`` messages that lie back to back in one buffer at a fixed
    ``stride`` (the last may be shorter) to one destination, with ``sendmmsg``.
    Not thread-safe; one per sending thread."""

    def __init__(self, max_msgs: int = 128) -> None:
        self.max_msgs = max_msgs
        self._hdrs = (Mmsghdr * max_msgs)()
        self._iov = (Iovec * max_msgs)()
        self._name = ctypes.create_string_buffer(16)
        hdr_words = np.frombuffer(memoryview(self._hdrs).cast("B"), dtype=np.uint64).reshape(
            max_msgs, 8
        )
        iov_base = ctypes.addressof(self._iov)
        hdr_words[:, 0] = ctypes.addressof(self._name)  # msg_name
        hdr_words[:, 1] = 16  # msg_namelen (low half)
        hdr_words[:, 2] = iov_base + 16 * np.arange(max_msgs, dtype=np.uint64)  # msg_iov
        hdr_words[:, 3] = 1  # msg_iovlen
        self._iov_words = np.frombuffer(memoryview(self._iov).cast("B"), dtype=np.uint64).reshape(
            max_msgs, 2
        )
        self._steps = np.arange(max_msgs, dtype=np.uint64)
        self._hdrs_addr = ctypes.addressof(self._hdrs)

    def send(self, fd: int, buf: Buffer, stride: int, sockaddr: bytes) -> int:
        """Send ``buf`` cut at ``stride`` as separate messages to ``sockaddr``;
        returns the number of messages the kernel took (fewer when the socket buffer
        filled up).  Raises OSError for errors other than EAGAIN."""
        total = len(buf)
        if total == 0:
            return 0
        count = -(-total // stride)
        base = np.frombuffer(buf, dtype=np.uint8).ctypes.data
        self._name.raw = sockaddr
        sent = 0
        while sent < count:
            n = min(self.max_msgs, count - sent)
            iov = self._iov_words
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
    sizes, IPv4 sources and per-slot ones' complement sums as NumPy arrays."""

    def __init__(self, count: int = 64, slot_size: int = 2048) -> None:
        slot_size += slot_size % 2
        super().__init__(count, slot_size, 0)
        self._hdr_words = np.frombuffer(self.words, dtype=np.uint32).reshape(count, 16)
        self._slab8 = np.frombuffer(self.slab, dtype=np.uint8)
        self._slab16 = self._slab8.view(np.uint16).reshape(count, slot_size // 2)
        self._names32 = np.frombuffer(self.names, dtype=np.uint32).reshape(count, 7)
        self._used = 0
        self.truncated = 0

    def receive_batch(self, fd: int) -> int:
        """One ``recvmmsg``; returns how many slots were filled (0: nothing waiting).
        The slots of the previous batch are zeroed first."""
        if self._used:
            self._slab8[: self._used * self.buffer_size] = 0
            self._used = 0
        n = self.receive(fd, self.count)
        self._used = n
        return n

    def sizes(self, n: int) -> list[int]:
        return self._hdr_words[:n, 14].tolist()  # type: ignore[no-any-return]

    def sources_v4(self, n: int) -> list[int]:
        """The IPv4 source of each message as an int in network byte order read as
        host little-endian (compare with :func:`v4_key`)."""
        return self._names32[:n, 1].tolist()  # type: ignore[no-any-return]

    def ones_sums(self, n: int) -> list[int]:
        """Folded ones' complement sum of each whole slot (the bytes past a message
        are zero, so this is the sum of the message), in network byte order like
        :func:`sclp.wire.checksum.ones_sum`: the slab is summed as native words and
        swapped back once for the whole batch."""
        sums = self._slab16[:n].sum(axis=1, dtype=np.uint32)
        sums = (sums & 0xFFFF) + (sums >> 16)
        sums = (sums & 0xFFFF) + (sums >> 16)
        if _LITTLE:
            sums = ((sums & 0xFF) << 8) | (sums >> 8)
        return sums.tolist()  # type: ignore[no-any-return]


def v4_key(address: str) -> int:
    """The integer :meth:`BatchReceiver.sources_v4` reports for ``address``."""
    return int.from_bytes(socket.inet_aton(address), "little")
