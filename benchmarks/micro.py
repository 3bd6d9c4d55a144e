"""Micro-benchmarks of the SCLP hot paths: µs per 64 KB payload.

One payload of 65,000 bytes at MTU 1500, IPv4, native carrier (M = 1468, 45 segments):
segmenting it (with and without checksums), reassembling it in order one segment at a
time, as one receive batch (native mode's recvmmsg), as one coalesced (GRO-style)
buffer, and shuffled; plus the Internet checksum of
64 KB, fast path versus the word-by-word reference.  Medians of several rounds, each
round the mean of many calls (time.perf_counter).  These are figures for scale on the
machine at hand, never thresholds.

    python benchmarks/micro.py            # a table
    python benchmarks/micro.py --json     # machine-readable
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable

from sclp.engine.reassembler import Reassembler
from sclp.engine.segmenter import Segmenter
from sclp.wire.checksum import checksum_reference, internet_checksum
from sclp.wire.sclp import SCLP_PORT_VXLAN, Carrier, segment_payload_size

PAYLOAD_LEN = 65_000
MTU = 1500
SRC, DST = b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02"


def measure(fn: Callable[[], object], number: int, rounds: int) -> float:
    """Median over ``rounds`` of the mean time of ``number`` calls, in µs."""
    for _ in range(max(1, number // 10)):  # warm up
        fn()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - start) / number * 1e6)
    return statistics.median(samples)


def run(number: int, rounds: int) -> list[dict[str, object]]:
    payload = random.Random(1).randbytes(PAYLOAD_LEN)
    m = segment_payload_size(MTU, 4, Carrier.IP)
    segmenter = Segmenter(ident_start=1)
    batch = segmenter.segment_payload(payload, 50000, SCLP_PORT_VXLAN, m)
    in_order = [bytes(s) for s in batch.segments()]
    shuffled = in_order[:]
    random.Random(2).shuffle(shuffled)
    coalesced = bytes(batch.buffer)
    stride = batch.stride

    reassembler = Reassembler()
    clock = [0.0]

    def tick() -> float:
        # The same payload again: step past the timeout so its key is forgotten.
        clock[0] += 2.0
        return clock[0]

    def reassemble(segments: list[bytes]) -> Callable[[], object]:
        def go() -> object:
            now = tick()
            done = None
            for seg in segments:
                done = reassembler.add_segment(SRC, DST, seg, now) or done
            assert done is not None
            return done

        return go

    # A native-mode receive batch: each segment in a slot after a 20-byte IPv4 header,
    # the sums already taken (what RawIpSocket.recv_batch hands over).
    slots = [memoryview(bytes(20) + seg) for seg in in_order]
    starts = [20] * len(slots)
    ends = [20 + len(seg) for seg in in_order]
    sums = [0xFFFF] * len(slots)
    sources = [SRC] * len(slots)

    def reassemble_batch() -> object:
        done = reassembler.add_batch(sources, DST, slots, starts, ends, sums, tick())
        assert len(done) == 1
        return done

    def reassemble_coalesced() -> object:
        done = reassembler.add_coalesced(SRC, DST, coalesced, stride, tick())
        assert len(done) == 1
        return done

    cases: list[tuple[str, Callable[[], object], int]] = [
        (
            "segment + checksum",
            lambda: segmenter.segment_payload(payload, 50000, SCLP_PORT_VXLAN, m),
            1,
        ),
        (
            "segment, no checksum (UDP carrier)",
            lambda: segmenter.segment_payload(payload, 50000, SCLP_PORT_VXLAN, m, checksum=False),
            1,
        ),
        ("reassemble in order (add_segment each)", reassemble(in_order), 1),
        ("reassemble a receive batch (add_batch)", reassemble_batch, 1),
        ("reassemble coalesced (add_coalesced whole)", reassemble_coalesced, 1),
        ("reassemble shuffled (add_segment each)", reassemble(shuffled), 1),
        ("checksum 64 KB, fast (internet_checksum)", lambda: internet_checksum(payload), 1),
        ("checksum 64 KB, reference", lambda: checksum_reference(payload), 20),
    ]
    results = []
    for name, fn, slow in cases:
        us = measure(fn, max(1, number // slow), rounds)
        results.append(
            {
                "name": name,
                "us_per_payload": round(us, 2),
                "gbit_per_s": round(PAYLOAD_LEN * 8 / (us * 1e3), 2),
            }
        )
    assert reassembler.bytes_held == 0 and not reassembler.drops
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--number", type=int, default=200, help="calls per round")
    parser.add_argument("--rounds", type=int, default=7, help="rounds (the median is kept)")
    args = parser.parse_args(argv)
    results = run(args.number, args.rounds)
    meta = {
        "payload_bytes": PAYLOAD_LEN,
        "mtu": MTU,
        "carrier": "ip",
        "segments": -(-PAYLOAD_LEN // segment_payload_size(MTU, 4, Carrier.IP)),
        "python": sys.version.split()[0],
    }
    if args.json:
        print(json.dumps({"meta": meta, "results": results}, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"SCLP micro-benchmarks: {PAYLOAD_LEN} B payload, MTU {MTU}, "
        f"{meta['segments']} segments (median of {args.rounds} rounds)"
    )
    table.add_column("operation")
    table.add_column("µs / payload", justify="right")
    table.add_column("Gbit/s (one core)", justify="right")
    for r in results:
        table.add_row(str(r["name"]), f"{r['us_per_payload']:.1f}", f"{r['gbit_per_s']:.2f}")
    Console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
