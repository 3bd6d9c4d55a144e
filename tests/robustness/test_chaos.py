"""Chaos under load: a byte-exact TCP transfer between the testbed's two VMs keeps
going while everything around the endpoints changes (sclp.lab.chaos): SIGHUP with
the file unchanged, a peer added and removed, a network added and removed; a second
port attached and detached twenty times; the underlay link down for a second, twice;
the receiving endpoint restarted; a burst of spoofed-peer and of non-peer packets;
and ``stats``/``show fdb``/``peers``/``ports`` queried fifty times a second.

Asserted: the transfer completes byte-exact (SHA-256 of what was sent and what
arrived); no traceback or unhandled-error line in any log; each disturbance the
endpoint logs left exactly one line; no counter went backwards (except across the
restart); the sending endpoint's RSS grew by less than 50 MB; nothing of the testbed
is left after.  The moments come from ``random.Random(seed)``: the seed is printed
and ``SCLP_CHAOS_SEED=N`` replays a run.
"""

from __future__ import annotations

import os
import random

import pytest

from sclp.lab.chaos import Chaos, ChaosTestbed, Querier, Transfer, leftovers, log_problems, rss_kib

pytestmark = [pytest.mark.netns]

WINDOW = 30.0  # seconds over which the disturbances are spread
RATE = 2_000_000  # bytes/s the transfer is paced at: it lasts the whole window
RSS_GROWTH_KIB = 50 * 1024


@pytest.mark.timeout(150)
@pytest.mark.parametrize(
    ("protocol", "carrier"),
    [("vxlan-sclp", "ip"), ("vxlan-sclp", "udp"), ("vxlan", "ip"), ("stt", "ip")],
    ids=["vxlan-sclp-ip", "vxlan-sclp-udp", "vxlan", "stt"],
)
def test_forwarding_survives_chaos_under_load(protocol: str, carrier: str) -> None:
    seed = int(os.environ.get("SCLP_CHAOS_SEED") or random.SystemRandom().randrange(1 << 32))
    lines: list[str] = []
    tb = ChaosTestbed(protocol=protocol, carrier=carrier)
    try:
        with tb:
            chaos = Chaos(tb, random.Random(seed), protocol, carrier, log=lines.append)
            schedule = chaos.plan(WINDOW)
            rss_before = rss_kib(tb.endpoints[0].pid)
            querier = Querier(tb)
            transfer = Transfer(tb, int(RATE * (WINDOW + 5)), RATE)
            try:
                querier.start()
                chaos.run(schedule)
                sent, received = transfer.wait(timeout=90)
            except AssertionError as exc:
                raise AssertionError(
                    f"{exc}; seed {seed}; received {transfer.progress[-3:]}\n" + "\n".join(lines)
                ) from None
            finally:
                querier.stop()
                transfer.close()
            rss_after = rss_kib(tb.endpoints[0].pid)
            logs = [tb.logs(0), tb.logs(1)]
        context = f"seed {seed} (SCLP_CHAOS_SEED={seed} replays it)\n" + "\n".join(lines)
        assert received == sent, context
        up = f"endpoint {tb.endpoint_name(1)} up:"
        assert logs[1].count(up) == chaos.restarts + 1, context
        for i, text in enumerate(logs):
            assert not log_problems(text), f"endpoint {i + 1}: {log_problems(text)}\n{context}"
        for event in chaos.events:
            if event.expect is not None:
                count = logs[event.endpoint].count(event.expect)
                assert count == 1, f"{event.what}: {event.expect!r} {count} times\n{context}"
        assert not querier.backwards, f"{querier.backwards[:5]}\n{context}"
        assert querier.answers > 40 * WINDOW, (querier.answers, querier.errors)
        assert rss_after - rss_before < RSS_GROWTH_KIB, (rss_before, rss_after, context)
        assert len(chaos.events) >= 8 + 2 * 20 + 2
    finally:
        tb.close()
    assert not leftovers(tb)
