import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sclp.wire.checksum import (
    checksum_reference,
    combine,
    internet_checksum,
    ones_sum,
    rows_ones_sums,
)


def test_rfc1071_example() -> None:
    # RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2 (folded).
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert ones_sum(data) == 0xDDF2
    assert internet_checksum(data) == 0x220D
    assert checksum_reference(data) == 0x220D


def test_ipv4_header_example() -> None:
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert internet_checksum(header) == 0xB861


def test_all_zero_and_all_ones() -> None:
    assert internet_checksum(b"") == 0xFFFF
    assert internet_checksum(bytes(1000)) == 0xFFFF
    assert ones_sum(b"\xff" * 1000) == 0xFFFF  # negative zero, never 0 for non-zero data
    assert ones_sum(b"\xff" * 10) == 0xFFFF


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000), st.integers(0, 0xFFFF))
def test_fast_paths_match_reference(data: bytes, initial: int) -> None:
    assert internet_checksum(data) == checksum_reference(data)
    # with an initial sum: equivalent to summing a prefix word
    assert internet_checksum(data, initial) == checksum_reference(
        initial.to_bytes(2, "big") + (data + b"\0" if len(data) % 2 else data)
    )


@settings(max_examples=20, deadline=None)
@given(st.integers(60000, 65535))
def test_large_buffers_match_reference(n: int) -> None:
    data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
    assert internet_checksum(data) == checksum_reference(data)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 1500), st.integers(1, 50), st.data())
def test_rows_ones_sums(stride: int, count: int, data: st.DataObject) -> None:
    last_len = data.draw(st.integers(0, stride))
    buf = data.draw(
        st.binary(
            min_size=(count - 1) * stride + last_len, max_size=(count - 1) * stride + last_len
        )
    )
    sums = rows_ones_sums(buf, stride, count, last_len)
    for i in range(count):
        row = buf[i * stride : i * stride + (stride if i < count - 1 else last_len)]
        assert (~int(sums[i])) & 0xFFFF == checksum_reference(row)


@pytest.mark.parametrize("stride", [131071, 131072, 140001])
def test_rows_ones_sums_of_rows_too_long_for_a_32_bit_accumulator(stride: int) -> None:
    buf = (
        b"\xff" * stride
        + np.random.default_rng(stride).integers(0, 256, stride, np.uint8).tobytes()
    )
    sums = rows_ones_sums(buf, stride, 2, stride)
    for i in range(2):
        assert (~int(sums[i])) & 0xFFFF == checksum_reference(buf[i * stride : (i + 1) * stride])


def test_combine_equals_sum_of_concatenation() -> None:
    a, b = bytes(range(100)), bytes(range(50, 250))
    assert combine([ones_sum(a), ones_sum(b)]) == ones_sum(a + b)
