import pytest

from sclp.endpoint import tunnels
from sclp.wire import geneve, nvgre, stt, vxlan
from sclp.wire.errors import MalformedPacket

INNER = bytes(range(60))


def test_round_trips() -> None:
    assert tunnels.decapsulate("vxlan", vxlan.header(42) + INNER)[:2] == (42, 8)
    assert tunnels.decapsulate("geneve", geneve.header(7) + INNER) == (7, 8, 0)
    with_mss = geneve.header(0xABCDE, mss=1448) + INNER
    assert tunnels.decapsulate("geneve-sclp", with_mss) == (0xABCDE, 16, 1448)
    assert tunnels.decapsulate("nvgre", nvgre.header(99, 0x1FF) + INNER)[:2] == (99, 8)
    stt_hdr = stt.encode(stt.SttHeader(context_id=5, mss=1400))
    assert tunnels.decapsulate("stt", stt_hdr + INNER) == (5, 18, 1400)
    # our encodings are what the codecs expect
    assert vxlan.decode(vxlan.header(42)).vni == 42
    assert nvgre.decode(nvgre.header(99, 3)).flow_id == 3
    assert geneve.find_mss(geneve.decode(with_mss)) == 1448


def test_unknown_critical_geneve_option_is_dropped() -> None:
    hdr = geneve.encode(
        geneve.GeneveHeader(1, options=(geneve.GeneveOption(0x0103, 0x80, b"\0" * 4),))
    )
    try:
        geneve.frame_of(hdr + INNER)
    except MalformedPacket as exc:
        assert "critical" in str(exc)
    else:
        raise AssertionError("a critical option we do not know must drop the packet")


def test_the_tunnel_types_use_the_wire_fast_paths() -> None:
    """One definition per format: the tunnel types parse with the wire modules' receive
    fast paths (tests/wire/ holds them equal to the codecs), errors included, and write
    their headers."""
    formats = [
        (tunnels.VxlanTunnel, vxlan.frame_of, vxlan.header(42)),
        (tunnels.VxlanSclpTunnel, vxlan.frame_of, vxlan.header(42)),
        (tunnels.GeneveTunnel, geneve.frame_of, geneve.header(7)),
        (tunnels.GeneveSclpTunnel, geneve.frame_of, geneve.header(0xABCDE, mss=1448)),
        (tunnels.NvgreTunnel, nvgre.frame_of, nvgre.header(99, 0x1FF)),
    ]
    for tunnel, frame_of, header in formats:
        assert tunnel.decapsulate(header + INNER) == frame_of(header + INNER)
        with pytest.raises(MalformedPacket):
            tunnel.decapsulate(header[:3])
    underlay = tunnels.Underlay("10.0.0.1", 1500)
    assert tunnels.VxlanTunnel(42, underlay).header == vxlan.encode(vxlan.VxlanHeader(42))
    assert tunnels.GeneveTunnel(42, underlay).header == geneve.encode(geneve.GeneveHeader(42))
