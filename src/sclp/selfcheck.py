"""``sclp selfcheck``: the protocol core exercised in memory, no privileges needed.

Segments random payloads for several MTUs and both carriers, feeds the segments to a
reassembler in order, reversed, shuffled and coalesced, checks the payload comes back
exactly once, and checks a corrupted segment is counted as a bad checksum.
"""

from __future__ import annotations

import random

from sclp.engine.reassembler import Reassembler
from sclp.engine.segmenter import Segmenter
from sclp.wire.checksum import checksum_reference, internet_checksum
from sclp.wire.errors import DropReason
from sclp.wire.sclp import SCLP_PORT_VXLAN, Carrier, segment_payload_size


def _round_trip(payload: bytes, mtu: int, carrier: Carrier, order: str, rng: random.Random) -> bool:
    seg_size = segment_payload_size(mtu, 4, carrier)
    batch = Segmenter().segment_payload(payload, 50000, SCLP_PORT_VXLAN, seg_size)
    reasm = Reassembler(carrier)
    out = []
    if order == "coalesced":
        completed = reasm.add_coalesced("a", "b", batch.buffer, batch.stride, 0.0)
        out = [bytes(c.payload) for c in completed]
    else:
        segments = batch.segments()
        if order == "reversed":
            segments.reverse()
        elif order == "shuffled":
            rng.shuffle(segments)
        for seg in segments:
            done = reasm.add_segment("a", "b", seg, 0.0)
            if done is not None:
                out.append(bytes(done.payload))
    return out == [payload] and reasm.bytes_held == 0


def run_selfcheck() -> int:
    rng = random.Random(2015)
    failures = 0
    checks = 0
    for mtu in (576, 1500, 9000):
        for carrier in (Carrier.IP, Carrier.UDP):
            for order in ("in-order", "reversed", "shuffled", "coalesced"):
                payload = rng.randbytes(rng.randrange(0, 65536))
                checks += 1
                if not _round_trip(payload, mtu, carrier, order, rng):
                    failures += 1
                    print(f"FAIL round trip mtu={mtu} carrier={carrier.name} order={order}")
    # a corrupted byte in native mode is a counted bad checksum, never a delivery
    batch = Segmenter().segment_payload(rng.randbytes(5000), 50000, SCLP_PORT_VXLAN, 1468)
    seg = bytearray(batch.segments()[1])
    seg[100] ^= 0x40
    reasm = Reassembler(Carrier.IP)
    checks += 1
    delivered = reasm.add_segment("a", "b", seg, 0.0)
    if delivered is not None or reasm.drops[DropReason.BAD_CHECKSUM] != 1:
        failures += 1
        print("FAIL corrupted segment was not counted as a bad checksum")
    data = rng.randbytes(65535)
    checks += 1
    if internet_checksum(data) != checksum_reference(data):
        failures += 1
        print("FAIL fast checksum differs from the reference")
    print(f"selfcheck: {checks - failures} of {checks} checks passed")
    return 1 if failures else 0
