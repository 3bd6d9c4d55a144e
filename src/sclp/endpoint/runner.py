"""The runner: one thread, one ``epoll``, the I/O around the sans-I/O data path.

It owns the event loop, the signals and the timers, and nothing of the protocols:
every readable descriptor has a handler that reads a batch with the :mod:`sclp.io`
adapter of that descriptor, hands it to :class:`~sclp.endpoint.datapath.DataPath`
with one ``now`` per wake-up, and carries out what comes back — the
:class:`~sclp.endpoint.tunnels.Send`\\ s through an :class:`UnderlaySender` (or a
:class:`FaultySender` around it), the :class:`~sclp.endpoint.datapath.Deliver`\\ ies
with one ``writev`` each.  Handlers drain their descriptor up to a budget and return,
so no descriptor starves the others.  VM ports come and go while the loop runs
(:meth:`Runner.add_port`, :meth:`Runner.remove_port`): a TAP the endpoint owns and an
attached interface's packet socket are read and written the same way.

The way of a frame from the VM to the wire: ``TapDevice.read_into`` →
``DataPath.from_vm`` → ``Tunnel.transmit`` → ``UnderlaySender.send`` →
``UdpSocket.send_gso`` / ``RawIpSocket.send_strided``: one read, one encapsulation
(segmenting into one buffer), one or two system calls.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import signal
import socket
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Final, Protocol, cast

from sclp.endpoint.datapath import FRAME_BUF, HEADROOM, DataPath, Deliver, VmPort
from sclp.endpoint.faults import FaultInjector
from sclp.endpoint.tunnels import Channel, Send
from sclp.endpoint.txerrors import TxErrors
from sclp.engine.segmenter import Pieces
from sclp.io import packet as packet_io
from sclp.io.errqueue import PENDING_ERRNOS, SendError
from sclp.io.rawip import RawIpSocket, RawReceiver, source_key
from sclp.io.rxring import RxRing
from sclp.io.txring import TxRingSender
from sclp.io.udp import UdpSocket
from sclp.logs import RateLimited
from sclp.wire.errors import DropReason, MalformedPacket
from sclp.wire.virtio_net import VNET_HDR_LEN

log = logging.getLogger("sclp")

TAP_BUDGET: Final = 64  # frames read from one TAP per wake-up
EPOLLERR: Final = select.EPOLLERR
RX_BUDGET: Final = 128  # datagrams read from one socket per wake-up
TICK: Final = 0.1  # seconds between housekeeping rounds (FDB aging, fault release)
# Per-packet problems are counted always and logged at most a few times per kind and
# window, with a summary of what was left out (sclp.logs.RateLimited); errors are rare,
# so reading the clock for them costs nothing on the paths that work.
WARNINGS: Final = RateLimited(log, interval=10.0, burst=5)


class PortReader(Protocol):
    """What the runner reads a VM port with: a :class:`~sclp.io.tap.TapDevice` or an
    :class:`~sclp.io.attach.AttachedPort` (both take the virtio-net header first)."""

    name: str

    @property
    def closed(self) -> bool: ...

    def fileno(self) -> int: ...

    def read_into(self, buf: bytearray | memoryview, offset: int = 0) -> int: ...


class UnderlaySender:
    """Puts a :class:`Send` on its channel's socket: UDP channels with one GSO send
    (``UdpSocket.send_gso`` holds the kernel's limits and fallbacks), raw channels
    with one ``sendmmsg`` (``RawIpSocket.send_strided``), or through the TX rings of
    ``tx`` for the raw channels that have them (``TxRingSender.send_strided``, which
    falls back to the raw socket per destination).  Packets the kernel did not take
    are counted by reason and peer (:class:`~sclp.endpoint.txerrors.TxErrors`: the
    ``drop_tx_*`` reasons), never raised, and so are the errors it reports later
    (:meth:`read_errors`)."""

    def __init__(
        self,
        udp: dict[Channel, tuple[UdpSocket, int]],
        raw: dict[Channel, RawIpSocket],
        counters: dict[str, int],
        tx: dict[Channel, TxRingSender] | None = None,
    ) -> None:
        self.udp = udp
        self.raw = raw
        self.counters = counters
        self.tx = tx if tx is not None else {}
        self.errors = TxErrors(counters)
        self._send: dict[Channel, Callable[[Send], None]] = {}
        self._error_sources: dict[int, UdpSocket | RawIpSocket] = {}  # by fd
        self.add_channels()

    def add_channels(self) -> None:
        """Send on every socket of :attr:`udp` and :attr:`raw` (call again after a
        channel was opened at run time)."""
        for channel, (sock, port) in self.udp.items():
            if channel not in self._send:
                self._send[channel] = self._udp_sender(sock, port)
        for channel, rsock in self.raw.items():
            if channel not in self._send:
                self._send[channel] = self._raw_sender(self.tx.get(channel, rsock))
        socks: list[UdpSocket | RawIpSocket] = [u for u, _ in self.udp.values()]
        self._error_sources = {s.fileno(): s for s in (*socks, *self.raw.values())}

    def send(self, s: Send, now: float) -> None:
        self._send[s.channel](s)

    def flush(self, now: float) -> None:
        """Called every tick: the TX rings' clock (next-hop refresh) and queue, and
        the error queues of the sockets (a socket only sent on is not watched)."""
        for ring_sender in self.tx.values():
            ring_sender.tick(now)
        self.read_errors(now)

    def read_errors(self, now: float, fd: int | None = None) -> list[SendError]:
        """Count what the error queue of socket ``fd`` (None: of every sending socket)
        holds: ICMP errors about packets that left (:mod:`sclp.io.errqueue`)."""
        found: list[SendError] = []
        sources = self._error_sources
        for sock in sources.values() if fd is None else filter(None, (sources.get(fd),)):
            if sock.fileno() < 0:
                continue
            try:
                errors = sock.read_errors()
            except OSError as exc:
                WARNINGS.warning(("errqueue", exc.errno), "reading errors: %s", exc, now=now)
                continue
            for error in errors:
                self.errors.reported(error, now)
            found += errors
        return found

    def _udp_sender(self, sock: UdpSocket, port: int) -> Callable[[Send], None]:
        def put(s: Send) -> int:
            data = s.data
            if isinstance(data, Pieces):  # an iovec: one sendmsg, no joining copy
                return sock.send_gso_pieces(data.parts, data.nbytes, s.stride, (str(s.peer), port))
            return sock.send_gso(data, s.stride, (str(s.peer), port))

        return self._counting(put, sock.fileno())

    def _raw_sender(self, sock: RawIpSocket | TxRingSender) -> Callable[[Send], None]:
        def put(s: Send) -> int:
            data = s.data
            if isinstance(data, Pieces):  # no raw channel sends these; joined if one did
                data = bytes(data)
            return sock.send_strided(data, s.stride, str(s.peer))

        return self._counting(put, sock.sock.fileno())

    def _counting(self, put: Callable[[Send], int], fd: int) -> Callable[[Send], None]:
        """``put`` returns how many packets the kernel took; count the rest."""

        def send(s: Send) -> None:
            try:
                sent = put(s)
            except OSError as exc:
                retried = self._error(exc, s, put, fd)
                if retried is None:
                    return
                sent = retried
            if sent < s.packets:
                self.counters[DropReason.TX_BUSY.counter] += s.packets - sent

        return send

    def _error(self, exc: OSError, s: Send, put: Callable[[Send], int], fd: int) -> int | None:
        """A send failed.  If an ICMP error left the socket a pending error (reported
        once, by this send, which then sent nothing), count the queued errors and send
        again, once; otherwise (or if that fails too) the packets are refused: counted
        by reason and peer.  Returns what the second send took, or None."""
        now = time.monotonic()
        pending = self.read_errors(now, fd)
        if any(e.errno == exc.errno for e in pending):
            try:
                return put(s)
            except OSError as again:
                exc = again
        self.errors.refused(str(s.peer), exc, s.packets, now)
        return None

    def close(self) -> None:
        """The sockets belong to the provisioning's clean-up stack."""


class FaultySender(UnderlaySender):
    """An :class:`UnderlaySender` whose packets pass a :class:`FaultInjector` one by
    one (dropped, damaged, duplicated or held back) instead of leaving in batches."""

    def __init__(
        self,
        udp: dict[Channel, tuple[UdpSocket, int]],
        raw: dict[Channel, RawIpSocket],
        counters: dict[str, int],
        faults: FaultInjector,
    ) -> None:
        super().__init__(udp, raw, counters)
        self.faults = faults

    def send(self, s: Send, now: float) -> None:
        if s.channel in self.udp:
            usock, port = self.udp[s.channel]
            sock, addr = usock.sock, (s.peer, port)
        else:
            sock, addr = self.raw[s.channel].sock, (s.peer, 0)
        data = s.data
        view = memoryview(bytes(data) if isinstance(data, Pieces) else data)
        for off in range(0, len(view), s.stride):
            self.faults.send(sock, view[off : off + s.stride], addr, now)

    def flush(self, now: float) -> None:
        self.faults.flush(now)
        self.read_errors(now)

    def close(self) -> None:
        self.faults.close()


class Runner:
    """Serves one :class:`DataPath` on the descriptors it is given until
    :meth:`stop` or SIGINT/SIGTERM."""

    def __init__(
        self,
        dp: DataPath,
        sender: UnderlaySender,
        clock: Callable[[], float],
        *,
        rx_batch: bool = True,
    ) -> None:
        self.dp = dp
        self.sender = sender
        self.clock = clock
        self.rx_batch = rx_batch
        self._epoll = select.epoll()
        self._handlers: dict[int, Callable[[float], None]] = {}
        self._ports: dict[str, PortReader] = {}  # by port name
        self._tap_buf = bytearray(FRAME_BUF)
        self._tap_view = memoryview(self._tap_buf)
        self._rx_view = memoryview(bytearray(FRAME_BUF))  # one-by-one reads
        self._peer_of: dict[Hashable, str] = {source_key(p): p for p in dp.peers}
        self._tick_hooks: list[Callable[[float], None]] = [WARNINGS.flush]
        self._running = False

    # -- what to watch -------------------------------------------------------------------

    def watch(self, fd: int, handler: Callable[[float], None], write: bool = False) -> None:
        self._epoll.register(fd, select.EPOLLOUT if write else select.EPOLLIN)
        self._handlers[fd] = handler

    def unwatch(self, fd: int) -> None:
        # After close (the control server closes its clients later): nothing to undo.
        if self._handlers.pop(fd, None) is not None and not self._epoll.closed:
            self._epoll.unregister(fd)

    def port_readers(self) -> list[PortReader]:
        return list(self._ports.values())

    def refresh_peers(self) -> None:
        """The data path's peers changed (SIGHUP, the cluster registry)."""
        self._peer_of = {source_key(p): p for p in self.dp.peers}

    def on_tick(self, hook: Callable[[float], None]) -> None:
        """Call ``hook(now)`` every :data:`TICK` seconds."""
        self._tick_hooks.append(hook)

    def add_port(self, port: VmPort, reader: PortReader) -> None:
        """Serve ``port`` (already in the data path) through ``reader``."""
        port.fd = reader.fileno()
        self._ports[port.name] = reader
        self.watch(port.fd, lambda now: self._on_port(port, reader, now))

    def remove_port(self, port: VmPort) -> None:
        """Stop reading ``port``; deliveries to it are counted as errors until the
        data path forgets it (the caller does that first)."""
        self._ports.pop(port.name, None)
        if port.fd >= 0:
            self.unwatch(port.fd)
        port.fd = -1

    def add_udp(self, channel: Channel, sock: UdpSocket, batch: int) -> None:
        """Watch ``sock``, whose ``recv_batch`` returns up to ``batch`` buffers; with
        ``batch`` 1 (``tuning.rx_batch`` off: the level-1 ablation) one plain read
        per datagram instead."""
        if batch == 1 and not sock.gro:
            self.watch(sock.fileno(), lambda now: self._on_udp_one(channel, sock, now))
        else:
            self.watch(sock.fileno(), lambda now: self._on_udp(channel, sock, batch, now))

    def add_raw(self, channel: Channel, sock: RawReceiver, batch: int) -> None:
        """Watch ``sock``, whose ``recv_batch`` returns up to ``batch`` packets; with
        ``batch`` 1 one plain read per packet (checksums verified by the engines), except
        from a receive ring, which has no per-packet read."""
        if batch == 1 and not isinstance(sock, RxRing):
            self.watch(sock.fileno(), lambda now: self._on_raw_one(channel, sock, now))
        else:
            self.watch(sock.fileno(), lambda now: self._on_raw(channel, sock, batch, now))

    # -- the loop ------------------------------------------------------------------------

    def run(self, install_signals: bool = True) -> None:
        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, self._on_signal)
        self._running = True
        poll = self._epoll.poll
        handlers = self._handlers
        dp = self.dp
        clock = self.clock
        next_tick = 0.0
        timeout = TICK
        while self._running:
            try:
                events = poll(timeout)
            except InterruptedError:
                continue
            now = clock()
            for fd, mask in events:
                if mask & EPOLLERR:  # an error queue to read, else raised until it is
                    self.sender.read_errors(now, fd)
                handler = handlers.get(fd)
                if handler is not None:
                    handler(now)
            if now >= next_tick:
                dp.expire(now)
                self.sender.flush(now)
                for hook in self._tick_hooks:
                    hook(now)
                next_tick = now + TICK
            else:
                due = dp.next_deadline()
                if due is not None and due <= now:
                    dp.expire(now)
            # The deadline after this round's expiry, so a past one never wakes us twice.
            due = dp.next_deadline()
            timeout = max(0.0, (next_tick if due is None else min(next_tick, due)) - now)

    def stop(self) -> None:
        self._running = False

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stop()

    def close(self) -> None:
        self._epoll.close()

    # -- handlers ------------------------------------------------------------------------

    def _on_port(self, port: VmPort, reader: PortReader, now: float) -> None:
        buf = self._tap_buf
        view = self._tap_view
        from_vm = self.dp.from_vm
        send = self.sender.send
        deliver = self._deliver
        for _ in range(TAP_BUDGET):
            try:
                size = reader.read_into(view, HEADROOM - VNET_HDR_LEN)
            except OSError as exc:  # an attached interface went down or away
                if exc.errno == errno.ENETDOWN:
                    # Reported once per going down (a guest's TAP as its QEMU exits,
                    # just before the link event detaches it); reads resume once up.
                    log.debug("port %s went down", port.name)
                    return
                WARNINGS.warning(
                    ("port", port.name, exc.errno),
                    "reading port %s failed: %s",
                    port.name,
                    exc,
                    now=now,
                )
                return
            if not size:
                return
            for out in from_vm(port, buf, size, now):
                if isinstance(out, Deliver):
                    deliver((out,))
                else:
                    send(out, now)

    def _on_udp(self, channel: Channel, sock: UdpSocket, batch: int, now: float) -> None:
        dp = self.dp
        deliver = self._deliver
        for _ in range(RX_BUDGET // batch + 1):
            views, sizes, sources, seg_sizes = sock.recv_batch()
            for i in range(len(sizes)):
                if not sizes[i]:  # an empty datagram: nothing to split into segments
                    dp.count_rx_drop(DropReason.TOO_SHORT)
                    continue
                out = dp.from_udp(channel, sources[i][0], views[i], seg_sizes[i], now)
                if out:
                    deliver(out)
            if len(sizes) < batch:
                return

    def _on_raw(
        self,
        channel: Channel,
        sock: RawReceiver,
        batch: int,
        now: float,
    ) -> None:
        dp = self.dp
        deliver = self._deliver
        peer_of = self._peer_of
        stt = channel is Channel.STT
        batched = stt or channel is Channel.SCLP
        for _ in range(RX_BUDGET // batch + 1):
            count, views, sizes, sources, offsets, sums = sock.recv_batch()
            if batched and count and -1 not in offsets:
                srcs = [peer_of.get(key) for key in sources]
                if None not in srcs:  # the usual batch: all from peers, headers good
                    if stt:
                        peers = cast("list[str]", srcs)
                        out = dp.from_stt_batch(peers, views, offsets, sizes, sums, now)
                    else:
                        out = dp.from_sclp_batch(srcs, views, offsets, sizes, sums, now)
                    if out:
                        deliver(out)
                    if count < batch:
                        return
                    continue
            strangers = 0
            for i in range(count):
                src = peer_of.get(sources[i])
                if src is None:  # counted per batch: a flood must cost as little as can be
                    strangers += 1
                    continue
                off = offsets[i]
                if off >= 0:
                    out = dp.from_ip(channel, src, views[i][off : sizes[i]], now, sums[i])
                else:  # a header the fast path could not vouch for
                    try:
                        start, end = packet_io.ipv4_payload_bounds(views[i], sizes[i])
                    except MalformedPacket as exc:
                        dp.count_rx_drop(exc.reason)
                        continue
                    out = dp.from_ip(channel, src, views[i][start:end], now, None)
                if out:
                    deliver(out)
            if strangers:
                dp.count_rx_drop(DropReason.NOT_PEER, strangers)
            if count < batch:
                return

    def _on_udp_one(self, channel: Channel, sock: UdpSocket, now: float) -> None:
        view = self._rx_view
        recv = sock.sock.recvfrom_into
        dp = self.dp
        for _ in range(RX_BUDGET):
            try:
                size, addr = recv(view)
            except BlockingIOError:
                return
            except OSError as exc:  # a pending error from an ICMP error: reported once
                if exc.errno not in PENDING_ERRNOS:
                    raise
                continue
            out = dp.from_udp(channel, addr[0], view[:size], size, now)
            if out:
                self._deliver(out)

    def _on_raw_one(self, channel: Channel, sock: RawReceiver, now: float) -> None:
        view = self._rx_view
        recv = sock.sock.recvfrom_into
        dp = self.dp
        family = sock.sock.family
        for _ in range(RX_BUDGET):
            try:
                size, addr = recv(view)
            except BlockingIOError:
                return
            except OSError as exc:  # a pending error from an ICMP error: reported once
                if exc.errno not in PENDING_ERRNOS:
                    raise
                continue
            if family == socket.AF_INET6:  # raw IPv6: no IP header, the source in addr
                out = dp.from_ip(channel, addr[0], view[:size], now, None)
            elif family == socket.AF_INET:  # raw IPv4: the kernel checked the header
                ihl = (view[0] & 0x0F) * 4 if size else 0
                if ihl < 20 or ihl > size:
                    dp.count_rx_drop(DropReason.TOO_SHORT)
                    continue
                out = dp.from_ip(channel, addr[0], view[ihl:size], now, None)
            else:  # a packet socket: nobody checked the IPv4 header
                try:
                    start, end = packet_io.ipv4_payload_bounds(view, size)
                except MalformedPacket as exc:
                    dp.count_rx_drop(exc.reason)
                    continue
                out = dp.from_ip(channel, socket.inet_ntoa(view[12:16]), view[start:end], now)
            if out:
                self._deliver(out)

    def _deliver(self, out: Sequence[Deliver]) -> None:
        """Write each frame to its VM port, counting what was delivered and what not."""
        writev = os.writev  # TapDevice.writev without its Python frame: once per frame
        for port, vnet, frame in out:
            try:
                writev(port.fd, (vnet, frame))
            except BlockingIOError:
                port.net.counters[DropReason.TAP_BUSY.counter] += 1
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # a packet socket's device queue is full
                    port.net.counters[DropReason.TAP_BUSY.counter] += 1
                    continue
                port.net.counters[DropReason.TAP_ERROR.counter] += 1
                WARNINGS.warning(
                    ("tap", port.name, exc.errno),
                    "writing a %d-byte frame to port %s (vni %d) failed: %s",
                    len(frame),
                    port.name,
                    port.vni,
                    exc,
                    now=time.monotonic(),
                )
                continue
            size = len(frame)
            counters = port.net.counters
            counters["rx_frames"] += 1
            counters["rx_bytes"] += size
            counters = port.counters
            counters["rx_frames"] += 1
            counters["rx_bytes"] += size
