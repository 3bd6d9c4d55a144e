import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sclp.wire import ethernet
from sclp.wire.errors import DropReason, MalformedPacket
from sclp.wire.ethernet import (
    ETH_HLEN,
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    ETHERTYPE_IPV6,
    ETHERTYPE_QINQ,
    ETHERTYPE_TEB,
    ETHERTYPE_VLAN,
    MAX_VLAN_TAGS,
    VLAN_TAG_LEN,
    EthernetHeader,
    is_multicast,
    mac_from_str,
    mac_to_str,
)

scapy_l2 = pytest.importorskip("scapy.layers.l2")

DST = bytes.fromhex("020000000001")
SRC = bytes.fromhex("020000000002")


def test_constants() -> None:
    assert (ETH_HLEN, VLAN_TAG_LEN) == (14, 4)
    assert (ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_ARP) == (0x0800, 0x86DD, 0x0806)
    assert (ETHERTYPE_VLAN, ETHERTYPE_QINQ, ETHERTYPE_TEB) == (0x8100, 0x88A8, 0x6558)


def test_untagged_vector() -> None:
    raw = DST + SRC + b"\x08\x00"
    h = ethernet.decode(raw + b"payload")
    assert h == EthernetHeader(DST, SRC, ETHERTYPE_IPV4)
    assert h.header_len == 14
    assert ethernet.encode(h) == raw


def test_single_tag_vector() -> None:
    raw = DST + SRC + bytes.fromhex("8100 a064 86dd")  # PCP 5, VID 100
    h = ethernet.decode(raw)
    assert h == EthernetHeader(DST, SRC, ETHERTYPE_IPV6, (0xA064,))
    assert h.header_len == 18
    assert ethernet.encode(h) == raw


def test_qinq_vector() -> None:
    raw = DST + SRC + bytes.fromhex("88a8 000a 8100 0014 0806")
    h = ethernet.decode(raw)
    assert h == EthernetHeader(DST, SRC, ETHERTYPE_ARP, (10, 20))
    assert h.header_len == 22
    assert ethernet.encode(h) == raw


def test_old_style_double_8100_normalises_tpid() -> None:
    raw = DST + SRC + bytes.fromhex("8100 000a 8100 0014 0800")
    h = ethernet.decode(raw)
    assert h.vlan_tags == (10, 20)
    assert ethernet.encode(h) == DST + SRC + bytes.fromhex("88a8 000a 8100 0014 0800")


def test_too_many_tags() -> None:
    raw = DST + SRC + bytes.fromhex("8100 0001") * (MAX_VLAN_TAGS + 1) + b"\x08\x00"
    with pytest.raises(MalformedPacket) as exc:
        ethernet.decode(raw)
    assert exc.value.reason is DropReason.MALFORMED
    ok = DST + SRC + bytes.fromhex("8100 0001") * MAX_VLAN_TAGS + b"\x08\x00"
    assert ethernet.decode(ok).vlan_tags == (1,) * MAX_VLAN_TAGS


def test_truncation_at_every_length() -> None:
    raw = DST + SRC + bytes.fromhex("88a8 000a 8100 0014 0806")
    for n in range(len(raw)):
        with pytest.raises(MalformedPacket) as exc:
            ethernet.decode(raw[:n])
        assert exc.value.reason is DropReason.TOO_SHORT


def test_encode_into_offset_and_errors() -> None:
    buf = bytearray(b"\x77" * 20)
    assert ethernet.encode_into(buf, 3, EthernetHeader(DST, SRC, 0x0800)) == 14
    assert buf[3:17] == DST + SRC + b"\x08\x00"
    assert buf[:3] == b"\x77" * 3 and buf[17:] == b"\x77" * 3
    with pytest.raises(ValueError):
        ethernet.encode_into(bytearray(17), 4, EthernetHeader(DST, SRC, 0x0800))
    with pytest.raises(ValueError):
        ethernet.encode(EthernetHeader(DST[:5], SRC, 0x0800))
    with pytest.raises(ValueError):
        ethernet.encode(EthernetHeader(DST, SRC, 0x10000))
    with pytest.raises(ValueError):
        ethernet.encode(EthernetHeader(DST, SRC, 0x0800, (0x10000,)))


