"""Cost of looking for partial inner checksums on the VXLAN receive path: µs per datagram.

``DataPath.from_udp`` on one 1,400-byte VXLAN datagram (outer UDP payload: VXLAN
header + a 1,392-byte inner Ethernet/IPv4/TCP frame), as one call per datagram and as
a 44-datagram GRO buffer (per datagram), with the check (``Port.rx_partial_csum``, the
default for VXLAN, Geneve and NVGRE) and without it (the delivery before the check
existed).  The inner checksum is complete (what a NIC-backed kernel peer or another
of our endpoints sends: the check runs in full and answers VNET_HDR_NONE) or partial
(a kernel peer over a veth: NEEDS_CSUM).  The best of several rounds, each round the
mean of many calls (time.perf_counter), the variants taking turns; plus the check
alone (``sclp.wire.frame.l4_checksum`` on the inner frame: the parsing the
decision needs).  Figures for scale on the machine at hand, never thresholds.

    python benchmarks/partial_csum.py            # a table
    python benchmarks/partial_csum.py --json     # machine-readable
"""

from __future__ import annotations

import argparse
import json
import random
import struct
import sys
import time
from collections.abc import Callable
from functools import partial

from sclp.endpoint.config import parse_config
from sclp.endpoint.datapath import DataPath
from sclp.endpoint.tunnels import Channel
from sclp.wire import ipv4, vxlan
from sclp.wire.checksum import internet_checksum
from sclp.wire.frame import l4_checksum

DATAGRAM = 1400  # outer UDP payload
GRO_SEGMENTS = 44
LOCAL, PEER = "10.9.0.2", "10.9.0.1"
IP_A, IP_B = bytes([192, 168, 9, 1]), bytes([192, 168, 9, 2])
CONFIG = (
    f'name = "bench"\n[underlay]\nlocal = "{LOCAL}"\nmtu = 1500\n'
    f'[[network]]\nvni = 42\nprotocol = "vxlan"\ntap = "t42"\npeers = ["{PEER}"]\n'
)


def inner_frame(partial_sum: bool) -> bytes:
    """Ethernet + IPv4 + TCP filling a 1,400-byte VXLAN datagram."""
    payload = random.Random(1).randbytes(DATAGRAM - 8 - 14 - 20 - 20)
    tcp = bytearray(struct.pack("!HHIIBBHHH", 40000, 5201, 1, 1, 5 << 4, 0x18, 501, 0, 0))
    tcp += payload
    pseudo = ipv4.pseudo_header_sum(IP_A, IP_B, 6, len(tcp))
    struct.pack_into("!H", tcp, 16, pseudo if partial_sum else internet_checksum(tcp, pseudo))
    ip = ipv4.encode(ipv4.IPv4Header(IP_A, IP_B, 6, 20 + len(tcp)))
    mac_b, mac_a = bytes.fromhex("020000000b01"), bytes.fromhex("020000000a01")
    return mac_b + mac_a + b"\x08\x00" + ip + bytes(tcp)


def measure(fns: dict[str, Callable[[], object]], number: int, rounds: int) -> dict[str, float]:
    """µs per call of each of ``fns``: the best round (least disturbed by other load)
    of ``rounds``, each the mean of ``number`` calls.  The functions take turns round
    by round, so a burst of load on the machine hits them alike."""
    for fn in fns.values():  # warm up
        for _ in range(max(1, number // 10)):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(number):
                fn()
            samples[name].append((time.perf_counter() - start) / number * 1e6)
    return {name: min(s) for name, s in samples.items()}


def run(number: int, rounds: int) -> list[dict[str, object]]:
    fns: dict[str, Callable[[], object]] = {}
    cases = []
    for inner in ("complete", "partial"):
        frame = inner_frame(inner == "partial")
        datagram = vxlan.header(42) + frame
        assert len(datagram) == DATAGRAM
        one = memoryview(bytearray(datagram))
        gro = memoryview(bytearray(datagram * GRO_SEGMENTS))
        view = memoryview(frame)
        fns[f"{inner}/check alone"] = partial(l4_checksum, view, len(view))
        for check in (False, True):
            dp = DataPath(parse_config(CONFIG), 1500)
            dp.networks[42].rx_partial_csum = check
            f = dp.from_udp
            (d,) = f(Channel.VXLAN, PEER, one, DATAGRAM, 0.0)
            assert d.vnet[0] == (check and inner == "partial"), (inner, check)
            key = f"{inner}/{'on' if check else 'off'}"
            fns[key + "/single"] = partial(f, Channel.VXLAN, PEER, one, DATAGRAM, 0.0)
            fns[key + "/gro"] = partial(f, Channel.VXLAN, PEER, gro, DATAGRAM, 0.0)
            cases.append((inner, check, key))
    us = measure(fns, number, rounds)
    results: list[dict[str, object]] = []
    for inner, check, key in cases:
        results.append(
            {
                "inner_checksum": inner,
                "check": check,
                "us_per_datagram_single": round(us[key + "/single"], 3),
                "us_per_datagram_gro": round(us[key + "/gro"] / GRO_SEGMENTS, 3),
                "us_check_alone": round(us[f"{inner}/check alone"], 3) if check else 0.0,
            }
        )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--number", type=int, default=2000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=15, help="rounds (the best is kept)")
    args = parser.parse_args(argv)
    results = run(args.number, args.rounds)
    meta = {
        "datagram_bytes": DATAGRAM,
        "gro_segments": GRO_SEGMENTS,
        "python": sys.version.split()[0],
    }
    if args.json:
        print(json.dumps({"meta": meta, "results": results}, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"DataPath.from_udp, {DATAGRAM} B VXLAN datagrams (best of {args.rounds} rounds)"
    )
    table.add_column("inner checksum")
    table.add_column("partial-checksum check")
    table.add_column("µs / datagram (one per call)", justify="right")
    table.add_column(f"µs / datagram (GRO x{GRO_SEGMENTS})", justify="right")
    table.add_column("µs: l4_checksum alone", justify="right")
    for r in results:
        table.add_row(
            str(r["inner_checksum"]),
            "on" if r["check"] else "off",
            f"{r['us_per_datagram_single']:.3f}",
            f"{r['us_per_datagram_gro']:.3f}",
            f"{r['us_check_alone']:.3f}" if r["check"] else "",
        )
    Console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
