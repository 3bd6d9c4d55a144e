"""Attacks on the reassembly table from a hostile host, with the endpoint's memory
and a legitimate flow watched at the same time.

For the three transports that reassemble (SCLP native, SCLP in UDP, STT), with
``[limits] reasm_max_bytes`` set to 4 MiB:

- a flood of first segments, each of a new packet ID announcing a ~64 KB payload,
  sent with the peer's own source address (on a shared L2 underlay that is all an
  attacker needs; see hostile.py), while iperf3 runs between the VMs: the bytes held
  never exceed the cap, the endpoint's RSS grows by a bounded amount, the iperf3
  connection survives and recovers, and the table drains when the flood stops;
- the same flood from an address that is not a peer: dropped by the kernel's peer
  filter (sclp.io.nft), so the endpoint's CPU stays near idle, ``drop_not_peer``
  counts the flood and an iperf3 flow keeps most of its throughput;
- overlapping segments with conflicting bytes: the payload is discarded, never
  spliced (nothing reaches the VM, ``drop_overlap`` counts it), while a consistent
  payload sent right after is delivered.

Every test ends with the endpoint alive (process running, control socket answering).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sclp.io import netns as nsio
from sclp.lab import testbed as sclp_testbed
from sclp.lab.testbed import OVERLAY, UNDERLAY
from sclp.wire import vxlan

from ..e2e.helpers import counters, delta, link_mac, popen_in, shut_down, stop
from .hostile import (
    HOSTILE,
    RAW_SCLP,
    RAW_TCP,
    UDP_SCLP,
    Listener,
    assert_alive,
    drained,
    inner_udp_frame,
    iperf3_popen,
    iperf3_result,
    raw_sclp,
    record,
    rss_kib,
    sclp_segments,
    send_from,
    stt_segment,
    stt_segments,
    wait_for,
)

pytestmark = [pytest.mark.netns]

CAP = 4 * 1024 * 1024
FLOOD = Path(__file__).with_name("flood.py")
CASES = [("vxlan-sclp", "ip"), ("vxlan-sclp", "udp"), ("stt", "ip")]
FLOOD_MODE = {"ip": "sclp-ip", "udp": "sclp-udp"}
IPERF_SECONDS = 8
FLOOD_START = 2.0  # seconds into the iperf3 run
FLOOD_SECONDS = 4.0
# RSS may grow by the cap (payload buffers; STT counts its coverage map too) plus the
# allocator's slack and the bookkeeping beside the buffers.
RSS_SLACK_KIB = 24 * 1024


def _case_id(case: tuple[str, str]) -> str:
    protocol, carrier = case
    return f"{protocol}-{carrier}" if protocol.endswith("sclp") else protocol


@pytest.fixture(scope="module", params=CASES, ids=_case_id)
def testbed(request: pytest.FixtureRequest) -> Iterator[sclp_testbed.Testbed]:
    protocol, carrier = request.param
    limits = f"[limits]\nreasm_max_bytes = {CAP}\n"
    with sclp_testbed.Testbed(protocol, carrier=carrier, extra_config=limits) as tb:
        with nsio.NetNS(tb.hosts[1]) as ns:
            ns.add_address("ul0", f"{HOSTILE}/24")
        yield tb
        shut_down(tb)


def _flood_mode(tb: sclp_testbed.Testbed) -> str:
    return "stt" if tb.protocol == "stt" else FLOOD_MODE[tb.carrier]


def _start_flood(tb: sclp_testbed.Testbed, src: str, seconds: float, nice: int = 0) -> Any:
    niced = ["nice", "-n", str(nice)] if nice else []
    return popen_in(
        tb.hosts[1],
        [*niced, sys.executable, str(FLOOD), _flood_mode(tb), src, UNDERLAY[0], str(seconds)],
    )


def _flood_report(proc: Any) -> dict[str, Any]:
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    report: dict[str, Any] = json.loads(out)
    return report


class Watcher(threading.Thread):
    """Samples endpoint 0's RSS and reassembly counters every 0.1 s."""

    def __init__(self, tb: sclp_testbed.Testbed) -> None:
        super().__init__(daemon=True)
        self.tb = tb
        self.pid = tb.endpoints[0].pid
        self.samples: list[tuple[float, int, int, int]] = []  # t, rss KiB, held, entries
        self.errors: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                c = self.tb.stats(0)["counters"]
                rss = rss_kib(self.pid)
            except Exception as exc:  # reported by the test, not lost in the thread
                self.errors.append(repr(exc))
            else:
                held, entries = c["reasm_bytes_held"], c["reasm_entries"]
                self.samples.append((time.monotonic(), rss, held, entries))
            self._halt.wait(0.1)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


