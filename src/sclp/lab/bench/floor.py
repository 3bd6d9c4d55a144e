"""The copy floor: what copying 64 KB costs on the machine the benchmark runs on.

Why: absolute Gbit/s is a property of the machine (on one machine of this kind a 64 KB
copy takes ~24 µs, on another a third of that), but how many times the endpoints touch
each byte is ours.  A frame crossing the overlay is copied at least four times by the
endpoints however fast they are: TAP read and socket send on the sending host,
socket receive and TAP write on the receiving one.  So each configuration's endpoint
CPU seconds per GB are reported as a multiple of four 64 KB copies measured in the
same run (``cpu_per_gb_vs_floor``); 1.0 would be an endpoint that does nothing but
the four copies.  It is a floor, not a target an endpoint can reach: the kernel's
own work around two of the copies (UDP GSO send and GRO receive over a veth, no
tunnel code at all) costs 2–3 times the four copies on this machine kind
(``benchmarks/socket_floor.py``), before any TAP I/O.

How the copy is measured (:func:`measure_copy_floor`), and why so:

- **64 KiB buffers**, the size of the TSO frames the endpoint moves per system call.
- **A rotating set of 64 source and 64 destination buffers (8 MiB)**: larger than a
  core's L2 cache (512 KiB here; 1–2 MiB on most server cores) but within a usual L3,
  like the endpoint's traffic: a frame's bytes were just written by another process
  (the VM's TCP stack, the kernel), so they are not in this core's L1/L2, yet they
  have not gone to DRAM either.  A single hot 64 KiB buffer would measure the L2
  bandwidth (several times faster, the "4 KB copy at 12 GB/s" often quoted) and
  flatter the floor; a set far beyond L3 would measure DRAM and flatter the endpoint.
- **``memoryview`` slice assignment**, which is one ``memcpy`` of the whole buffer
  (``rep movsb`` on current x86 CPUs, the instruction the kernel's
  ``copy_{to,from}_user`` uses too); the Python overhead per call (~0.1 µs) is a few
  per cent of a 64 KiB copy.  Pages are touched before timing, so no page fault is
  counted.
- **Destination 2 KiB away from the source modulo 4 KiB.**  On the AMD EPYC of this
  machine kind a forward ``rep movsb`` whose destination lies up to ~40 bytes *after*
  its source modulo 4096 (4K aliasing) runs about ten times slower: ~30 µs instead of
  ~3 µs for 64 KiB.  Two buffers allocated one after the other land exactly there,
  which is probably where the figure "a 64 KB copy costs ~24 µs" comes from.  The
  floor is the ordinary copy, so the offsets are chosen to avoid it; the aliased
  copy is measured too (three short trials) and reported beside it
  (``aliased_copy_us``), because an endpoint whose buffers happen to alias the
  kernel's pays that price on every copy.
- **CPU time of this thread** (``CLOCK_THREAD_CPUTIME_ID``), not wall time: the
  endpoints' figure is CPU time too (utime + stime), and on a shared 2-core machine
  wall time would also count the time another process held the core.
- **The median of 11 trials** of 8 passes over the set (32 MiB copied per trial,
  about 10 ms at 3 GB/s), measured before any testbed is built: the median drops a
  trial spoiled by an interrupt or a neighbour flushing the cache.  Well under a
  second in all.
"""

from __future__ import annotations

import ctypes
import statistics
import time
from dataclasses import dataclass
from typing import Any, Final

COPY_BYTES: Final = 64 * 1024
BUFFERS: Final = 64  # sources, and as many destinations: 2 × 4 MiB
PASSES_PER_TRIAL: Final = 8
TRIALS: Final = 11
ALIASED_TRIALS: Final = 3
COPIES_PER_FRAME: Final = 4  # TAP read + socket send, socket receive + TAP write
PAGE: Final = 4096
ORDINARY_SKEW: Final = 2048  # (destination - source) mod 4096: far from 4K aliasing
ALIASED_SKEW: Final = 16  # (destination - source) mod 4096: the slow case
GB: Final = 1e9


