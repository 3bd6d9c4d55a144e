"""What became of the packets the kernel did not deliver: refused sends and the errors
reported later, counted by reason and per peer, and which peers are failing now.

The runner's :class:`~sclp.endpoint.runner.UnderlaySender` calls :meth:`TxErrors.
refused` when a send fails (the packets did not leave) and :meth:`TxErrors.reported`
for each error read from a socket's error queue (:mod:`sclp.io.errqueue`: an ICMP
error about a packet that did leave).  Nothing here runs for a send that works.
Time is passed in as ``now`` (the runner's clock), so this module is tested without
sockets.

A peer is *failing* from its first error after a quiet spell until
:data:`FAILING_CLEAR_S` seconds pass without another one: a peer that refuses
(ICMP port unreachable) answers each packet, rate-limited by its kernel to about one
ICMP error per second (``net.ipv4.icmp_ratelimit``), so five quiet seconds while
traffic flows mean the sends go through again.  A frame received from the peer
does not clear it: that proves its sends reach us, not ours it.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Mapping
from typing import Any, Final

from sclp.io.errqueue import REASONS, SendError
from sclp.logs import RateLimited
from sclp.wire.errors import DropReason

__all__ = [
    "ASYNC_COUNTERS",
    "FAILING_CLEAR_S",
    "REFUSALS",
    "PeerErrors",
    "TxErrors",
    "refusal_of",
]

log = logging.getLogger("sclp")

FAILING_CLEAR_S: Final = 5.0
# One line per (reason, peer) and window: a failing peer is said, not repeated.
ERROR_LOG: Final = RateLimited(log, interval=60.0, burst=1)
# The synchronous refusals: the packets did not leave this host.
REFUSALS: Final = (
    DropReason.TX_BUSY,
    DropReason.TX_ERROR,
    DropReason.TX_NEIGH,
    DropReason.TX_UNREACHABLE,
)
# The errors reported later (the packets left; a router or the peer dropped them).
ASYNC_TOTAL: Final = "tx_errors_async"
ASYNC_COUNTERS: Final = (ASYNC_TOTAL, *(f"tx_async_{reason}" for reason in REASONS))
_UNREACHABLE: Final = frozenset(
    (
        errno.ECONNREFUSED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENOPROTOOPT,
        errno.EACCES,
        errno.EHOSTDOWN,
        errno.ENONET,
    )
)


def refusal_of(err: int | None) -> DropReason:
    """The drop reason of a send that failed with ``err``: ``tx_neigh`` for ENOBUFS
    (the kernel could not create the neighbour entry — the table is full at
    ``gc_thresh3`` — or a device queue dropped the packet), ``tx_unreachable`` for
    no route / unreachable, ``tx_busy`` for EAGAIN, else ``tx_error``."""
    if err == errno.ENOBUFS:
        return DropReason.TX_NEIGH
    if err in _UNREACHABLE:
        return DropReason.TX_UNREACHABLE
    if err in (errno.EAGAIN, errno.EWOULDBLOCK):
        return DropReason.TX_BUSY
    return DropReason.TX_ERROR


class PeerErrors:
    """One underlay peer's errors: packets refused, errors reported later, since when
    it fails (``since``) and the last error (``last``, when: ``last_at``)."""

    __slots__ = ("async_errors", "last", "last_at", "refused", "since")

    def __init__(self) -> None:
        self.refused = 0
        self.async_errors = 0
        self.since: float | None = None
        self.last_at: float | None = None
        self.last: str | None = None

    def failing_since(self, now: float) -> float | None:
        """Seconds since the peer started failing; None when it is not failing."""
        if self.last_at is None or self.since is None or now - self.last_at >= FAILING_CLEAR_S:
            return None
        return max(0.0, now - self.since)

    def note(self, text: str, now: float) -> None:
        if self.last_at is None or now - self.last_at >= FAILING_CLEAR_S:
            self.since = now
        self.last_at = now
        self.last = text


class TxErrors:
    """The counters (shared with the runner's: the ``drop_tx_*`` reasons of
    :data:`REFUSALS` and :data:`ASYNC_COUNTERS`) and per-peer state."""

    def __init__(self, counters: dict[str, int]) -> None:
        self.counters = counters
        for name in (*ASYNC_COUNTERS, *(reason.counter for reason in REFUSALS)):
            counters.setdefault(name, 0)  # listed in the stats from the start
        self.peers: dict[str, PeerErrors] = {}

    def _peer(self, peer: str) -> PeerErrors:
        state = self.peers.get(peer)
        if state is None:
            if len(self.peers) >= 65_536:  # bounded: forget the quiet ones
                self.peers = {p: s for p, s in self.peers.items() if s.last_at is not None}
            state = self.peers[peer] = PeerErrors()
        return state

    def refused(self, peer: str, exc: OSError, packets: int, now: float) -> DropReason:
        """``packets`` to ``peer`` did not leave: the send failed with ``exc``."""
        reason = refusal_of(exc.errno)
        self.counters[reason.counter] += packets
        if reason is DropReason.TX_BUSY:
            return reason  # the socket buffer: not the peer's fault, not a failing peer
        state = self._peer(peer)
        state.refused += packets
        text = f"{reason.value}: {exc.strerror or exc}"
        state.note(text, now)
        ERROR_LOG.warning(
            (reason, peer),
            "underlay send to %s refused by the kernel (%s): %d packet(s) dropped "
            "(counted in drop_%s)",
            peer,
            exc.strerror or exc,
            packets,
            reason.value,
            now=now,
        )
        return reason

    def reported(self, error: SendError, now: float) -> None:
        """An error from a socket's error queue.  Local ones (``SO_EE_ORIGIN_LOCAL``,
        e.g. EMSGSIZE) repeat a send's own failure, which :meth:`refused` counted."""
        if error.origin not in (2, 3):  # SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6
            return
        reason = error.reason
        self.counters[ASYNC_TOTAL] += 1
        self.counters[f"tx_async_{reason}"] += 1
        peer = error.peer or "?"
        state = self._peer(peer)
        state.async_errors += 1
        state.note(reason, now)
        ERROR_LOG.warning(
            (reason, peer),
            "underlay packets to %s are dropped on the way: %s (counted in tx_async_%s)",
            peer,
            error.describe(),
            reason,
            now=now,
        )

    def failing(self, now: float) -> dict[str, tuple[float, str]]:
        """The failing peers: seconds since they fail and their last error."""
        out: dict[str, tuple[float, str]] = {}
        for peer, state in list(self.peers.items()):  # a copy: the health check's thread
            since = state.failing_since(now)
            if since is not None:
                out[peer] = (since, state.last or "")
        return out

    def report(self, now: float) -> dict[str, Any]:
        """The ``tx_errors`` of ``sclp stats --json``: per peer with an error, its
        counts, ``failing_since_s`` (null when it no longer fails) and ``last_error``."""
        return {
            peer: {
                "refused": state.refused,
                "async_errors": state.async_errors,
                "failing_since_s": _rounded(state.failing_since(now)),
                "last_error": state.last,
            }
            for peer, state in sorted(self.peers.items())
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def sent(counters: Mapping[str, Any]) -> int:
    """``tx_sent``: the underlay packets that left (``tx_packets`` counts every packet
    made for sending; the ``drop_tx_*`` refusals did not leave)."""
    refused: int = sum(counters.get(reason.counter, 0) for reason in REFUSALS)
    made: int = counters.get("tx_packets", 0)
    return max(0, made - refused)


DEGRADED: Final = "degraded: "


def degraded(errors: TxErrors, now: float) -> str | None:
    """The health detail while sends to some peers fail (``degraded: ...``, the
    endpoint still serves the others), None when none fails."""
    failing = sorted(errors.failing(now).items())
    if not failing:
        return None
    listed = "; ".join(f"{peer} {last} for {since:.0f} s" for peer, (since, last) in failing[:5])
    more = f" and {len(failing) - 5} more" if len(failing) > 5 else ""
    return f"{DEGRADED}sends to {len(failing)} peer(s) failing: {listed}{more}"


def health_state(detail: str) -> str:
    """``ok`` or ``degraded`` for a healthy endpoint's detail."""
    return "degraded" if detail.startswith(DEGRADED) else "ok"
