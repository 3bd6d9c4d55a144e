"""The UDP figure: the highest offered rate that loses under 1 %, found by a short
search per configuration.

Why: iperf3 at an unlimited rate (``-b 0``) floods the sending VM's TAP queue and
reports what survived 90 % loss, which measures the queue, not the tunnel.  The
question a user asks is "how fast can I send without losing packets", so:

1. **One probe at an unlimited rate.**  Losing under the limit there, the tunnel keeps
   up with everything the sending VM can produce: that is the figure.  Otherwise it
   gives the rate that arrived under overload, the first guess, and the rate the
   sender reached, the ceiling (no offer above it means anything).
2. **Search on the offered rate** (``iperf3 -u -b RATE``), starting at 95 % of the
   rate that arrived under overload.  Until a probe has lost, each passing probe
   raises the offer by half (a receiver in overload often delivers much less than it
   can at a lower offer: receive livelock; our endpoints deliver about half);
   after that, bisection: a passing probe raises the lower bound, a losing one
   lowers the upper bound, the next probe is offered half-way.  ``probes`` probes of
   ``probe_seconds`` each bound the search in time (1 + probes short iperf3 runs per
   configuration: 4 × 1 s with ``--quick``, 6 × 2 s otherwise); the result is
   within about 10 % after five probes, 25 % after three.
3. The highest rate that lost under the limit is then measured ``--repeat`` times for
   ``--duration`` seconds like TCP (those runs are the UDP figure, their loss is
   reported as measured, even if a longer run loses a little more than the probe).
   When no probe passed (a loaded machine: even a modest offer lost more than the
   limit), up to :data:`EXTRA_DOWN` more probes halve the rate, and failing those the
   lowest rate tried is measured and its loss reported as it is, the search marked
   not found: a figure with its loss, never a missing row.

:class:`RateBisection` is the pure decision (no iperf3, no clock), unit-tested; the
measuring loop lives in :mod:`.measure`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

LOSS_LIMIT_PERCENT: Final = 1.0
FIRST_GUESS: Final = 0.95  # of the rate that arrived under overload
GROWTH: Final = 1.5  # each passing probe's offer, until one loses
EXTRA_DOWN: Final = 2  # more probes, halving, while none has passed yet


@dataclass(frozen=True, slots=True)
class RateSearch:
    """How long the search may take: ``probes`` bisection probes (after the unlimited
    one) of ``probe_seconds`` each."""

    probe_seconds: int
    probes: int
    loss_limit_percent: float = LOSS_LIMIT_PERCENT

    @property
    def max_runs(self) -> int:
        """iperf3 runs of the search (the unlimited probe included), unless no probe
        passed: then up to :data:`EXTRA_DOWN` more, each at half the rate."""
        return 1 + self.probes

    def describe(self) -> str:
        return (
            f"one unlimited probe, then up to {self.probes} bisection probes of "
            f"{self.probe_seconds} s; the highest offered rate losing "
            f"< {self.loss_limit_percent:g} % is measured"
        )


QUICK_SEARCH: Final = RateSearch(probe_seconds=1, probes=3)
FULL_SEARCH: Final = RateSearch(probe_seconds=2, probes=5)


@dataclass
class RateBisection:
    """The search's state.  Rates in bit/s; ``None`` offered means unlimited.

    Feed each probe's outcome to :meth:`record`; it returns the next rate to offer,
    or ``None`` when the search is over.  :attr:`best` is then the highest offered
    rate that lost under the limit (``None`` offered: unlimited did), or ``None``
    when every probe lost more."""

    search: RateSearch
    low: float = 0.0  # highest rate known to lose under the limit
    high: float | None = None  # lowest rate known to lose more
    ceiling: float = 0.0  # the sender's rate at an unlimited offer
    probes: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None

    def record(
        self, offered_bps: float | None, sent_bps: float, received_bps: float, loss_percent: float
    ) -> float | None:
        probe = {
            "offered_gbps": offered_bps / 1e9 if offered_bps is not None else None,
            "sent_gbps": sent_bps / 1e9,
            "gbps": received_bps / 1e9,
            "loss_percent": loss_percent,
        }
        self.probes.append(probe)
        passed = loss_percent < self.search.loss_limit_percent
        if offered_bps is None:  # the unlimited probe
            if passed:
                self.best = probe
                return None
            self.ceiling = sent_bps
            guess = FIRST_GUESS * received_bps
            # A receiver that got (almost) nothing: start half-way to what was sent.
            offered = guess if guess > 0.01 * sent_bps else sent_bps / 2
        else:
            if passed:
                if offered_bps > self.low:
                    self.low = offered_bps
                    self.best = probe
            elif self.high is None or offered_bps < self.high:
                self.high = offered_bps
            budget = self.search.max_runs + (EXTRA_DOWN if self.best is None else 0)
            if len(self.probes) >= budget:
                return None
            if self.high is None:  # nothing lost yet: grow, up to the sender's rate
                if self.low >= self.ceiling:
                    return None
                offered = min(GROWTH * self.low, self.ceiling)
            else:
                offered = (self.low + self.high) / 2
        if offered < 1e6:  # below 1 Mbit/s nothing more is learnt
            return None
        return offered

    def as_json(self) -> dict[str, Any]:
        """``offered_gbps``: the rate the runs offer, the best found (None: unlimited),
        or with ``found`` false the lowest offer tried (what the caller measures)."""
        best = self.best
        if best is None:
            tried = [p["offered_gbps"] for p in self.probes if p["offered_gbps"] is not None]
            lowest = min(tried) if tried else None
        return {
            "loss_limit_percent": self.search.loss_limit_percent,
            "probe_seconds": self.search.probe_seconds,
            "max_probes": self.search.max_runs,
            "probes": self.probes,
            "found": best is not None,
            "unlimited": best is not None and best["offered_gbps"] is None,
            "offered_gbps": best["offered_gbps"] if best is not None else lowest,
        }
