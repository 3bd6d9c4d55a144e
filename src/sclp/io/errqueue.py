"""The socket error queue: errors the kernel reports after a send returned.

Why: a UDP or raw socket without ``IP_RECVERR`` hears almost nothing of what became of
its packets.  An ICMP port, protocol or host unreachable for an unconnected socket is
dropped, and, worse, ENOBUFS from the output path (a neighbour entry that cannot be
created because the table is full at ``gc_thresh3``, a device queue that dropped the
packet) is *swallowed*: ``sendmsg`` returns success and only ``Udp: SndbufErrors`` in
``/proc/net/snmp`` moves (``udp_send_skb`` and ``raw_sendmsg`` zero the error
unless ``IP_RECVERR`` is set).  With the option on (``ip(7)``, ``ipv6(7)``):

- ENOBUFS comes back from ``sendmsg``/``sendmmsg`` itself (synchronous: the packet did
  not leave);
- each ICMP error about a packet we sent is queued on the socket's error queue, read
  with ``recvmsg(MSG_ERRQUEUE)``: a ``struct sock_extended_err`` (linux/errqueue.h) in
  a ``IP_RECVERR``/``IPV6_RECVERR`` control message, the ICMP sender's address behind it
  (``SO_EE_OFFENDER``), the original destination in ``msg_name`` and the head of the
  packet as data.  The packet did leave; the peer (or a router) dropped it;
- the same ICMP error also sets the socket's pending error (``sk_err``), so the next
  ``recvmsg``/``recvmmsg``/``sendmsg`` fails *once* with that errno (ECONNREFUSED for
  port unreachable, EHOSTUNREACH, ENETUNREACH, ENOPROTOOPT for protocol unreachable,
  EMSGSIZE for fragmentation needed ...) — a send refused that way did not leave — and
  ``epoll`` reports EPOLLERR until the queue is empty.  Reading the queue clears it.

Decoding (:func:`decode_error`) is pure, so it is tested on bytes; :func:`drain` is
the one system call loop.  A packet socket (``AF_PACKET``, the TX rings) has no such
option: its errors are the synchronous ones of ``send``, and an ICMP error about a
packet a ring sent is delivered to the raw socket of the same protocol and addresses
(``raw_icmp_error``), whose queue :func:`drain` reads.
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import Final, NamedTuple

__all__ = [
    "ASYNC_ERRNOS",
    "IPV6_RECVERR",
    "IP_RECVERR",
    "MSG_ERRQUEUE",
    "PENDING_ERRNOS",
    "REASONS",
    "SendError",
    "decode_error",
    "drain",
    "enable_recverr",
    "reason_of",
]

IP_RECVERR: Final = 11  # linux/in.h
IPV6_RECVERR: Final = 25  # linux/in6.h
MSG_ERRQUEUE: Final = 0x2000
SO_EE_ORIGIN_LOCAL: Final = 1  # linux/errqueue.h
SO_EE_ORIGIN_ICMP: Final = 2
SO_EE_ORIGIN_ICMP6: Final = 3
# struct sock_extended_err: ee_errno (u32), ee_origin, ee_type, ee_code, ee_pad (u8),
# ee_info, ee_data (u32); SO_EE_OFFENDER(ee) is the sockaddr right behind it.
_EE: Final = struct.Struct("=IBBBBII")
EE_LEN: Final = _EE.size  # 16
_ANC_SPACE: Final = socket.CMSG_SPACE(EE_LEN + 28)  # the struct and a sockaddr_in6
_DATA_LEN: Final = 64  # the head of the refused packet: read, not used

# What a pending sk_err set by an ICMP error makes the next receive or send fail with
# once: "read the error queue and go on", never a failure of the socket.
ASYNC_ERRNOS: Final = frozenset(
    (
        errno.ECONNREFUSED,  # ICMP port unreachable
        errno.EHOSTUNREACH,  # host unreachable, a neighbour that did not resolve
        errno.ENETUNREACH,  # net unreachable
        errno.ENOPROTOOPT,  # protocol unreachable
        errno.EPROTO,  # parameter problem
        errno.EACCES,  # administratively prohibited (ICMPv6)
        errno.EHOSTDOWN,
        errno.ENONET,
        errno.EOPNOTSUPP,  # source route failed
    )
)

# What a receive may fail with once because of such a pending error: the same, and
# EMSGSIZE (fragmentation needed / packet too big on a socket that sets DF).
PENDING_ERRNOS: Final = ASYNC_ERRNOS | {errno.EMSGSIZE}

# ICMP (RFC 792) destination unreachable codes; ICMPv6 (RFC 4443) ones.
_ICMP_UNREACH: Final = {
    0: "net_unreachable",
    1: "host_unreachable",
    2: "protocol_unreachable",
    3: "port_unreachable",
    4: "frag_needed",
    6: "net_unreachable",  # network unknown
    7: "host_unreachable",  # host unknown
    9: "prohibited",
    10: "prohibited",
    13: "prohibited",
}
_ICMP6_UNREACH: Final = {
    0: "net_unreachable",  # no route
    1: "prohibited",
    3: "host_unreachable",  # address unreachable
    4: "port_unreachable",
    5: "prohibited",  # source address failed policy
    6: "prohibited",  # reject route
}
_ERRNO_REASON: Final = {
    errno.ECONNREFUSED: "port_unreachable",
    errno.EHOSTUNREACH: "host_unreachable",
    errno.ENETUNREACH: "net_unreachable",
    errno.ENOPROTOOPT: "protocol_unreachable",
    errno.EMSGSIZE: "frag_needed",
    errno.EACCES: "prohibited",
}

# Every reason :func:`reason_of` gives: a fixed set, so counters and metric labels are.
REASONS: Final = (
    "port_unreachable",
    "protocol_unreachable",
    "host_unreachable",
    "net_unreachable",
    "frag_needed",
    "prohibited",
    "ttl_exceeded",
    "other",
)


class SendError(NamedTuple):
    """One error from the queue.  ``peer``: the packet's destination (``msg_name``;
    None if the kernel gave none); ``errno``; ``origin`` (``SO_EE_ORIGIN_*``);
    ``icmp_type``/``icmp_code`` (0 for a local error); ``info`` (the next-hop MTU for
    fragmentation needed / packet too big); ``offender``: who sent the ICMP error
    (the peer itself, a router, or this host for a neighbour that did not resolve;
    None for a local error)."""

    peer: str | None
    errno: int
    origin: int
    icmp_type: int
    icmp_code: int
    info: int
    offender: str | None

    @property
    def reason(self) -> str:
        return reason_of(self.origin, self.icmp_type, self.icmp_code, self.errno)

    def describe(self) -> str:
        """``port unreachable (ICMP 3/3 from 10.0.0.2)``, for a log line."""
        text = self.reason.replace("_", " ")
        if self.origin == SO_EE_ORIGIN_ICMP:
            text += f" (ICMP {self.icmp_type}/{self.icmp_code}"
        elif self.origin == SO_EE_ORIGIN_ICMP6:
            text += f" (ICMPv6 {self.icmp_type}/{self.icmp_code}"
        else:
            return f"{text} ({errno.errorcode.get(self.errno, self.errno)}, local)"
        if self.offender:
            text += f" from {self.offender}"
        if self.reason == "frag_needed" and self.info:
            text += f", mtu {self.info}"
        return text + ")"


def reason_of(origin: int, icmp_type: int, icmp_code: int, err: int) -> str:
    """The counter reason of an error: one of :data:`REASONS`."""
    if origin == SO_EE_ORIGIN_ICMP:
        if icmp_type == 3:
            return _ICMP_UNREACH.get(icmp_code, "other")
        return "ttl_exceeded" if icmp_type == 11 else "other"
    if origin == SO_EE_ORIGIN_ICMP6:
        if icmp_type == 1:
            return _ICMP6_UNREACH.get(icmp_code, "other")
        if icmp_type == 2:
            return "frag_needed"  # packet too big
        if icmp_type == 3:
            return "ttl_exceeded"
        if icmp_type == 4 and icmp_code == 1:
            return "protocol_unreachable"  # unrecognised next header
        return "other"
    return _ERRNO_REASON.get(err, "other")


def _sockaddr_host(raw: bytes) -> str | None:
    """The address of a ``sockaddr_in``/``sockaddr_in6`` (family in host order, as the
    kernel writes it); None for AF_UNSPEC or anything shorter."""
    if len(raw) < 8:
        return None
    family = int.from_bytes(raw[:2], "little")
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[4:8])
    if family == socket.AF_INET6 and len(raw) >= 24:
        return socket.inet_ntop(socket.AF_INET6, raw[8:24])
    return None


def decode_error(
    ancdata: list[tuple[int, int, bytes]], peer: str | None = None
) -> SendError | None:
    """The :class:`SendError` in ``ancdata`` (what ``socket.recvmsg`` returns with
    ``MSG_ERRQUEUE``): the first ``IP_RECVERR``/``IPV6_RECVERR`` control message;
    None if there is none (a timestamp, say).  ``peer``: the destination from
    ``msg_name``."""
    for level, kind, data in ancdata:
        if not (
            (level == socket.IPPROTO_IP and kind == IP_RECVERR)
            or (level == socket.IPPROTO_IPV6 and kind == IPV6_RECVERR)
        ):
            continue
        if len(data) < EE_LEN:
            return None
        err, origin, icmp_type, icmp_code, _pad, info, _data = _EE.unpack_from(data)
        offender = None
        if origin in (SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6):
            offender = _sockaddr_host(bytes(data[EE_LEN:]))
        return SendError(peer, err, origin, icmp_type, icmp_code, info, offender)
    return None


def enable_recverr(sock: socket.socket) -> None:
    """``IP_RECVERR`` (``IPV6_RECVERR`` on AF_INET6): errors queued, ENOBUFS returned."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)


def drain(sock: socket.socket, limit: int = 256) -> list[SendError]:
    """Read up to ``limit`` errors from ``sock``'s error queue (empty list: none
    waiting).  Reading also clears the socket's pending error.  Never blocks."""
    errors: list[SendError] = []
    recvmsg = sock.recvmsg
    for _ in range(limit):
        try:
            _data, ancdata, _flags, address = recvmsg(
                _DATA_LEN, _ANC_SPACE, MSG_ERRQUEUE | socket.MSG_DONTWAIT
            )
        except (BlockingIOError, InterruptedError):
            break
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                break
            raise
        peer = address[0] if isinstance(address, tuple) and address else None
        error = decode_error(ancdata, str(peer) if peer else None)
        if error is not None:
            errors.append(error)
    return errors
