"""Micro-benchmark of the data path's per-frame cost: µs per frame, VM to underlay
(:meth:`DataPath.from_vm`) and underlay to VM (:meth:`DataPath.from_udp`), and STT's
native receive of a 64 KB frame's segments (``--stt``): one :meth:`DataPath.from_ip`
per segment against one :meth:`DataPath.from_stt_batch` per receive batch of 64
segments, the two paths the runner has taken.

Two data paths back to back in memory (no sockets): a 1,514-byte TCP frame over
VXLAN (one datagram per frame: the per-frame overhead shows most), and a 32 KB TSO
frame over VXLAN-over-SCLP in the UDP carrier (one GSO payload).  The median and the
minimum of several rounds, each round the mean of many calls (time.perf_counter); on a
shared machine the minimum is the steadier figure.  For scale and for A/B comparisons of
two trees on the same machine (alternate them), never thresholds:

    PYTHONPATH=old/src python benchmarks/datapath_frames.py
    PYTHONPATH=new/src python benchmarks/datapath_frames.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
import sys
import time
from collections.abc import Callable

from sclp.endpoint.config import parse_config
from sclp.endpoint.datapath import FRAME_BUF, HEADROOM, DataPath
from sclp.wire.virtio_net import VNET_HDR, VNET_HDR_LEN

A, B = "10.9.0.1", "10.9.0.2"
MAC_A, MAC_B = bytes.fromhex("020000000a01"), bytes.fromhex("020000000b01")


def _config(local: str, peer: str, protocol: str, carrier: str) -> str:
    return (
        f'name = "bench"\n[underlay]\nlocal = "{local}"\nmtu = 1500\n'
        f'sclp_carrier = "{carrier}"\n'
        f'[[network]]\nvni = 42\nprotocol = "{protocol}"\ntap = "t42"\npeers = ["{peer}"]\n'
    )


def _frame(payload_len: int) -> bytes:
    """Ethernet + IPv4 + TCP from A's VM to B's VM (checksums left as zero: a GSO
    frame's partial one is not verified on the way)."""
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, 1000, 77, 5 << 4, 0x18, 501, 0, 0)
    total = 20 + len(tcp) + payload_len
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        total,
        1,
        0x4000,
        64,
        6,
        0,
        b"\xc0\xa8\x09\x01",
        b"\xc0\xa8\x09\x02",
    )
    return MAC_B + MAC_A + b"\x08\x00" + ip + tcp + bytes(payload_len)


def measure(fn: Callable[[], object], number: int, rounds: int) -> tuple[float, float]:
    """Median and minimum over ``rounds`` of the mean time of ``number`` calls, µs."""
    for _ in range(max(1, number // 10)):
        fn()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - start) / number * 1e6)
    return statistics.median(samples), min(samples)


def case(
    protocol: str, carrier: str, payload_len: int, gso: int, number: int, rounds: int
) -> dict[str, tuple[float, float]]:
    a = DataPath(parse_config(_config(A, B, protocol, carrier)), 1500)
    b = DataPath(parse_config(_config(B, A, protocol, carrier)), 1500)
    port_a, port_b = a.ports["t42"], b.ports["t42"]
    frame = _frame(payload_len)
    buf = bytearray(FRAME_BUF)
    if gso:
        VNET_HDR.pack_into(buf, HEADROOM - VNET_HDR_LEN, 1, 1, 54, gso, 34, 16)
    buf[HEADROOM : HEADROOM + len(frame)] = frame
    size = VNET_HDR_LEN + len(frame)
    # B learns A's VM behind A (and A learns B's VM behind B), so sends are unicast.
    back = bytearray(FRAME_BUF)
    back[HEADROOM - VNET_HDR_LEN : HEADROOM] = buf[HEADROOM - VNET_HDR_LEN : HEADROOM]
    back[HEADROOM : HEADROOM + 14] = MAC_A + MAC_B + b"\x08\x00"
    back[HEADROOM + 14 : HEADROOM + len(frame)] = frame[14:]
    for s in b.from_vm(port_b, back, size, 0.0):
        a.from_udp(s.channel, B, memoryview(bytes(s.data)), s.stride, 0.0)  # type: ignore[union-attr]
    # Every received payload needs a packet ID of its own (a repeated one is a
    # duplicate, dropped early): as many distinct sends as one round calls, received by
    # a fresh receiver each round.
    received: list[tuple[memoryview, int]] = []
    for _ in range(number):
        (send,) = a.from_vm(port_a, buf, size, 0.0)
        received.append((memoryview(bytes(send.data)), send.stride))  # type: ignore[union-attr]
    channel = send.channel  # type: ignore[union-attr]
    receiver, next_i = b, 0
    assert b.from_udp(channel, A, *received[0], 0.0), "nothing delivered"

    def tx() -> object:
        return a.from_vm(port_a, buf, size, 1.0)

    def rx() -> object:
        nonlocal receiver, next_i
        if next_i == len(received):  # a receiver that has seen none of them
            receiver = DataPath(parse_config(_config(B, A, protocol, carrier)), 1500)
            next_i = 0
        data, stride = received[next_i]
        next_i += 1
        out = receiver.from_udp(channel, A, data, stride, 1.0)
        assert out, "nothing delivered"
        return out

    return {"from_vm_us": measure(tx, number, rounds), "from_udp_us": measure(rx, number, rounds)}


