"""TAP device adapter: Ethernet frames in and out of a Linux ``tun`` driver, with offloads.

Why ``IFF_VNET_HDR`` and ``TUNSETOFFLOAD``: without them the kernel cuts every TCP
stream into MTU-sized frames before we see it, and Python pays its per-packet cost
~45 times per 64 KB.  With them the TAP behaves like a virtio-net NIC with TSO: each
frame read is preceded by a 10-byte ``virtio_net_hdr`` (see
:mod:`sclp.wire.virtio_net`) and may be a TCP super-frame up to ~64 KB (``gso_type``
TCPV4/TCPV6, ``gso_size`` = MSS, partial checksum to finish from ``csum_start``);
frames we write back may be just as large and the kernel segments or GRO-merges them
as needed.  The ABI constants come from ``include/uapi/linux/if_tun.h`` (ioctl numbers
checked against ``_IOW('T', n, int)`` compiled with the system headers).

Header size: ``TUNSETVNETHDRSZ`` is set to 10, the legacy ``struct virtio_net_hdr``.
The 12-byte ``virtio_net_hdr_mrg_rxbuf`` only adds ``num_buffers``, meaningful for
virtio's mergeable receive buffers, which a TAP read into one flat buffer never uses.

Frame size: the kernel keeps a GSO frame below the device's ``gso_max_size`` (65,536 by
default; the Ethernet header counts).  An encapsulating endpoint that must keep its
output under 65,535 bytes lowers it with :func:`set_gso_max_size`; measured on Linux
6.18, a TAP honours ``IFLA_GSO_MAX_SIZE`` (TCP then emits frames no larger than it),
so no MTU or MSS clamp is needed.

Batch contract (wireguard-go habit): :meth:`TapDevice.read_batch` fills caller-owned
buffers at ``offset`` (headroom for outer headers) until the queue is empty;
non-blocking throughout, the caller waits on :meth:`TapDevice.fileno` with its own
selector.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import os
import socket
import struct
from collections.abc import Iterable, Sequence
from typing import Final, Self

from sclp.io import linux
from sclp.io.linux import IFNAMSIZ, TUNGETIFF, TUNSETIFF, TUNSETOFFLOAD, TUNSETVNETHDRSZ
from sclp.io.netns import NetNS
from sclp.wire.checksum import Buffer
from sclp.wire.virtio_net import VNET_HDR_LEN

__all__ = [
    "IFNAMSIZ",
    "MAX_FRAME_LEN",
    "READ_BUFFER_LEN",
    "TAP_OFFLOADS",
    "TUNGETIFF",
    "TUNSETIFF",
    "TUNSETOFFLOAD",
    "TUNSETVNETHDRSZ",
    "VNET_HDR_LEN",
    "TapDevice",
    "TapError",
    "TunFlags",
    "TunOffload",
    "set_gso_max_size",
]

TUN_DEVICE_PATH: Final = "/dev/net/tun"

# struct ifreq for TUNSETIFF/TUNGETIFF: char ifr_name[16]; short ifr_flags; padding to 40.
_IFREQ = struct.Struct("16sH22x")
_INT = struct.Struct("i")

MAX_FRAME_LEN: Final = 65_535 + 18
"""Largest frame a read can return: an IPv4/IPv6 packet of 65,535 bytes behind an
Ethernet header with one VLAN tag (GSO frames stay below ``gso_max_size`` <= 65,536)."""

READ_BUFFER_LEN: Final = VNET_HDR_LEN + MAX_FRAME_LEN
"""Bytes a read buffer needs after its offset so that no frame can be cut short."""


class TunFlags(enum.IntFlag):
    """``ifr_flags`` for ``TUNSETIFF`` (``IFF_*`` in ``if_tun.h``)."""

    TUN = linux.IFF_TUN
    TAP = linux.IFF_TAP
    MULTI_QUEUE = linux.IFF_MULTI_QUEUE
    NO_PI = linux.IFF_NO_PI  # no 4-byte packet-information prefix
    VNET_HDR = linux.IFF_VNET_HDR  # each frame is preceded by a virtio_net_hdr


class TunOffload(enum.IntFlag):
    """``TUNSETOFFLOAD`` argument: what *we* can handle (``TUN_F_*`` in ``if_tun.h``)."""

    NONE = 0
    CSUM = linux.TUN_F_CSUM  # we accept frames with a partial checksum (NEEDS_CSUM)
    TSO4 = linux.TUN_F_TSO4  # we accept IPv4 TCP super-frames (requires CSUM)
    TSO6 = linux.TUN_F_TSO6  # we accept IPv6 TCP super-frames (requires CSUM)
    TSO_ECN = linux.TUN_F_TSO_ECN  # ... including ones with CWR set (gso_type has the ECN bit)
    UFO = linux.TUN_F_UFO
    USO4 = linux.TUN_F_USO4
    USO6 = linux.TUN_F_USO6


TAP_OFFLOADS: Final = TunOffload.CSUM | TunOffload.TSO4 | TunOffload.TSO6 | TunOffload.TSO_ECN
"""The offloads :meth:`TapDevice.open` enables: checksum offload and TCP segmentation."""


class TapError(OSError):
    """A TAP device could not be opened or configured; the message says what to do.

    It is an :class:`OSError` whose ``errno`` is the kernel's, so callers may still
    dispatch on it."""


class TapDevice:
    """One queue of a TAP interface, opened non-blocking.

    Frames read and written include the 10-byte ``virtio_net_hdr`` when the device was
    opened with ``vnet_hdr=True`` (:attr:`vnet_hdr_len` is then 10, else 0).  The
    interface itself (address, MTU, up/down, namespace) is configured over netlink with
    :mod:`sclp.io.netns`; the file descriptor keeps working when the interface is moved
    to another network namespace.
    """

    __slots__ = ("_fd", "_iov", "_iov_key", "multi_queue", "name", "offloads", "vnet_hdr_len")

    def __init__(
        self, fd: int, name: str, vnet_hdr_len: int, offloads: TunOffload, multi_queue: bool
    ) -> None:
        self._fd = fd
        self._iov: tuple[memoryview, ...] = ()
        self._iov_key: tuple[bytearray | memoryview | None, int] = (None, 0)
        self.name = name
        self.vnet_hdr_len = vnet_hdr_len
        self.offloads = offloads
        self.multi_queue = multi_queue

    @classmethod
    def open(
        cls,
        name: str,
        vnet_hdr: bool = True,
        offloads: bool = True,
        *,
        multi_queue: bool = False,
    ) -> Self:
        """Create (or attach to) the TAP interface ``name`` in the calling thread's
        network namespace and return it non-blocking.

        ``offloads`` enables :data:`TAP_OFFLOADS` and only takes effect with
        ``vnet_hdr`` (without the header the kernel has no way to describe a
        super-frame, so it segments and checksums everything itself).  With
        ``multi_queue`` every further ``open`` of the same name adds a queue.

        Raises :class:`TapError`: name in use by another process (EBUSY), name taken
        by a non-TAP interface (EINVAL), missing privileges (EPERM), no
        ``/dev/net/tun`` (ENOENT).  Raises :class:`ValueError` for a name the kernel
        could never accept.
        """
        encoded = name.encode()
        if not 0 < len(encoded) < IFNAMSIZ or "/" in name or name.strip() != name:
            raise ValueError(f"invalid interface name {name!r}: 1-15 bytes, no '/' or spaces")
        flags = TunFlags.TAP | TunFlags.NO_PI
        if vnet_hdr:
            flags |= TunFlags.VNET_HDR
        if multi_queue:
            flags |= TunFlags.MULTI_QUEUE
        try:
            fd = os.open(TUN_DEVICE_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise _tap_error(exc, name, "open " + TUN_DEVICE_PATH) from exc
        try:
            try:
                reply = fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(encoded, flags))
            except OSError as exc:
                raise _tap_error(exc, name, "TUNSETIFF") from exc
            kernel_name = _IFREQ.unpack(reply)[0].rstrip(b"\0").decode()
            vnet_hdr_len = 0
            enabled = TunOffload.NONE
            if vnet_hdr:
                try:
                    fcntl.ioctl(fd, TUNSETVNETHDRSZ, _INT.pack(VNET_HDR_LEN))
                    vnet_hdr_len = VNET_HDR_LEN
                    if offloads:
                        fcntl.ioctl(fd, TUNSETOFFLOAD, int(TAP_OFFLOADS))
                        enabled = TAP_OFFLOADS
                except OSError as exc:
                    raise _tap_error(exc, kernel_name, "TUNSETVNETHDRSZ/TUNSETOFFLOAD") from exc
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, kernel_name, vnet_hdr_len, enabled, multi_queue)

    # -- file descriptor ---------------------------------------------------------------

    def fileno(self) -> int:
        """The non-blocking descriptor, for ``select``/``epoll`` (readable = frames)."""
        if self._fd < 0:
            raise ValueError(f"TAP {self.name!r} is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        """Close this queue.  Idempotent.  A non-persistent TAP interface disappears
        when its last queue is closed."""
        self._iov, self._iov_key = (), (None, 0)
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._fd < 0 else f"fd={self._fd}"
        return f"TapDevice({self.name!r}, {state}, vnet_hdr_len={self.vnet_hdr_len})"

    # -- reading -----------------------------------------------------------------------

    def read_into(self, buf: bytearray | memoryview, offset: int = 0) -> int:
        """Read one frame (with its virtio_net_hdr, if any) into ``buf[offset:]``.

        Returns the number of bytes read, or **0 when no frame is waiting** (EAGAIN):
        a TAP frame is never empty, so 0 is unambiguous and keeps the return type a
        plain ``int``.  Give at least :data:`READ_BUFFER_LEN` bytes after ``offset``:
        the kernel silently truncates a frame that does not fit (the read returns
        the buffer's length and the rest is lost).  Other errors raise OSError.

        The I/O vector for ``buf[offset:]`` is kept for the next call with the same
        buffer and offset (the endpoint reads every frame into one buffer): while it is
        kept, a ``bytearray`` given here cannot be resized.
        """
        key = self._iov_key
        if key[0] is not buf or key[1] != offset:
            self._iov = (memoryview(buf)[offset:],)
            self._iov_key = (buf, offset)
        try:
            return os.readv(self._fd, self._iov)
        except BlockingIOError:
            return 0

    def read_batch(
        self,
        bufs: Sequence[bytearray | memoryview],
        max_frames: int | None = None,
        offset: int = 0,
    ) -> list[int]:
        """Read frames into ``bufs[0]``, ``bufs[1]``, ... at ``offset`` until the queue
        is empty, ``max_frames`` frames were read, or the buffers run out.

        Returns the sizes of the frames read, in order (``sizes[i]`` bytes at
        ``bufs[i][offset:]``); an empty list means nothing was waiting.  The buffers
        stay owned by the caller.
        """
        limit = len(bufs) if max_frames is None else min(max_frames, len(bufs))
        sizes: list[int] = []
        readv = os.readv
        fd = self._fd
        try:
            for i in range(limit):
                sizes.append(readv(fd, (memoryview(bufs[i])[offset:],)))
        except BlockingIOError:
            pass
        return sizes

    # -- writing -----------------------------------------------------------------------

    def write(self, frame: Buffer) -> int:
        """Write one frame (starting with its virtio_net_hdr when :attr:`vnet_hdr_len`
        is 10).  Returns the bytes written.  The kernel rejects an inconsistent
        header or an oversized frame with OSError(EINVAL)."""
        return os.write(self._fd, frame)

    def writev(self, parts: Sequence[Buffer]) -> int:
        """Write one frame given as pieces, e.g. ``[vnet_hdr, ethernet_frame]`` or
        ``[vnet_hdr, eth_ip_tcp_headers, payload_view]``: one ``writev``, no copy."""
        return os.writev(self._fd, parts)

    def write_batch(self, frames: Iterable[Sequence[Buffer]]) -> int:
        """Write several frames, each given as pieces (see :meth:`writev`).  A TAP has
        no multi-frame write call, so this is one ``writev`` per frame.  Returns how
        many frames were written; stops at the first EAGAIN (queue full: the caller
        drops or retries the rest) and raises other errors."""
        written = 0
        writev = os.writev
        fd = self._fd
        try:
            for parts in frames:
                writev(fd, parts)
                written += 1
        except BlockingIOError:
            pass
        return written


def set_gso_max_size(ifname: str, size: int, netns: str | None = None) -> None:
    """Cap the size of the GSO frames the kernel hands to interface ``ifname``
    (``IFLA_GSO_MAX_SIZE`` over netlink), in namespace ``netns`` (None: the calling
    thread's).  On a TAP this bounds the TSO frames we read: the kernel keeps every
    frame, Ethernet header included, strictly below ``size``.  ``size`` must be
    between 1 and the device's ``tso_max_size`` (65,536 for a TAP)."""
    with NetNS(netns) as ns:
        ns.set_link(ifname, gso_max_size=size)


def _interface_exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def _tap_error(exc: OSError, name: str, what: str) -> TapError:
    code = exc.errno or errno.EIO
    if code in (errno.EBUSY, errno.EEXIST):
        msg = (
            f"TAP name {name!r} is in use by another process; choose another "
            f'tap = "..." name in the configuration, or stop the process holding it'
        )
    elif code == errno.EPERM or code == errno.EACCES:
        msg = f"opening TAP {name!r} needs root or CAP_NET_ADMIN ({what}: {exc.strerror})"
    elif code == errno.ENOENT and what.startswith("open"):
        msg = f"{TUN_DEVICE_PATH} does not exist: load the tun module (modprobe tun)"
    elif code == errno.EINVAL and what == "TUNSETIFF" and _interface_exists(name):
        msg = (
            f"an interface named {name!r} already exists and is not a TAP that can be "
            "attached with these flags (another kind of device, or a TAP with a "
            "different multi-queue / vnet_hdr setting); choose another tap name"
        )
    else:
        msg = f"TAP {name!r}: {what} failed: {exc.strerror or exc}"
    return TapError(code, msg)
