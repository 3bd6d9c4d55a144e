"""sclp.io.errqueue: decoding ``struct sock_extended_err`` from control-message bytes
(pure), and what the kernel does with ``IP_RECVERR`` on the underlay sockets: ICMP
port and protocol unreachable queued with the peer and the offender, the pending
error that fails the next receive or send once, EPOLLERR until the queue is read."""

from __future__ import annotations

import errno
import select
import socket
import struct
import time
from collections.abc import Callable

import pytest

from sclp.endpoint.runner import UnderlaySender
from sclp.endpoint.tunnels import Channel, Send
from sclp.io.errqueue import (
    IP_RECVERR,
    IPV6_RECVERR,
    SO_EE_ORIGIN_ICMP,
    SO_EE_ORIGIN_ICMP6,
    SO_EE_ORIGIN_LOCAL,
    SendError,
    decode_error,
    reason_of,
)
from sclp.io.netns import NetNS
from sclp.io.rawip import IPPROTO_SCLP, RawIpSocket
from sclp.io.udp import UdpSocket

NsFactory = Callable[[], NetNS]
EE = struct.Struct("=IBBBBII")


def sockaddr_in(address: str) -> bytes:
    return struct.pack("=H", socket.AF_INET) + bytes(2) + socket.inet_aton(address) + bytes(8)


def sockaddr_in6(address: str) -> bytes:
    raw = socket.inet_pton(socket.AF_INET6, address)
    return struct.pack("=H", socket.AF_INET6) + bytes(6) + raw + bytes(4)


# -- decoding (no kernel) ------------------------------------------------------------------


def test_an_icmp_port_unreachable_decodes_with_its_offender() -> None:
    data = EE.pack(errno.ECONNREFUSED, SO_EE_ORIGIN_ICMP, 3, 3, 0, 0, 0) + sockaddr_in("10.0.0.2")
    error = decode_error([(socket.IPPROTO_IP, IP_RECVERR, data)], "10.0.0.2")
    assert error == SendError(
        "10.0.0.2", errno.ECONNREFUSED, SO_EE_ORIGIN_ICMP, 3, 3, 0, "10.0.0.2"
    )
    assert error.reason == "port_unreachable"
    assert error.describe() == "port unreachable (ICMP 3/3 from 10.0.0.2)"


def test_frag_needed_carries_the_mtu_and_a_router_as_offender() -> None:
    data = EE.pack(errno.EMSGSIZE, SO_EE_ORIGIN_ICMP, 3, 4, 0, 1400, 0) + sockaddr_in("10.9.0.1")
    error = decode_error([(socket.IPPROTO_IP, IP_RECVERR, data)], "10.0.0.2")
    assert error is not None and (error.reason, error.info) == ("frag_needed", 1400)
    assert error.describe() == "frag needed (ICMP 3/4 from 10.9.0.1, mtu 1400)"


def test_icmpv6_errors_decode_from_ipv6_recverr() -> None:
    data = EE.pack(errno.ECONNREFUSED, SO_EE_ORIGIN_ICMP6, 1, 4, 0, 0, 0) + sockaddr_in6("fd00::2")
    error = decode_error([(socket.IPPROTO_IPV6, IPV6_RECVERR, data)], "fd00::2")
    assert error is not None and (error.offender, error.reason) == ("fd00::2", "port_unreachable")


def test_a_local_error_has_no_offender_and_other_messages_are_skipped() -> None:
    local = EE.pack(errno.EMSGSIZE, SO_EE_ORIGIN_LOCAL, 0, 0, 0, 1500, 0) + bytes(16)
    error = decode_error([(socket.SOL_SOCKET, 29, b"x" * 16), (0, IP_RECVERR, local)], None)
    assert error is not None and error.offender is None and error.info == 1500
    assert error.describe() == "frag needed (EMSGSIZE, local)"
    assert decode_error([(socket.SOL_SOCKET, 29, b"x" * 16)]) is None
    assert decode_error([(0, IP_RECVERR, b"short")]) is None


@pytest.mark.parametrize(
    ("origin", "kind", "code", "err", "reason"),
    [
        (SO_EE_ORIGIN_ICMP, 3, 0, errno.ENETUNREACH, "net_unreachable"),
        (SO_EE_ORIGIN_ICMP, 3, 1, errno.EHOSTUNREACH, "host_unreachable"),
        (SO_EE_ORIGIN_ICMP, 3, 2, errno.ENOPROTOOPT, "protocol_unreachable"),
        (SO_EE_ORIGIN_ICMP, 3, 13, errno.EHOSTUNREACH, "prohibited"),
        (SO_EE_ORIGIN_ICMP, 11, 0, errno.EHOSTUNREACH, "ttl_exceeded"),
        (SO_EE_ORIGIN_ICMP, 12, 0, errno.EPROTO, "other"),
        (SO_EE_ORIGIN_ICMP6, 1, 3, errno.EHOSTUNREACH, "host_unreachable"),
        (SO_EE_ORIGIN_ICMP6, 2, 0, errno.EMSGSIZE, "frag_needed"),
        (SO_EE_ORIGIN_ICMP6, 4, 1, errno.ENOPROTOOPT, "protocol_unreachable"),
        (SO_EE_ORIGIN_LOCAL, 0, 0, errno.ENOBUFS, "other"),
    ],
)
def test_reasons(origin: int, kind: int, code: int, err: int, reason: str) -> None:
    assert reason_of(origin, kind, code, err) == reason


# -- the kernel ----------------------------------------------------------------------------


