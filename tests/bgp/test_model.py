"""The pure BGP EVPN model (sclp.bgp.model): encodings checked against what FRR 8.4
sent and printed (captured from its routes as ExaBGP reported them), RD/RT
derivation, MAC mobility sequence numbers, the speaker's JSON, and the received
routes' lifetime."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sclp.bgp.model import (
    ROUTE_IMET,
    ROUTE_MAC_IP,
    SCLP_MARKER_TYPE,
    Advertiser,
    Encap,
    LocalVni,
    RemoteRib,
    RemoteRoute,
    SessionEvent,
    SpeakerError,
    UpdateEvent,
    auto_rd,
    auto_rt,
    decode_message,
    encap_community,
    format_rd,
    imet_nlri,
    mac_mobility_community,
    mac_nlri,
    parse_rd,
    parse_rt,
    sclp_community,
)
from sclp.bgp.speaker import Neighbor, exabgp_config

FRR_MAC = bytes.fromhex("9e0fb18dfc5b")
# ExaBGP's JSON for what FRR 8.4 (AS 65000, router-id 10.99.0.2, VNI 42) sent.
FRR_TYPE2 = (
    '{ "exabgp": "5.0.0", "type": "update", "neighbor": { "address": { "local": '
    '"10.99.0.1", "peer": "10.99.0.2" }, "asn": { "local": 65001, "peer": 65000 }, '
    '"direction": "receive", "message": { "update": { "attribute": { "origin": "igp", '
    '"extended-community": [ { "value": 842122827661354, "string": "target:65000:42" }, '
    '{ "value": 219550481834311688, "string": "encap:VXLAN" } ] }, "announce": { '
    '"l2vpn evpn": { "10.99.0.2": [ { "code": 2, "parsed": true, "raw": '
    '"022100010A63000200020000000000000000000000000000309E0FB18DFC5B0000002A", '
    '"name": "MAC/IP advertisement", "rd": "10.99.0.2:2", "mac": "9E:0F:B1:8D:FC:5B", '
    '"label": [ [2, 42] ] } ] } } } } } }'
)
FRR_TYPE3 = (
    '{ "exabgp": "5.0.0", "type": "update", "neighbor": { "address": { "local": '
    '"10.99.0.1", "peer": "10.99.0.2" }, "message": { "update": { "attribute": { '
    '"origin": "igp", "extended-community": [ { "value": 842122827661354, "string": '
    '"target:65000:42" }, { "value": 219550481834311688, "string": "encap:VXLAN" } ], '
    '"pmsi": "pmsi:ingressreplication:0:2(42):10.99.0.2" }, "announce": { "l2vpn evpn": '
    '{ "10.99.0.2": [ { "code": 3, "parsed": true, "raw": '
    '"031100010A630002000200000000200A630002", "rd": "10.99.0.2:2", "ethernet-tag": 0, '
    '"ip": "10.99.0.2" } ] } } } } } }'
)
STATE_UP = (
    '{ "exabgp": "5.0.0", "type": "state", "neighbor": { "address": { "local": '
    '"10.99.0.1", "peer": "10.99.0.2" }, "state": "up" } }'
)


def our_vni(sclp: bool = False, rts: tuple[str, ...] = ()) -> LocalVni:
    targets = tuple(parse_rt(t) for t in rts or (auto_rt(65001, 42),))
    marker = sclp_community(False, 0) if sclp else None
    return LocalVni(42, parse_rd("10.99.0.1:1"), targets, frozenset(targets), not rts, marker)


# -- encodings -----------------------------------------------------------------------


def test_routes_and_communities_are_byte_for_byte_what_frr_sends() -> None:
    rd = parse_rd("10.99.0.2:2")
    assert imet_nlri(rd, "10.99.0.2") == bytes.fromhex("031100010A630002000200000000200A630002")
    assert mac_nlri(rd, FRR_MAC, 42) == bytes.fromhex(
        "022100010A63000200020000000000000000000000000000309E0FB18DFC5B0000002A"
    )
    assert int.from_bytes(parse_rt("65000:42")) == 842122827661354  # target:65000:42
    assert int.from_bytes(encap_community(8)) == 219550481834311688  # encap:VXLAN


def test_the_sclp_marker_and_mac_mobility_are_one_extended_community_each() -> None:
    ip, udp = sclp_community(False, 7234), sclp_community(True, 7234)
    assert len(ip) == len(udp) == 8
    assert int.from_bytes(ip[:2]) == SCLP_MARKER_TYPE == 0x8F53
    assert ip.hex() == "8f53000000010000" and udp.hex() == "8f53011c42010000"
    assert mac_mobility_community(5).hex() == "0600000000000005"


def test_rd_and_rt_are_derived_as_frr_does() -> None:
    assert auto_rd("10.0.0.1", 3) == "10.0.0.1:3"
    assert auto_rt(65001, 42) == "65001:42"
    assert auto_rt(4200000000, 0x12345) == "4200000000:9029"  # low 16 bits of the VNI
    assert parse_rt(auto_rt(4200000000, 42))[:2] == b"\x02\x02"  # 4-octet AS RT


@given(
    st.one_of(
        st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF)).map(
            lambda t: f"{t[0]}:{t[1]}"
        ),
        st.tuples(st.integers(0x10000, 0xFFFFFFFF), st.integers(0, 0xFFFF)).map(
            lambda t: f"{t[0]}:{t[1]}"
        ),
        st.tuples(st.ip_addresses(v=4), st.integers(0, 0xFFFF)).map(lambda t: f"{t[0]}:{t[1]}"),
    )
)
def test_any_rd_reads_back_as_written(text: str) -> None:
    raw = parse_rd(text)
    assert len(raw) == 8 and format_rd(raw) == text


@pytest.mark.parametrize("text", ["", "42", "x:1", "10.0.0.1:70000", "1.2.3:4", "65000:-1"])
def test_bad_rds_and_rts_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rd(text)
    with pytest.raises(ValueError):
        parse_rt(text)


# -- what the speaker says -------------------------------------------------------------


def test_frrs_routes_decode_from_exabgps_json() -> None:
    assert decode_message(STATE_UP) == SessionEvent("10.99.0.2", True)
    two = decode_message(FRR_TYPE2)
    assert isinstance(two, UpdateEvent) and two.neighbor == "10.99.0.2"
    (route,) = two.announced
    assert route.kind == ROUTE_MAC_IP and route.mac == FRR_MAC and route.label_vni == 42
    assert route.vtep == "10.99.0.2" and route.encaps == {8} and not route.sclp
    assert route.rts == {parse_rt("65000:42")} and route.seq == 0
    three = decode_message(FRR_TYPE3)
    assert isinstance(three, UpdateEvent)
    (imet,) = three.announced
    assert imet.kind == ROUTE_IMET and imet.vtep == "10.99.0.2" and imet.label_vni == 42
    assert imet.encap is Encap.VXLAN


def test_withdrawals_answers_and_other_messages() -> None:
    msg = json.loads(FRR_TYPE2)
    update = msg["neighbor"]["message"]["update"]
    update["withdraw"] = {"l2vpn evpn": update.pop("announce")["l2vpn evpn"]["10.99.0.2"]}
    event = decode_message(json.dumps(msg))
    assert isinstance(event, UpdateEvent) and not event.announced
    assert event.withdrawn == ((ROUTE_MAC_IP, parse_rd("10.99.0.2:2"), FRR_MAC),)
    assert decode_message("done") is None and decode_message("error") is None
    down = json.loads(STATE_UP)
    down["neighbor"]["state"] = "down"
    assert decode_message(json.dumps(down)) == SessionEvent("10.99.0.2", False)
    down["neighbor"]["state"] = "connected"
    assert decode_message(json.dumps(down)) is None
    assert decode_message('{"type": "notification", "notification": "shutdown"}') is None
    with pytest.raises(SpeakerError):
        decode_message("not json {")


# -- advertising ------------------------------------------------------------------------


def replay(commands: list[str], held: set[str]) -> set[str]:
    """What a speaker holds after ``commands`` (NLRIs in hex)."""
    for command in commands:
        verb, _evpn, nlri, *_ = command.split()
        (held.add if verb == "announce" else held.discard)(nlri)
    return held


def test_the_advertiser_announces_withdraws_and_stays_quiet_when_nothing_changed() -> None:
    net, mac = our_vni(sclp=True), bytes.fromhex("020000000001")
    adv = Advertiser("10.99.0.1")
    first = adv.update([net], {42: [mac]}, {})
    assert len(first) == 2 and all(c.startswith("announce evpn ") for c in first)
    imet = next(c for c in first if c.split()[2].startswith("03"))
    assert "8f53000000010000" in imet and "22:192:000600002a0a630001" in imet
    assert adv.update([net], {42: [mac]}, {}) == []
    gone = adv.update([net], {42: []}, {})
    assert gone == [f"withdraw evpn {mac_nlri(net.rd, mac, 42).hex()} next-hop 10.99.0.1"]


def test_a_mac_that_moved_here_beats_the_sequence_number_it_had_elsewhere() -> None:
    net, mac = our_vni(), bytes.fromhex("020000000001")
    adv = Advertiser("10.99.0.1")
    (imet, route) = adv.update([net], {42: [mac]}, {(42, mac): 3})
    assert adv.sequence(42, mac) == 4 and mac_mobility_community(4).hex() in route
    assert "0600" not in imet.split("attributes")[1][:40]
    # It stays here: the number stays.  It went away and came back after another
    # VTEP advertised 9: 10.
    assert adv.update([net], {42: [mac]}, {(42, mac): 3}) == []
    adv.update([net], {42: []}, {(42, mac): 9})
    adv.update([net], {42: [mac]}, {(42, mac): 9})
    assert adv.sequence(42, mac) == 10
    # Still local here, but another VTEP advertises a higher number: it moved there.
    # Withdrawn, and superseded (the caller forgets the stale local entry).
    withdrawn = adv.update([net], {42: [mac]}, {(42, mac): 11})
    assert withdrawn == [f"withdraw evpn {mac_nlri(net.rd, mac, 42).hex()} next-hop 10.99.0.1"]
    assert adv.superseded == {(42, mac)}
    assert adv.update([net], {42: []}, {(42, mac): 11}) == [] and not adv.superseded
    # First seen here, nobody else had it: no MAC mobility community (sequence 0).
    other = bytes.fromhex("020000000002")
    adv.update([net], {42: [mac, other]}, {})
    assert adv.sequence(42, other) == 0


@given(st.lists(st.frozensets(st.integers(0, 15), max_size=6), min_size=1, max_size=12))
def test_the_commands_always_leave_the_speaker_holding_exactly_what_is_wanted(
    steps: list[frozenset[int]],
) -> None:
    net = our_vni()
    adv = Advertiser("10.99.0.1")
    held: set[str] = set()
    for step in steps:
        macs = [bytes([2, 0, 0, 0, 0, i]) for i in step]
        replay(adv.update([net], {42: macs}, {}), held)
        want = {imet_nlri(net.rd, "10.99.0.1").hex()} | {
            mac_nlri(net.rd, m, 42).hex() for m in macs
        }
        assert held == want


# -- received routes ------------------------------------------------------------------


def imet_from(vtep: str, sclp: bool = False, rt: str = "65000:42") -> RemoteRoute:
    return RemoteRoute(
        ROUTE_IMET,
        parse_rd(f"{vtep}:2"),
        vtep,
        42,
        None,
        frozenset({parse_rt(rt)}),
        frozenset({8}),
        sclp,
    )


def mac_from(vtep: str, mac: bytes, seq: int = 0) -> RemoteRoute:
    rt = frozenset({parse_rt("65000:42")})
    return RemoteRoute(
        ROUTE_MAC_IP, parse_rd(f"{vtep}:2"), vtep, 42, mac, rt, frozenset({8}), False, seq
    )


def test_a_lost_neighbors_routes_stay_for_the_hold_time_then_go() -> None:
    rib = RemoteRib(3.0, "10.99.0.1")
    rib.apply(SessionEvent("10.99.0.2", True), 0.0)
    assert rib.apply(
        UpdateEvent("10.99.0.2", (imet_from("10.99.0.2"), mac_from("10.99.0.2", FRR_MAC))), 0.0
    )
    rib.apply(SessionEvent("10.99.0.2", False), 10.0)
    assert rib.next_deadline() == 13.0
    assert rib.expire(12.9) == [] and rib.route_count("10.99.0.2") == 2
    assert rib.expire(13.0) == ["10.99.0.2"] and rib.route_count("10.99.0.2") == 0
    assert rib.view([our_vni()]).peers == {42: {}}


def test_a_neighbor_back_within_the_hold_time_keeps_its_routes() -> None:
    rib = RemoteRib(3.0, "10.99.0.1")
    rib.apply(SessionEvent("n", True), 0.0)
    rib.apply(UpdateEvent("n", (imet_from("10.99.0.2"),)), 0.0)
    rib.apply(SessionEvent("n", False), 1.0)
    rib.apply(SessionEvent("n", True), 2.0)
    rib.apply(UpdateEvent("n", (imet_from("10.99.0.2"),)), 2.1)  # it sends it again
    assert rib.expire(100.0) == [] and rib.route_count("n") == 1


def test_the_view_imports_by_route_target_and_picks_the_encapsulation_per_vtep() -> None:
    rib = RemoteRib(3.0, "10.99.0.1")
    routes = (
        imet_from("10.0.0.2"),  # FRR, AS 65000, auto RT: imported (AS ignored)
        imet_from("10.0.0.3", sclp=True, rt="65002:42"),  # one of ours
        imet_from("10.0.0.4", rt="65000:43"),  # another VNI
        imet_from("10.99.0.1", sclp=True),  # our own, reflected back
        mac_from("10.0.0.2", FRR_MAC, seq=1),
        mac_from("10.0.0.3", FRR_MAC, seq=2),  # it moved there: the higher number wins
    )
    rib.apply(UpdateEvent("10.0.0.254", routes), 0.0)
    view = rib.view([our_vni()])
    assert view.peers == {42: {"10.0.0.2": Encap.VXLAN, "10.0.0.3": Encap.VXLAN_SCLP}}
    assert view.macs == {42: {FRR_MAC: "10.0.0.3"}} and view.seqs == {(42, FRR_MAC): 2}
    # An explicit route target imports exactly that one.
    strict = rib.view([our_vni(rts=("65002:42",))])
    assert strict.peers == {42: {"10.0.0.3": Encap.VXLAN_SCLP}}


def test_exabgp_gets_one_neighbor_block_each_with_the_evpn_family() -> None:
    text = exabgp_config(
        65001,
        "10.0.0.1",
        "10.0.0.1",
        [Neighbor("10.0.0.254", 65000), Neighbor("fd00::1", 65000)],
        9,
        "relay",
    )
    assert text.count("neighbor ") == 2 and text.count("family { l2vpn evpn; }") == 2
    assert "local-address 10.0.0.1;" in text.split("neighbor fd00::1")[0]
    assert "local-address" not in text.split("neighbor fd00::1")[1]
    assert "run relay;" in text and "encoder json;" in text and "hold-time 9;" in text


def test_the_bgp_package_imports_only_itself_and_its_model_no_io() -> None:
    from tests.structure.test_layering import FORBIDDEN_MODULES, SRC, imported_modules

    for path in sorted((SRC / "bgp").glob("*.py")):
        for module in imported_modules(path):
            parts = module.split(".")
            assert parts[0] != "sclp" or parts[1] == "bgp", f"{path.name} imports {module}"
    bad = {
        m
        for m in imported_modules(SRC / "bgp" / "model.py")
        if m.split(".")[0] in FORBIDDEN_MODULES | {"threading", "logging", "exabgp"}
    }
    assert not bad, f"model.py imports {sorted(bad)}"


def test_routes_a_returning_neighbor_does_not_send_again_go_after_the_hold_time() -> None:
    rib = RemoteRib(3.0, "10.99.0.1")
    kept, dropped = mac_from("10.0.0.2", FRR_MAC), mac_from("10.0.0.2", b"\x02" * 6)
    rib.apply(SessionEvent("n", True), 0.0)
    rib.apply(UpdateEvent("n", (imet_from("10.0.0.2"), kept, dropped)), 0.0)
    rib.apply(SessionEvent("n", False), 1.0)
    rib.apply(SessionEvent("n", True), 2.0)  # back in time: all kept for now
    rib.apply(UpdateEvent("n", (imet_from("10.0.0.2"), kept)), 2.5)  # sent again
    assert rib.next_deadline() == 5.0
    assert rib.expire(4.9) == [] and rib.route_count("n") == 3
    assert rib.expire(5.0) == ["n"] and rib.route_count("n") == 2
    assert rib.view([our_vni()]).macs == {42: {FRR_MAC: "10.0.0.2"}}


@given(
    rd=st.tuples(st.ip_addresses(v=4), st.integers(1, 0xFFFF)).map(lambda t: f"{t[0]}:{t[1]}"),
    mac=st.binary(min_size=6, max_size=6),
    vni=st.integers(1, (1 << 24) - 1),
    origin=st.ip_addresses().map(str),
)
def test_our_routes_decode_back_to_what_they_say(
    rd: str, mac: bytes, vni: int, origin: str
) -> None:
    """What we send, as a neighbor's JSON would carry it back, decodes to the same
    facts (IPv4 and IPv6 VTEPs)."""
    net = LocalVni(vni, parse_rd(rd), (parse_rt(auto_rt(65001, vni)),), frozenset(), True)
    commands = Advertiser(origin).update([net], {vni: [mac]}, {})
    routes = []
    for command in commands:
        words = command.split()
        nlri = bytes.fromhex(words[2])
        communities = bytes.fromhex(words[6].split(":")[2])
        attribute: dict[str, object] = {
            "extended-community": [
                {"value": int.from_bytes(communities[i : i + 8])}
                for i in range(0, len(communities), 8)
            ]
        }
        if nlri[0] == ROUTE_IMET:
            attribute["pmsi"] = f"pmsi:ingressreplication:0:{vni >> 4}({vni}):{origin}"
        message = {
            "type": "update",
            "neighbor": {
                "address": {"peer": "192.0.2.1"},
                "message": {
                    "update": {
                        "attribute": attribute,
                        "announce": {
                            "l2vpn evpn": {origin: [{"code": nlri[0], "raw": nlri.hex()}]}
                        },
                    }
                },
            },
        }
        event = decode_message(json.dumps(message))
        assert isinstance(event, UpdateEvent)
        routes += event.announced
    imet, mac_route = sorted(routes, key=lambda r: r.kind, reverse=True)
    assert imet.kind == ROUTE_IMET and imet.vtep == origin and imet.label_vni == vni
    assert mac_route.mac == mac and mac_route.label_vni == vni and mac_route.vtep == origin
    assert format_rd(imet.rd) == rd and mac_route.encaps == {8}
    assert RemoteRib(3.0, "192.0.2.99").apply(UpdateEvent("n", tuple(routes)), 0.0)