@dataclass(frozen=True, slots=True)
class CopyFloor:
    """One measurement: ``one_copy_s_per_gb`` is the CPU seconds to copy 1e9 bytes in
    64 KiB copies (median trial); ``trials_s_per_gb`` every trial's figure;
    ``aliased_copy_s_per_gb`` the same copies 4K-aliased (median of a few trials)."""

    one_copy_s_per_gb: float
    trials_s_per_gb: tuple[float, ...]
    aliased_copy_s_per_gb: float | None = None
    copy_bytes: int = COPY_BYTES
    buffer_set_bytes: int = 2 * BUFFERS * COPY_BYTES

    @property
    def floor_s_per_gb(self) -> float:
        """The four-copy floor: CPU seconds per GB crossing the overlay."""
        return COPIES_PER_FRAME * self.one_copy_s_per_gb

    @property
    def one_copy_us(self) -> float:
        """One 64 KiB copy, in microseconds."""
        return self._us(self.one_copy_s_per_gb)

    def _us(self, s_per_gb: float) -> float:
        return s_per_gb * self.copy_bytes / GB * 1e6

    def as_json(self) -> dict[str, Any]:
        aliased = self.aliased_copy_s_per_gb
        return {
            "floor_s_per_gb": self.floor_s_per_gb,
            "copies_per_frame": COPIES_PER_FRAME,
            "one_copy_s_per_gb": self.one_copy_s_per_gb,
            "one_copy_us": self.one_copy_us,
            "one_copy_gb_per_s": 1.0 / self.one_copy_s_per_gb,
            "aliased_copy_us": self._us(aliased) if aliased is not None else None,
            "copy_bytes": self.copy_bytes,
            "buffer_set_bytes": self.buffer_set_bytes,
            "trials_s_per_gb": list(self.trials_s_per_gb),
            "method": (
                f"median of {len(self.trials_s_per_gb)} trials, thread CPU time; each trial "
                f"{PASSES_PER_TRIAL} passes of memoryview slice copies of {self.copy_bytes} B "
                f"over {BUFFERS} source and {BUFFERS} destination buffers, "
                f"(dst - src) mod {PAGE} = {ORDINARY_SKEW} (aliased: {ALIASED_SKEW})"
            ),
        }


def _address(buf: bytearray) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


def _time_copies(
    source: bytearray, destination: bytearray, skew: int, passes: int, trials: int
) -> list[float]:
    """CPU seconds per GB of ``trials`` trials, each ``passes`` passes of BUFFERS
    64 KiB copies; sources page-aligned, destinations at ``skew`` mod 4096 from them."""
    src_off = -_address(source) % PAGE
    dst_off = (skew - _address(destination)) % PAGE
    src, dst = memoryview(source), memoryview(destination)
    pairs = [
        (
            dst[dst_off + i * COPY_BYTES : dst_off + (i + 1) * COPY_BYTES],
            src[src_off + i * COPY_BYTES : src_off + (i + 1) * COPY_BYTES],
        )
        for i in range(BUFFERS)
    ]
    try:
        for d, s in pairs:  # warm-up pass: every destination page faulted in
            d[:] = s
        copied = passes * BUFFERS * COPY_BYTES
        figures = []
        for _ in range(trials):
            start = time.thread_time_ns()
            for _ in range(passes):
                for d, s in pairs:
                    d[:] = s
            figures.append((time.thread_time_ns() - start) / 1e9 / copied * GB)
        return figures
    finally:
        for d, s in pairs:
            d.release()
            s.release()
        src.release()
        dst.release()


def measure_copy_floor(trials: int = TRIALS) -> CopyFloor:
    """Measure the cost of 64 KiB copies on this machine (see the module docstring)."""
    size = BUFFERS * COPY_BYTES + PAGE
    source = bytearray(b"\x5a") * size  # non-zero bytes, every page faulted in
    destination = bytearray(size)
    figures = _time_copies(source, destination, ORDINARY_SKEW, PASSES_PER_TRIAL, trials)
    aliased = _time_copies(source, destination, ALIASED_SKEW, 1, ALIASED_TRIALS)
    return CopyFloor(statistics.median(figures), tuple(figures), statistics.median(aliased))


def vs_floor(cpu_s_per_gb: float | None, floor_s_per_gb: float | None) -> float | None:
    """``cpu_s_per_gb`` as a multiple of the four-copy floor; None when either is
    unknown (a kernel reference has no endpoint CPU)."""
    if cpu_s_per_gb is None or not floor_s_per_gb:
        return None
    return cpu_s_per_gb / floor_s_per_gb