def _throughput(report: dict[str, Any], start: float, end: float) -> float:
    """Mean bits/s of the iperf3 intervals lying inside [start, end] (seconds)."""
    chosen = [
        i["sum"]
        for i in report["intervals"]
        if i["sum"]["start"] >= start - 0.01 and i["sum"]["end"] <= end + 0.01
    ]
    assert chosen, (start, end)
    return sum(i["bytes"] for i in chosen) * 8 / sum(i["seconds"] for i in chosen)


@dataclass
class FloodRun:
    sent: dict[str, Any]  # the flood script's report
    change: dict[str, int]  # endpoint 0's counters, after minus before
    samples: list[tuple[float, int, int, int]]  # Watcher samples
    rss_before_flood: int
    before_mbps: float  # iperf3 before the flood
    during_mbps: float  # iperf3 while it lasted
    after_mbps: float  # iperf3 once it stopped
    intervals_mbps: list[float]  # iperf3's 0.5 s intervals inside the flood
    drained: dict[str, Any]  # stats once the table emptied (or the last tried)


def _flood_with_iperf(tb: sclp_testbed.Testbed, src: str) -> FloodRun:
    """iperf3 VM 1 -> VM 2 for IPERF_SECONDS; the flood from ``src`` in its middle;
    endpoint 0 watched throughout."""
    before = counters(tb.stats(0))
    watcher = Watcher(tb)
    watcher.start()
    server, client = iperf3_popen(tb.vms[0], tb.vms[1], OVERLAY[1], IPERF_SECONDS)
    try:
        t0 = time.monotonic()
        time.sleep(FLOOD_START)
        rss_before_flood = rss_kib(tb.endpoints[0].pid)
        flood = _start_flood(tb, src, FLOOD_SECONDS)
        try:
            sent = _flood_report(flood)
        finally:
            stop(flood)
        flood_end = time.monotonic() - t0
    finally:
        report = iperf3_result(client, server, timeout=IPERF_SECONDS + 20)
    emptied = wait_for(lambda: tb.stats(0), drained, timeout=4.0)
    watcher.stop()
    assert not watcher.errors, watcher.errors[:3]
    stats = assert_alive(tb.endpoints[0], lambda: tb.stats(0))
    intervals = [
        i["sum"]["bits_per_second"] / 1e6
        for i in report["intervals"]
        if i["sum"]["start"] >= FLOOD_START + 0.49 and i["sum"]["end"] <= flood_end
    ]
    return FloodRun(
        sent=sent,
        change=delta(before, counters(stats)),
        samples=watcher.samples,
        rss_before_flood=rss_before_flood,
        before_mbps=_throughput(report, 0.49, FLOOD_START) / 1e6,
        during_mbps=_throughput(report, FLOOD_START + 0.49, flood_end) / 1e6,
        # Recorded only.  A loaded machine can stretch the flood towards the end of
        # the run: the last second is then what is left of "after".
        after_mbps=_throughput(report, min(flood_end + 0.5, IPERF_SECONDS - 1.0), IPERF_SECONDS)
        / 1e6,
        intervals_mbps=intervals,
        drained=emptied,
    )