def test_is_multicast() -> None:
    assert is_multicast(b"\xff" * 6)
    assert is_multicast(bytes.fromhex("01005e000001"))
    assert is_multicast(bytes.fromhex("333300000001"))
    assert not is_multicast(DST)
    assert not is_multicast(bytes.fromhex("fe0000000000"))  # locally administered unicast


def test_mac_strings() -> None:
    assert mac_from_str("02:00:00:00:00:01") == DST
    assert mac_from_str("02-00-00-00-00-01") == DST
    assert mac_from_str("2:0:0:0:0:1") == DST
    assert mac_from_str("AA:bb:CC:dd:EE:ff") == bytes.fromhex("aabbccddeeff")
    assert mac_to_str(bytes.fromhex("aabbccddeeff")) == "aa:bb:cc:dd:ee:ff"
    assert mac_to_str(memoryview(DST)) == "02:00:00:00:00:01"


@pytest.mark.parametrize(
    "text",
    ["", "02:00:00:00:00", "02:00:00:00:00:01:02", "020:00:00:00:00:01", "g2:00:00:00:00:01",
     "+2:00:00:00:00:01", " 2:00:00:00:00:01", "02::00:00:00:01"],
)  # fmt: skip
def test_mac_from_str_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        mac_from_str(text)


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=6, max_size=6))
def test_mac_string_round_trip(mac: bytes) -> None:
    assert mac_from_str(mac_to_str(mac)) == mac


headers = st.builds(
    EthernetHeader,
    dst=st.binary(min_size=6, max_size=6),
    src=st.binary(min_size=6, max_size=6),
    ethertype=st.integers(0, 0xFFFF).filter(lambda t: t not in (0x8100, 0x88A8)),
    vlan_tags=st.lists(st.integers(0, 0xFFFF), max_size=MAX_VLAN_TAGS).map(tuple),
)


@settings(max_examples=200, deadline=None)
@given(headers)
def test_round_trip(h: EthernetHeader) -> None:
    raw = ethernet.encode(h)
    assert len(raw) == h.header_len
    assert ethernet.decode(raw + b"data") == h


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_random_bytes_decode_or_malformed(data: bytes) -> None:
    try:
        h = ethernet.decode(data)
    except MalformedPacket:
        return
    assert h.header_len <= len(data)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"\x81\x00", b"\x88\xa8", b"\x08\x00", b"\x00\x05"]), max_size=12))
def test_tag_heavy_random_decode_or_malformed(words: list[bytes]) -> None:
    data = DST + SRC + b"".join(words)
    try:
        h = ethernet.decode(data)
    except MalformedPacket:
        return
    assert h.header_len <= len(data)


def test_scapy_cross_check() -> None:
    ours = ethernet.encode(EthernetHeader(DST, SRC, ETHERTYPE_IPV4, (0x2005,)))
    pkt = scapy_l2.Ether(ours + bytes(20))
    assert pkt.dst == "02:00:00:00:00:01" and pkt.src == "02:00:00:00:00:02"
    assert pkt.type == ETHERTYPE_VLAN
    dot1q = pkt[scapy_l2.Dot1Q]
    assert (dot1q.prio, dot1q.vlan, dot1q.type) == (1, 5, ETHERTYPE_IPV4)

    theirs = bytes(
        scapy_l2.Ether(dst="33:33:00:00:00:01", src="02:00:00:00:00:09", type=0x88A8)
        / scapy_l2.Dot1Q(vlan=7, type=0x8100)
        / scapy_l2.Dot1Q(vlan=8, prio=3, type=0x86DD)
    )
    h = ethernet.decode(theirs)
    assert h == EthernetHeader(
        mac_from_str("33:33:00:00:00:01"), mac_from_str("02:00:00:00:00:09"), 0x86DD,
        (7, (3 << 13) | 8),
    )  # fmt: skip
    assert is_multicast(h.dst)
    assert ethernet.encode(h) == theirs
