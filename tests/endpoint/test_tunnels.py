from hypothesis import given, settings
from hypothesis import strategies as st

from sclp.endpoint import tunnels
from sclp.wire import geneve, nvgre, stt, vxlan
from sclp.wire.errors import MalformedPacket

INNER = bytes(range(60))


def test_round_trips() -> None:
    assert tunnels.decapsulate("vxlan", tunnels.vxlan_header(42) + INNER)[:2] == (42, 8)
    assert tunnels.decapsulate("geneve", tunnels.geneve_header(7) + INNER) == (7, 8, 0)
    with_mss = tunnels.geneve_header(0xABCDE, mss=1448) + INNER
    assert tunnels.decapsulate("geneve-sclp", with_mss) == (0xABCDE, 16, 1448)
    assert tunnels.decapsulate("nvgre", tunnels.nvgre_header(99, 0x1FF) + INNER)[:2] == (99, 8)
    stt_hdr = stt.encode(stt.SttHeader(context_id=5, mss=1400))
    assert tunnels.decapsulate("stt", stt_hdr + INNER) == (5, 18, 1400)
    # our encodings are what the codecs expect
    assert vxlan.decode(tunnels.vxlan_header(42)).vni == 42
    assert nvgre.decode(tunnels.nvgre_header(99, 3)).flow_id == 3
    assert geneve.find_mss(geneve.decode(with_mss)) == 1448


def test_unknown_critical_geneve_option_is_dropped() -> None:
    hdr = geneve.encode(
        geneve.GeneveHeader(1, options=(geneve.GeneveOption(0x0103, 0x80, b"\0" * 4),))
    )
    try:
        tunnels.geneve_decapsulate(hdr + INNER)
    except MalformedPacket as exc:
        assert "critical" in str(exc)
    else:
        raise AssertionError("a critical option we do not know must drop the packet")


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=40), st.booleans())
def test_fast_paths_agree_with_the_codecs(data: bytes, shape: bool) -> None:
    if shape and len(data) >= 8:  # make the fast-path shapes likely
        data = bytes([0, 0, 0x65, 0x58]) + data[4:]
    try:
        fast = tunnels.geneve_decapsulate(data)[:2]
    except MalformedPacket:
        fast = None
    try:
        hdr = geneve.decode(data)
        slow = (hdr.vni, hdr.header_len)
    except MalformedPacket:
        slow = None
    if fast is not None:
        assert fast == slow
    nv = bytes([0x20, 0]) + data[2:] if shape and len(data) >= 8 else data
    try:
        fast_n = tunnels.nvgre_decapsulate(nv)[:2]
    except MalformedPacket:
        fast_n = None
    try:
        slow_n = (nvgre.decode(nv).vsid, 8)
    except MalformedPacket:
        slow_n = None
    assert fast_n == slow_n