def _record(name: str, tb: sclp_testbed.Testbed, run: FloodRun) -> None:
    record(
        f"{name}[{_case_id((tb.protocol, tb.carrier))}]",
        {
            "flood_sent": run.sent["sent"],
            "flood_pps": round(run.sent["sent"] / run.sent["seconds"]),
            "cap_bytes": CAP,
            "peak_reasm_bytes_held": max(s[2] for s in run.samples),
            "peak_reasm_entries": max(s[3] for s in run.samples),
            "rss_before_flood_kib": run.rss_before_flood,
            "rss_peak_kib": max(s[1] for s in run.samples),
            "iperf_before_mbps": round(run.before_mbps, 1),
            "iperf_during_mbps": round(run.during_mbps, 1),
            "iperf_after_mbps": round(run.after_mbps, 1),
            "iperf_intervals_mbps": [round(v, 1) for v in run.intervals_mbps],
            **{k: v for k, v in run.change.items() if k.startswith("drop_") and v},
        },
    )


@pytest.mark.timeout(90)
def test_first_segment_flood_keeps_memory_under_the_cap(testbed: sclp_testbed.Testbed) -> None:
    tb = testbed
    run = _flood_with_iperf(tb, UNDERLAY[1])
    _record("flood", tb, run)
    assert run.sent["sent"] > 10_000, run.sent  # the flood was a flood
    assert max(s[2] for s in run.samples) <= CAP
    assert max(s[3] for s in run.samples) <= 1024
    rss_growth = max(s[1] for s in run.samples) - run.rss_before_flood
    assert rss_growth <= CAP // 1024 + RSS_SLACK_KIB, rss_growth
    # The attacker's payloads filled the table and were evicted (the rest timed out).
    assert run.change["drop_evicted"] > 1000, run.change
    # The legitimate connection survived (iperf3 completed without error).  During the
    # flood its throughput falls far and may stall: every spoofed first segment costs
    # the endpoint a reassembly entry, the endpoint falls behind the flood and the
    # kernel drops from its socket buffer, TCP's packets among them (measured in
    # docs/security.md).  Afterwards TCP may still sit in retransmission backoff for
    # seconds, so throughput is recorded, not asserted; what must hold is that the
    # endpoint forwards again as soon as the flood stops.
    ping = tb.ping(3)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    c = run.drained["counters"]
    assert (c["reasm_bytes_held"], c["reasm_entries"]) == (0, 0), c


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _not_peer_counted(tb: sclp_testbed.Testbed, before: dict[str, int], at_least: int) -> int:
    """drop_not_peer of endpoint 0 since ``before``, once it reached ``at_least`` (the
    kernel's counter in it may be 0.5 s old) or 7 s passed."""
    stats = wait_for(
        lambda: tb.stats(0),
        lambda s: s["counters"]["drop_not_peer"] - before["drop_not_peer"] >= at_least,
        timeout=7.0,
    )
    return int(stats["counters"]["drop_not_peer"] - before["drop_not_peer"])


# The endpoint's CPU while a non-peer floods it alone, as a share of the flood's
# duration: idle housekeeping only (measured 0.000-0.005 at 70-165 kpps,
# docs/security.md): 30x headroom.
NONPEER_CPU_SHARE = 0.15
# iperf3 inside the flood windows against outside them, same run, is recorded, not
# asserted: measured 0.74-1.43 in 15 runs alone (docs/security.md) but 0.56 in a full
# suite run, because what is left is the flood's own cost on the two shared cores (the
# flooder and the kernel's receive-and-drop path, which on veth runs in the flooder's
# context), i.e. CPU share, not the endpoint.  What the design guarantees is asserted:
# the endpoint spends (almost) no CPU on the flood, the kernel counts every packet, and
# the flow keeps moving data during the flood windows.
# The flooder runs at nice 19: on this 2-core machine it stands for another host, and
# at nice 0 its own CPU (one Python process spinning on sendto) would take a third of
# the CPU the two endpoints and iperf3 share, whatever the endpoint does.
FLOODER_NICE = 19
NONPEER_IPERF_SECONDS = 17
NONPEER_FLOOD_STARTS = (2.0, 6.0, 10.0, 14.0)  # 2 s on, 2 s off
NONPEER_FLOOD_SECONDS = 2.0


