"""4K aliasing: what a 64 KiB copy costs by where its destination sits modulo 4096.

Found while building ``sclp bench``'s copy floor (:mod:`sclp.lab.bench.floor`): on the
AMD EPYC of this machine kind, a ``rep movsb`` copy (glibc's ``memcpy`` for large
sizes, and the kernel's ``copy_to_user``/``copy_from_user``) whose destination lies a
few bytes after its source modulo 4096 runs about ten times slower.  This script
shows it three ways, for scale on the machine at hand (never thresholds):

1. ``memcpy`` of 64 KiB (``memoryview`` slice assignment) over an 8 MiB buffer set,
   by ``(dst - src) mod 4096``;
2. a 60,000-byte UDP datagram over loopback, ``send`` + ``recv_into``, by the address
   of the *receive* buffer modulo 4096 (the kernel's ``copy_to_user`` is the copy);
3. where Python puts buffers, measured first, in a fresh process: a ``bytearray`` of
   about 128 KiB or more is its own ``mmap``, so its data starts 16 bytes (the malloc
   chunk header) into a page, and so does every slot of a slab of page-multiple
   slots, e.g. :class:`sclp.io._mmsg.MmsgReceiver`'s 64 × 64 KiB UDP receive slab.
   Once such a block is freed, glibc raises its mmap threshold and later large
   buffers come from the heap at any offset: where a buffer lands is left to chance
   unless it is placed on purpose.

    python benchmarks/copy_alias.py            # tables
    python benchmarks/copy_alias.py --json     # machine-readable
"""

from __future__ import annotations

import argparse
import ctypes
import json
import socket
import statistics
import time
from typing import Any

from sclp.lab.bench.floor import PAGE, _time_copies

COPY = 64 * 1024
DATAGRAM = 60_000
SKEWS = (0, 8, 16, 24, 32, 48, 64, 128, 2048, 4032, 4088)
RECV_OFFSETS = (0, 8, 16, 24, 32, 48, 64, 2048)


def _address(buf: bytearray) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


def memcpy_by_skew() -> dict[int, float]:
    """µs per 64 KiB copy, median of 3 trials, by (dst - src) mod 4096."""
    size = 64 * COPY + PAGE
    source, destination = bytearray(b"\x5a") * size, bytearray(size)
    return {
        skew: statistics.median(_time_copies(source, destination, skew, 2, 3)) * COPY / 1e3
        for skew in SKEWS
    }


def udp_by_receive_offset(rounds: int = 400) -> dict[int, float]:
    """µs per loopback UDP send + recv_into of DATAGRAM bytes, by the receive
    buffer's address mod 4096 (best of 3 rounds, thread CPU time)."""
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for sock in (tx, rx):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        rx.bind(("127.0.0.1", 0))
        tx.connect(rx.getsockname())
        payload = bytearray(b"x") * DATAGRAM
        landing = bytearray(DATAGRAM + 2 * PAGE)
        base = _address(landing)
        view = memoryview(landing)
        figures = {}
        for want in RECV_OFFSETS:
            off = (want - base) % PAGE
            dst = view[off : off + DATAGRAM]
            best = float("inf")
            for _ in range(3):
                start = time.thread_time_ns()
                for _ in range(rounds):
                    tx.send(payload)
                    rx.recv_into(dst)
                best = min(best, (time.thread_time_ns() - start) / rounds / 1e3)
            dst.release()
            figures[want] = best
        view.release()
        return figures
    finally:
        tx.close()
        rx.close()


def buffer_placement() -> dict[str, int]:
    """Address mod 4096 of some buffers as Python allocates them."""
    kept = [bytearray(n) for n in (65_536, 131_072, 4 << 20)]  # alive: no block freed
    placement = {f"bytearray({len(b)})": _address(b) % PAGE for b in kept}
    try:
        from sclp.io._mmsg import MmsgReceiver

        receiver = MmsgReceiver(64, 65_536, 0)
        placement["MmsgReceiver(64, 65536) slot 0"] = _address(receiver.slab) % PAGE
        placement["MmsgReceiver(64, 65536) slot 1"] = (_address(receiver.slab) + 65_536) % PAGE
    except (ImportError, TypeError, ValueError):
        pass
    return placement


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    placement = buffer_placement()  # first: before any large block is freed
    result: dict[str, Any] = {
        "memcpy_64k_us_by_skew": memcpy_by_skew(),
        "udp_60k_send_recv_us_by_recv_offset": udp_by_receive_offset(),
        "address_mod_4096": placement,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print("memcpy 64 KiB, µs, by (dst - src) mod 4096:")
    for skew, us in result["memcpy_64k_us_by_skew"].items():
        print(f"  {skew:5d}  {us:7.2f}")
    print(f"loopback UDP {DATAGRAM} B send + recv_into, µs, by receive buffer address mod 4096:")
    for off, us in result["udp_60k_send_recv_us_by_recv_offset"].items():
        print(f"  {off:5d}  {us:7.2f}")
    print("where buffers start, address mod 4096:")
    for what, mod in result["address_mod_4096"].items():
        print(f"  {what:34s} {mod:5d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