def stt_receive(frames: int, rounds: int) -> dict[str, tuple[float, float]]:
    """µs per 64 KB frame received over STT (native mode): its ~45 segments handed over
    one by one (from_ip) or in receive batches of 64 (from_stt_batch, when the tree has
    it), checksums summed by the I/O layer as the receive ring does."""
    from sclp.endpoint.tunnels import Channel
    from sclp.wire.checksum import ones_sum

    a = DataPath(parse_config(_config(A, B, "stt", "ip")), 1500)
    frame = _frame(64000 - 54)
    buf = bytearray(FRAME_BUF)
    mss = a.networks[42].vm_mtu - 40  # what the VM's TCP sends: it fits, no ICMP reply
    buf[HEADROOM : HEADROOM + len(frame)] = frame
    size = VNET_HDR_LEN + len(frame)
    packets: list[bytes] = []
    for _ in range(frames):  # every frame its own packet ID
        # As a TAP read would: the headroom, virtio-net header included, is the
        # encapsulation's to overwrite.
        VNET_HDR.pack_into(buf, HEADROOM - VNET_HDR_LEN, 1, 1, 54, mss, 34, 16)
        for send in a.from_vm(a.ports["t42"], buf, size, 0.0):
            data = bytes(send.data)  # type: ignore[union-attr]
            stride = send.stride  # type: ignore[union-attr]
            packets += [data[i : i + stride] for i in range(0, len(data), stride)]
    views = [memoryview(bytes(20) + p) for p in packets]  # after an IPv4 header
    sums = [ones_sum(p) for p in packets]
    starts, ends = [20] * len(packets), [20 + len(p) for p in packets]

    def one_by_one(b: DataPath) -> int:
        n = 0
        for view, end, l4 in zip(views, ends, sums, strict=True):
            n += len(b.from_ip(Channel.STT, A, view[20:end], 1.0, l4))
        return n

    def batched(b: DataPath) -> int:
        n = 0
        for i in range(0, len(views), 64):
            j = i + 64
            srcs = [A] * len(views[i:j])
            n += len(b.from_stt_batch(srcs, views[i:j], starts[i:j], ends[i:j], sums[i:j], 1.0))
        return n

    paths = {"from_ip_us": one_by_one}
    if hasattr(DataPath, "from_stt_batch"):
        paths["from_stt_batch_us"] = batched
    result = {}
    for name, path in paths.items():
        samples = []
        for _ in range(rounds):
            b = DataPath(parse_config(_config(B, A, "stt", "ip")), 1500)  # no finished keys
            start = time.perf_counter()
            delivered = path(b)
            samples.append((time.perf_counter() - start) / frames * 1e6)
            assert delivered == frames, (name, delivered)
        result[name] = (statistics.median(samples), min(samples))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=20000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--stt", action="store_true", help="only STT's native receive")
    args = parser.parse_args(argv)
    if args.stt:
        stt = stt_receive(max(1, args.number // 100), args.rounds)
        if args.json:
            json.dump({"stt 64 KB receive": stt}, sys.stdout, indent=2)
            print()
            return 0
        for name, (median, low) in stt.items():
            print(f"stt 64 KB receive, {name:18} median {median:8.1f}  min {low:8.1f}")
        return 0
    results = {
        # A full frame at VXLAN's VM MTU (1450): a larger one is now answered with ICMP.
        "vxlan 1464 B": case("vxlan", "ip", 1410, 0, args.number, args.rounds),
        "vxlan-sclp/udp 32 KB": case(
            "vxlan-sclp", "udp", 32000 - 54, 1448, max(1, args.number // 20), args.rounds
        ),
    }
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
        return 0
    print(f"{'µs per frame':22} {'from_vm median/min':>20} {'from_udp median/min':>20}")
    for name, r in results.items():
        (tm, tn), (rm, rn) = r["from_vm_us"], r["from_udp_us"]
        print(f"{name:22} {tm:10.2f} {tn:8.2f}  {rm:10.2f} {rn:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
