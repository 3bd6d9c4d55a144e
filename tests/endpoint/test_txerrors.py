"""sclp.endpoint.txerrors without sockets: refusals and reported errors counted by
reason and peer, a peer failing until five quiet seconds, the health detail."""

from __future__ import annotations

import errno

from sclp.endpoint import txerrors
from sclp.endpoint.txerrors import TxErrors, degraded, health_state, refusal_of
from sclp.io.errqueue import SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_LOCAL, SendError
from sclp.wire.errors import DropReason

PEER = "10.0.0.2"


def unreachable(code: int, err: int, peer: str = PEER) -> SendError:
    return SendError(peer, err, SO_EE_ORIGIN_ICMP, 3, code, 0, peer)


def test_refusals_by_errno() -> None:
    assert refusal_of(errno.ENOBUFS) is DropReason.TX_NEIGH
    assert refusal_of(errno.ENETUNREACH) is DropReason.TX_UNREACHABLE
    assert refusal_of(errno.ECONNREFUSED) is DropReason.TX_UNREACHABLE
    assert refusal_of(errno.EAGAIN) is DropReason.TX_BUSY
    assert refusal_of(errno.EMSGSIZE) is DropReason.TX_ERROR


def test_every_counter_is_listed_from_the_start_and_sent_excludes_refusals() -> None:
    counters: dict[str, int] = {"tx_packets": 10}
    errors = TxErrors(counters)
    assert counters["tx_errors_async"] == 0 and counters["tx_async_port_unreachable"] == 0
    assert counters["drop_tx_neigh"] == 0 and counters["drop_tx_unreachable"] == 0
    errors.refused(PEER, OSError(errno.ENOBUFS, "No buffer space available"), 3, 1.0)
    errors.refused(PEER, OSError(errno.EAGAIN, "Resource temporarily unavailable"), 2, 1.0)
    assert (counters["drop_tx_neigh"], counters["drop_tx_busy"]) == (3, 2)
    assert txerrors.sent(counters) == 5
    # a full socket buffer is not the peer's fault: counted, the peer not marked
    assert errors.peers[PEER].refused == 3


def test_reported_errors_count_by_reason_and_local_ones_are_not_counted_twice() -> None:
    counters: dict[str, int] = {}
    errors = TxErrors(counters)
    errors.reported(unreachable(3, errno.ECONNREFUSED), 1.0)
    errors.reported(unreachable(2, errno.ENOPROTOOPT, "10.0.0.3"), 1.0)
    errors.reported(SendError(PEER, errno.EMSGSIZE, SO_EE_ORIGIN_LOCAL, 0, 0, 1500, None), 1.0)
    assert counters["tx_errors_async"] == 2
    assert counters["tx_async_port_unreachable"] == 1
    assert counters["tx_async_protocol_unreachable"] == 1
    assert counters["tx_async_frag_needed"] == 0
    report = errors.report(2.0)
    assert report[PEER] == {
        "refused": 0,
        "async_errors": 1,
        "failing_since_s": 1.0,
        "last_error": "port_unreachable",
    }


def test_a_peer_fails_from_its_first_error_until_five_quiet_seconds() -> None:
    errors = TxErrors({})
    assert degraded(errors, 0.0) is None
    for now in (10.0, 11.0, 12.0, 13.5):
        errors.reported(unreachable(3, errno.ECONNREFUSED), now)
    assert errors.failing(14.0) == {PEER: (4.0, "port_unreachable")}
    detail = degraded(errors, 14.0)
    assert detail == "degraded: sends to 1 peer(s) failing: 10.0.0.2 port_unreachable for 4 s"
    assert health_state(detail) == "degraded" and health_state("loop alive") == "ok"
    assert errors.failing(18.49) and not errors.failing(18.5)
    assert degraded(errors, 18.5) is None
    errors.reported(unreachable(3, errno.ECONNREFUSED), 30.0)  # a new spell
    assert errors.failing(31.0) == {PEER: (1.0, "port_unreachable")}
