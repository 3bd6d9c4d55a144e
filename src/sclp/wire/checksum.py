"""RFC 1071 Internet checksum: a NumPy fast path and a slow reference.

Strategy: the ones' complement sum is independent of byte order (RFC 1071 §2(B)),
so the fast path sums the buffer as *native* 16-bit words with NumPy into a 64-bit
accumulator, folds the carries and swaps the bytes back at the end.  Small buffers
(headers) go through ``int.from_bytes`` arithmetic, which beats NumPy's call
overhead below a few hundred bytes.  :func:`checksum_reference` is the obviously
correct word-by-word loop the fast paths are tested against.

Vocabulary: a *sum* is the folded 16-bit ones' complement sum (not complemented),
which can be combined with other sums (pseudo-headers, header + payload); the
*checksum* is its complement, the value written into a header.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

import numpy as np

Buffer = bytes | bytearray | memoryview

_NUMPY_THRESHOLD = 256  # bytes; below this int.from_bytes is faster
_LITTLE = sys.byteorder == "little"
_U32_SAFE_BYTES = 131072


def checksum_reference(data: Buffer) -> int:
    """Slow, literal RFC 1071: 16-bit big-endian words, end-around carry, complement."""
    data = bytes(data)
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _fold(value: int) -> int:
    while value > 0xFFFF:
        value = (value & 0xFFFF) + (value >> 16)
    return value


def ones_sum(data: Buffer, initial: int = 0) -> int:
    """Folded ones' complement sum of ``data`` (padded with a zero byte if odd) plus
    ``initial`` (another folded sum).  Returns a value in 0..0xFFFF."""
    n = len(data)
    if n < _NUMPY_THRESHOLD:
        value = int.from_bytes(data, "big") << (8 * (n % 2))  # pad an odd tail byte
        # 2**16 ≡ 1 (mod 0xFFFF): the value mod 0xFFFF is the word sum mod 0xFFFF.
        s = value % 0xFFFF
        if s == 0 and value:
            s = 0xFFFF  # ones' complement "negative zero": non-zero data never sums to 0
        return _fold(s + initial)
    even = n & ~1
    words = np.frombuffer(data, dtype=np.uint16, count=even // 2)
    # A 32-bit accumulator is about twice as fast as a 64-bit one and cannot overflow
    # below 65,537 words (65,536 * 0xFFFF < 2**32).
    acc = np.uint32 if even < _U32_SAFE_BYTES else np.uint64
    total = int(np.add.reduce(words, dtype=acc))
    total = _fold(total)
    if _LITTLE:
        total = ((total & 0xFF) << 8) | (total >> 8)
    if n % 2:
        total += data[n - 1] << 8
    return _fold(total + initial)


def internet_checksum(data: Buffer, initial: int = 0) -> int:
    """The RFC 1071 checksum of ``data``; ``initial`` is a folded sum to include
    (a pseudo-header's, for example)."""
    return ~ones_sum(data, initial) & 0xFFFF


def combine(sums: Iterable[int]) -> int:
    """Fold several ones' complement sums into one."""
    return _fold(sum(sums))


def rows_ones_sums(buf: Buffer, stride: int, count: int, last_len: int) -> np.ndarray:
    """Folded ones' complement sums of ``count`` consecutive rows of ``buf``.

    Row ``i`` is ``buf[i*stride : i*stride + stride]`` except the last, which is
    ``last_len`` bytes long.  Each row is summed as if it started on its own (rows of
    odd length are padded with one zero byte).  One NumPy pass for all rows: this is
    how a segmenter checksums every segment of a 64 KB payload at once.
    Returns a ``uint32`` array of ``count`` sums in host integer order (big-endian
    word semantics, like :func:`ones_sum`).
    """
    if count <= 0:
        return np.zeros(0, dtype=np.uint32)
    full = count - 1
    out = np.empty(count, dtype=np.uint32)
    if full:
        raw = np.frombuffer(buf, dtype=np.uint8, count=full * stride).reshape(full, stride)
        if stride % 2:
            padded = np.zeros((full, stride + 1), dtype=np.uint8)
            padded[:, :stride] = raw
            raw = padded
        # Host-order words, folded, then swapped into network order (the ones'
        # complement sum commutes with byte swapping): about 3x faster than summing a
        # big-endian view, which NumPy converts word by word.  A 32-bit accumulator
        # holds any segment's row; longer rows get 64 bits.
        if raw.shape[1] < _U32_SAFE_BYTES:
            sums = raw.view(np.uint16).sum(axis=1, dtype=np.uint32)
        else:
            sums = raw.view(np.uint16).sum(axis=1, dtype=np.uint64)
            sums = (sums & 0xFFFFFFFF) + (sums >> 32)
            sums = (sums & 0xFFFFFFFF) + (sums >> 32)
        sums = (sums & 0xFFFF) + (sums >> 16)
        sums = (sums & 0xFFFF) + (sums >> 16)
        if _LITTLE:
            sums = ((sums & 0xFF) << 8) | (sums >> 8)
        out[:full] = sums
    last = memoryview(buf)[full * stride : full * stride + last_len]
    out[full] = ones_sum(last)
    return out