def _split_intervals(
    report: dict[str, Any], windows: list[tuple[float, float]]
) -> tuple[list[float], list[float]]:
    """iperf3's interval rates in Mbit/s: those inside one of the flood ``windows``
    and those clear of all of them, leaving out the first (slow start) and the ones
    overlapping a window's edge."""
    inside: list[float] = []
    outside: list[float] = []
    for i in report["intervals"]:
        s = i["sum"]
        mbps = s["bits_per_second"] / 1e6
        if any(s["start"] >= a - 0.01 and s["end"] <= b + 0.01 for a, b in windows):
            inside.append(mbps)
        elif s["start"] >= 0.49 and all(s["end"] <= a or s["start"] >= b for a, b in windows):
            outside.append(mbps)
    assert inside and outside, (report["intervals"], windows)
    return inside, outside


@pytest.mark.timeout(120)
def test_flood_from_a_non_peer_never_reaches_the_table(testbed: sclp_testbed.Testbed) -> None:
    """The kernel's peer filter drops the flood: the endpoint's CPU stays near idle,
    drop_not_peer counts the flood (the kernel counter), and a TCP flow keeps moving
    (its throughput ratio inside/outside the floods is recorded: it depends on CPU
    share, see the comment before FLOODER_NICE)."""
    tb = testbed
    pid = tb.endpoints[0].pid
    stats = assert_alive(tb.endpoints[0], lambda: tb.stats(0))
    assert stats["peer_filter"]["kernel"], stats["peer_filter"]
    # 1. The flood alone: what it costs the endpoint.
    before = counters(stats)
    cpu0, t0 = _cpu_seconds(pid), time.monotonic()
    flood = _start_flood(tb, HOSTILE, FLOOD_SECONDS)
    try:
        alone = _flood_report(flood)
    finally:
        stop(flood)
    cpu_share = (_cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
    counted = _not_peer_counted(tb, before, alone["sent"])
    # 2. The flood (niced) on and off in turns during one iperf3 run: its 0.5 s
    # intervals inside the floods against those outside them (medians of interleaved
    # windows: the load of other processes on the two shared cores drifts over
    # seconds, and moves both alike).
    watcher = Watcher(tb)
    watcher.start()
    server, client = iperf3_popen(tb.vms[0], tb.vms[1], OVERLAY[1], NONPEER_IPERF_SECONDS)
    windows: list[tuple[float, float]] = []
    sent = seconds = 0.0
    try:
        t0 = time.monotonic()
        for start in NONPEER_FLOOD_STARTS:
            time.sleep(max(0.0, t0 + start - time.monotonic()))
            flood = _start_flood(tb, HOSTILE, NONPEER_FLOOD_SECONDS, FLOODER_NICE)
            try:
                done = _flood_report(flood)
            finally:
                stop(flood)
            end = time.monotonic() - t0
            windows.append((end - done["seconds"], end))  # when it really sent
            sent += done["sent"]
            seconds += done["seconds"]
    finally:
        report = iperf3_result(client, server, timeout=NONPEER_IPERF_SECONDS + 20)
        watcher.stop()
    samples = watcher.samples
    inside, outside = _split_intervals(report, windows)
    ratio = statistics.median(inside) / statistics.median(outside)
    record(
        f"nonpeer-flood[{_case_id((tb.protocol, tb.carrier))}]",
        {
            "flood_alone_sent": alone["sent"],
            "flood_alone_pps": round(alone["sent"] / alone["seconds"]),
            "endpoint_cpu_share": round(cpu_share, 4),
            "drop_not_peer": counted,
            "flood_during_iperf_pps": round(sent / seconds),
            "iperf_outside_median_mbps": round(statistics.median(outside), 1),
            "iperf_inside_median_mbps": round(statistics.median(inside), 1),
            "throughput_ratio": round(ratio, 3),
            "iperf_outside_mbps": [round(v, 1) for v in outside],
            "iperf_inside_mbps": [round(v, 1) for v in inside],
        },
    )
    assert alone["sent"] > 10_000, alone  # the flood was a flood
    assert cpu_share <= NONPEER_CPU_SHARE, (cpu_share, alone)
    # Every packet that reached the underlay device was dropped and counted by the
    # kernel (the sender's socket may have dropped a few: "errors").
    assert 0.95 * alone["sent"] <= counted <= alone["sent"], (counted, alone)
    assert samples and max(s[2] for s in samples) == 0  # nothing was ever held
    assert sum(inside) > 0, (ratio, inside, outside)  # not cut off by the flood


def _frame_ending_mid_segment(mac: str, tag: bytes) -> bytes:
    """A frame to VM 1's listener whose tunnel payload (VXLAN 8 bytes or STT 18 bytes
    + frame) is 300 bytes past a multiple of 400 in both cases: the last of its
    400-byte segments is long enough to be overlapped by 200 forged bytes."""
    frame = inner_udp_frame(mac, tag + bytes(1200))
    pad = (300 - (len(frame) + 8)) % 400
    frame = inner_udp_frame(mac, tag + bytes(1200 + pad))
    assert (len(frame) + 8) % 400 == 300
    return frame


def _overlap_packets(
    tb: sclp_testbed.Testbed, frame: bytes, ident: int
) -> tuple[tuple[str, int], list[bytes]]:
    """Segments of ``frame``, the last one first, then a forged segment overlapping
    it with different bytes, then the rest: a splicing reassembler would deliver a
    frame with the forged bytes in it."""
    src, dst = UNDERLAY[1], UNDERLAY[0]
    if tb.protocol == "stt":
        good = stt_segments(frame, src, dst, mss=400, ident=ident)
        total = len(frame) + 18
        last_off = (len(good) - 1) * 400
        forged_data = b"X" * 200
        forged = stt_segment(total, last_off - 100, ident, forged_data, src, dst)
        return RAW_TCP, [good[-1], forged, *good[:-1]]
    payload = vxlan.header(42) + frame
    good = sclp_segments(payload, tb.carrier, seg_size=400, ident=ident)
    last_rem = 0
    last_len = len(good[-1]) - 12
    # Covers the 100 bytes before the last segment and its first 100 bytes.
    forged = raw_sclp(ident, False, last_rem + last_len - 100, b"X" * 200, checksum=True)
    if tb.carrier == "udp":
        forged = forged[:10] + b"\0\0" + forged[12:]
    where = UDP_SCLP if tb.carrier == "udp" else RAW_SCLP
    return where, [good[-1], forged, *good[:-1]]


@pytest.mark.timeout(60)
def test_overlapping_conflicting_segments_are_discarded_not_spliced(
    testbed: sclp_testbed.Testbed,
) -> None:
    tb = testbed
    mac = link_mac(tb.vms[0], "tap0")
    attack_frame = _frame_ending_mid_segment(mac, b"attack-")
    control_frame = _frame_ending_mid_segment(mac, b"control-")
    where, attack = _overlap_packets(tb, attack_frame, ident=0x1234)
    _, control = _overlap_packets(tb, control_frame, ident=0x1235)
    control = [control[0], *control[2:]]  # the same order without the forged segment
    before = counters(tb.stats(0))
    listener = Listener(tb.vms[0], OVERLAY[0])
    try:
        send_from(tb.hosts[1], UNDERLAY[1], UNDERLAY[0], where, attack, gap=0.01)
        time.sleep(0.2)
        send_from(tb.hosts[1], UNDERLAY[1], UNDERLAY[0], where, control, gap=0.01)
        received = listener.received()
    finally:
        listener.close()
    stats = assert_alive(tb.endpoints[0], lambda: tb.stats(0))
    change = delta(before, counters(stats))
    assert received == ["control-"], (received, change)
    assert change["drop_overlap"] == 1, change