def _wait_error(sock: UdpSocket | RawIpSocket, timeout: float = 5.0) -> list[SendError]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        errors = sock.read_errors()
        if errors:
            return errors
        select.select([], [], [sock], 0.05)
    return []


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_udp_port_unreachable_is_queued_fails_the_next_receive_once_and_raises_epollerr(
    netns: NetNS,
) -> None:
    sender = UdpSocket.bind("127.0.0.1", 0, netns=netns.name)
    listener = UdpSocket.bind("127.0.0.1", 0, netns=netns.name)
    with UdpSocket.bind("127.0.0.1", 0, netns=netns.name) as closed:
        dead_port = closed.local_address[1]
    # nothing listens there now: the kernel answers port unreachable
    with sender, listener:
        poll = select.epoll()
        poll.register(sender.fileno(), select.EPOLLIN)
        assert sender.send_to(b"x" * 10, ("127.0.0.1", dead_port)) == 10
        deadline = time.monotonic() + 5
        while not poll.poll(0.05) and time.monotonic() < deadline:
            pass
        assert poll.poll(0) == [(sender.fileno(), select.EPOLLERR)]
        # A datagram waits too; the pending error fails one recvmmsg, which the
        # adapter takes as "go on": the datagram comes, the error stays queued.
        listener.send_to(b"hello", sender.local_address)
        deadline = time.monotonic() + 5
        batch = sender.recv_batch()
        while not batch.sizes and time.monotonic() < deadline:
            batch = sender.recv_batch()
        assert [bytes(v) for v in batch.views] == [b"hello"]
        (error,) = sender.read_errors()
        assert (error.peer, error.reason, error.offender) == (
            "127.0.0.1",
            "port_unreachable",
            "127.0.0.1",
        )
        assert error.errno == errno.ECONNREFUSED and error.origin == SO_EE_ORIGIN_ICMP
        assert poll.poll(0) == []  # read: EPOLLERR is gone
        # Again, without a receive in between: the pending error fails the next send
        # once (nothing sent), and reading the queue clears it.
        sender.send_to(b"y", ("127.0.0.1", dead_port))
        assert [e.reason for e in _wait_error(sender)] == ["port_unreachable"]
        assert sender.send_to(b"z", ("127.0.0.1", dead_port)) == 1
        assert [e.reason for e in _wait_error(sender)] == ["port_unreachable"]
        sender.send_to(b"w", ("127.0.0.1", dead_port))
        deadline = time.monotonic() + 5
        while not poll.poll(0.05) and time.monotonic() < deadline:
            pass
        with pytest.raises(ConnectionRefusedError):
            sender.send_to(b"lost", listener.local_address)
        assert sender.send_to(b"sent", listener.local_address) == 4
        poll.close()


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_raw_sclp_to_a_host_without_it_gets_protocol_unreachable(netns: NetNS) -> None:
    raw = RawIpSocket.open(IPPROTO_SCLP, "127.0.0.1", netns=netns.name)
    with raw:
        # Bound to 127.0.0.1, the socket does not take packets for 127.0.0.2: no one
        # there speaks protocol 234, so the kernel answers protocol unreachable.
        assert raw.send_strided(b"s" * 100, 50, "127.0.0.2") == 2
        errors = _wait_error(raw)
        assert errors and {e.reason for e in errors} == {"protocol_unreachable"}
        assert {(e.peer, e.errno) for e in errors} == {("127.0.0.2", errno.ENOPROTOOPT)}


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_the_sender_counts_an_icmp_error_and_it_costs_no_other_peer_a_packet(
    netns: NetNS,
) -> None:
    sock = UdpSocket.bind("127.0.0.1", 0, netns=netns.name)
    good = UdpSocket.bind("127.0.0.1", 0, netns=netns.name)
    port = good.local_address[1]
    counters: dict[str, int] = {}
    sender = UnderlaySender({Channel.VXLAN: (sock, port)}, {}, counters)
    with sock, good:
        # Nothing is bound to 127.0.0.2 at that port: port unreachable, queued, and a
        # pending error that would fail the next send (to anyone) once.
        sender.send(Send(Channel.VXLAN, "127.0.0.2", b"dead", 4, 1), 0.0)
        poll = select.epoll()
        poll.register(sock.fileno(), 0)  # errors only
        assert poll.poll(5.0) == [(sock.fileno(), select.EPOLLERR)]
        poll.close()
        sender.send(Send(Channel.VXLAN, "127.0.0.1", b"good", 4, 1), 0.0)
        assert select.select([good], [], [], 5.0)[0]
        assert [bytes(v) for v in good.recv_batch().views] == [b"good"]
        refused = {k: v for k, v in counters.items() if k.startswith("drop_") and v}
        assert refused == {} and counters["tx_async_port_unreachable"] == 1
        assert counters["tx_errors_async"] == 1
        assert set(sender.errors.peers) == {"127.0.0.2"}
        assert sender.errors.peers["127.0.0.2"].last == "port_unreachable"

    # No route at all: refused at once, counted as refused for that peer.
    anywhere = UdpSocket.bind("0.0.0.0", 0, netns=netns.name)  # only lo: no route out
    with anywhere:
        other = UnderlaySender({Channel.GENEVE: (anywhere, 6081)}, {}, counters)
        other.send(Send(Channel.GENEVE, "10.255.0.1", b"nowhere", 7, 1), 1.0)
    assert counters["drop_tx_unreachable"] == 1
    assert other.errors.peers["10.255.0.1"].refused == 1
    assert other.errors.peers["10.255.0.1"].last == "tx_unreachable: Network is unreachable"
