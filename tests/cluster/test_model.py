"""The registry model (pure): member records, key layout, and the view of one
endpoint — peers, MACs and conflicts."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sclp.cluster.model import (
    ClusterView,
    Member,
    build_view,
    cluster_conflicts,
    decode_macs,
    encode_macs,
    macs_key,
    member_key,
    parse_records,
)

pytestmark = pytest.mark.timeout(120)

P = "/sclp"
MAC1 = bytes.fromhex("020000000001")
MAC2 = bytes.fromhex("020000000002")


def m(name: str, address: str, networks: dict[int, str] | None = None, **kw: object) -> Member:
    carrier = str(kw.get("carrier", "udp"))
    port = int(str(kw.get("port", 7234)))
    return Member(name, address, carrier, port, networks or {42: "vxlan-sclp"})


def kvs_of(*members: Member, start: int = 10) -> dict[str, tuple[bytes, int]]:
    return {member_key(P, x.name): (x.to_json(), start + i) for i, x in enumerate(members)}


def view_of(
    me: Member, *others: Member, extra: dict[str, tuple[bytes, int]] | None = None
) -> ClusterView:
    kvs = kvs_of(me, *others)
    kvs.update(extra or {})
    return build_view(P, kvs, 99, me)


def test_member_json_round_trip() -> None:
    a = m("host1", "10.0.0.1", {42: "vxlan-sclp", 7: "vxlan"})
    data = a.to_json()
    assert json.loads(data)["networks"] == {"7": "vxlan", "42": "vxlan-sclp"}
    assert Member.from_json(data) == a
    assert hash(Member.from_json(data)) == hash(a)
    v6 = m("h6", "fd00::1")
    assert Member.from_json(v6.to_json()) == v6


def test_member_from_json_ignores_unknown_fields() -> None:
    record = json.loads(m("a", "10.0.0.1").to_json())
    record["future"] = {"x": 1}
    assert Member.from_json(json.dumps(record).encode()).name == "a"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"name": "bad name"}, "name"),
        ({"name": 5}, "name"),
        ({"address": "10.0.0.300"}, "address"),
        ({"address": 167772161}, "address"),
        ({"carrier": "tcp"}, "carrier"),
        ({"sclp_udp_port": 0}, "sclp_udp_port"),
        ({"sclp_udp_port": True}, "sclp_udp_port"),
        ({"sclp_udp_port": "7234"}, "sclp_udp_port"),
        ({"networks": {"0": "vxlan"}}, "vni"),
        ({"networks": {"16777216": "vxlan"}}, "vni"),
        ({"networks": {"x": "vxlan"}}, "vni"),
        ({"networks": {"5": 3}}, "protocol"),
        ({"networks": []}, "networks"),
    ],
)
def test_member_from_json_rejects(change: dict[str, object], reason: str) -> None:
    record = json.loads(m("a", "10.0.0.1").to_json())
    record.update(change)
    with pytest.raises(ValueError, match=reason):
        Member.from_json(json.dumps(record).encode())


@pytest.mark.parametrize("data", [b"", b"[", b"[]", b"\xff\xfe", b"[" * 100_000, b'{"name": "a"}'])
def test_member_from_json_rejects_garbage(data: bytes) -> None:
    with pytest.raises(ValueError):
        Member.from_json(data)


def test_key_layout() -> None:
    assert member_key("/sclp", "h1") == "/sclp/members/h1"
    assert member_key("/sclp/", "h1") == "/sclp/members/h1"
    assert member_key("/", "h1") == "/members/h1"
    assert macs_key("/sclp", 42, "h1") == "/sclp/macs/42/h1"


def test_macs_encode_sorted_unicast_and_decode() -> None:
    multicast = bytes.fromhex("01005e000001")
    data = encode_macs([MAC2, MAC1, multicast, MAC1])
    assert json.loads(data) == ["02:00:00:00:00:01", "02:00:00:00:00:02"]
    assert decode_macs(data) == {MAC1, MAC2}
    assert decode_macs(b'["02:00:00:00:00:01", "01:00:5E:00:00:01"]') == {MAC1}
    for bad in (b"{}", b'["02:00"]', b"[1]", b"nope"):
        with pytest.raises(ValueError):
            decode_macs(bad)
    with pytest.raises(ValueError):
        encode_macs([b"\x02"])


def test_compatible_members_are_peers_and_never_me() -> None:
    a, b, c = m("a", "10.0.0.1"), m("b", "10.0.0.2"), m("c", "10.0.0.3")
    view = view_of(a, b, c)
    assert view.peers == {42: frozenset({"10.0.0.2", "10.0.0.3"})}
    assert set(view.members) == {"a", "b", "c"}
    assert view.conflicts == ()
    assert view.revision == 99


def test_other_vnis_do_not_make_peers() -> None:
    a = m("a", "10.0.0.1", {42: "vxlan", 7: "geneve"})
    b = m("b", "10.0.0.2", {7: "geneve"})
    c = m("c", "10.0.0.3", {99: "nvgre"})
    view = view_of(a, b, c)
    assert view.peers == {7: frozenset({"10.0.0.2"}), 42: frozenset()}
    assert view.conflicts == ()


def test_other_protocol_on_my_vni_is_a_conflict_not_a_peer() -> None:
    a, b = m("a", "10.0.0.1"), m("b", "10.0.0.2", {42: "geneve-sclp"})
    view = view_of(a, b)
    assert view.peers[42] == frozenset()
    assert view.conflicts == (
        "vni 42: member b (10.0.0.2) announces protocol geneve-sclp but a uses vxlan-sclp; "
        "not a peer on vni 42",
    )
    # Stable text: the same registry gives the same lines.
    assert view_of(a, b).conflicts == view.conflicts


def test_sclp_carrier_and_udp_port_must_match() -> None:
    a = m("a", "10.0.0.1")
    other_carrier = m("b", "10.0.0.2", carrier="ip")
    other_port = m("c", "10.0.0.3", port=9999)
    view = view_of(a, other_carrier, other_port)
    assert view.peers[42] == frozenset()
    assert len(view.conflicts) == 2
    assert "carrier ip" in view.conflicts[0] and "UDP port 9999" in view.conflicts[1]
    # With the IP carrier the port is not used: no conflict.
    ip1, ip2 = m("a", "10.0.0.1", carrier="ip"), m("b", "10.0.0.2", carrier="ip", port=1)
    assert view_of(ip1, ip2).peers[42] == {"10.0.0.2"}
    # Carrier and port do not matter for a non-SCLP protocol.
    v1 = m("a", "10.0.0.1", {5: "vxlan"})
    v2 = m("b", "10.0.0.2", {5: "vxlan"}, carrier="ip", port=1)
    assert view_of(v1, v2).peers[5] == {"10.0.0.2"}


def test_duplicate_address_later_registration_is_ignored() -> None:
    a, b, c = m("a", "10.0.0.1"), m("b", "10.0.0.2"), m("c", "10.0.0.2")
    view = view_of(a, b, c)  # b created before c
    assert view.peers[42] == {"10.0.0.2"}
    assert view.conflicts == (
        "members b and c both announce underlay address 10.0.0.2; c (registered later) is ignored",
    )
    # c's own view: it is the one ignored, so it has no peers at all.
    view_c = build_view(P, kvs_of(a, b, c), 5, c)
    assert view_c.peers[42] == frozenset()
    # A member with my address but registered before me wins; I am ignored.
    kvs = kvs_of(m("old", "10.0.0.1"), a)
    assert build_view(P, kvs, 5, a).peers[42] == frozenset()
    # Address spelling does not hide a duplicate.
    assert view_of(m("x", "fd00::1"), m("y", "fd00:0::1")).conflicts


def test_me_not_registered_yet_counts_as_newest() -> None:
    a, b = m("a", "10.0.0.1"), m("b", "10.0.0.2")
    view = build_view(P, kvs_of(b), 3, a)
    assert view.peers[42] == {"10.0.0.2"}
    assert set(view.members) == {"b"}


def test_malformed_records_are_ignored_with_a_line() -> None:
    a, b = m("a", "10.0.0.1"), m("b", "10.0.0.2")
    extra = {
        f"{P}/members/bad": (b"{not json", 3),
        f"{P}/members/liar": (m("other", "10.0.0.9").to_json(), 4),
        f"{P}/macs/42/b": (b"[1, 2]", 5),
        f"{P}/macs/x/b": (b"[]", 6),
        f"{P}/something/else": (b"whatever", 7),
    }
    view = view_of(a, b, extra=extra)
    assert view.peers[42] == {"10.0.0.2"}
    assert len(view.conflicts) == 4
    assert any("member record /sclp/members/bad ignored" in c for c in view.conflicts)
    assert any("names 'other'" in c for c in view.conflicts)


def test_macs_of_peers_only() -> None:
    a, b = m("a", "10.0.0.1"), m("b", "10.0.0.2")
    c = m("c", "10.0.0.3", {42: "vxlan"})  # incompatible
    mac3 = bytes.fromhex("020000000003")
    extra = {
        macs_key(P, 42, "b"): (encode_macs([MAC1]), 20),
        macs_key(P, 42, "c"): (encode_macs([MAC2]), 21),
        macs_key(P, 42, "a"): (encode_macs([mac3]), 22),  # mine: not installed
        macs_key(P, 7, "b"): (encode_macs([MAC2]), 23),  # a vni I do not serve
    }
    view = view_of(a, b, c, extra=extra)
    assert view.macs == {42: {MAC1: "10.0.0.2"}}


def test_mac_announced_by_two_peers_is_left_to_learning() -> None:
    a, b, c = m("a", "10.0.0.1"), m("b", "10.0.0.2"), m("c", "10.0.0.3")
    extra = {
        macs_key(P, 42, "b"): (encode_macs([MAC1, MAC2]), 20),
        macs_key(P, 42, "c"): (encode_macs([MAC1]), 21),
    }
    assert view_of(a, b, c, extra=extra).macs[42] == {MAC2: "10.0.0.2"}


def test_cluster_conflicts_without_a_point_of_view() -> None:
    a, b = m("a", "10.0.0.1"), m("b", "10.0.0.2", {42: "vxlan"})
    c = m("c", "10.0.0.1")
    lines = cluster_conflicts(parse_records(P, kvs_of(a, b, c)))
    assert len(lines) == 3  # a-c address; a-b and b-c protocol on vni 42


def test_same_state_ignores_the_revision() -> None:
    a, b = m("a", "10.0.0.1"), m("b", "10.0.0.2")
    v1 = build_view(P, kvs_of(a, b), 5, a)
    v2 = build_view(P, kvs_of(a, b), 9, a)
    assert v1.same_state(v2) and v1 != v2
    assert not v1.same_state(build_view(P, kvs_of(a), 9, a))


# -- properties ---------------------------------------------------------------------

PROTOCOL_CHOICES = ("vxlan", "vxlan-sclp", "geneve-sclp")
members_st = st.builds(
    Member,
    name=st.sampled_from(["a", "b", "c", "d", "e"]),
    address=st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3", "fd00::1", "fd00::2"]),
    carrier=st.sampled_from(["ip", "udp"]),
    sclp_udp_port=st.sampled_from([7234, 7235]),
    networks=st.dictionaries(st.sampled_from([1, 42]), st.sampled_from(PROTOCOL_CHOICES)),
)


json_st = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
keys_st = st.one_of(
    st.text(max_size=30),
    st.builds(lambda s: f"{P}/members/{s}", st.text(max_size=12)),
    st.builds(lambda v, s: f"{P}/macs/{v}/{s}", st.text(max_size=8), st.text(max_size=8)),
)
values_st = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda x: json.dumps(x).encode(), json_st),
    st.builds(lambda x: x.to_json(), members_st),
)


@given(
    st.dictionaries(
        keys_st, st.tuples(values_st, st.integers(min_value=0, max_value=1 << 40)), max_size=12
    ),
    members_st,
)
@settings(deadline=None)  # the machine's 2 cores are shared with other tests
def test_build_view_never_raises(kvs: dict[str, tuple[bytes, int]], me: Member) -> None:
    view = build_view(P, kvs, 1, me)
    for vni, addresses in view.peers.items():
        assert vni in me.networks
        assert me.address not in addresses


@given(st.lists(members_st, max_size=6, unique_by=lambda x: x.name))
@settings(deadline=None)
def test_peers_are_symmetric(members: list[Member]) -> None:
    kvs = kvs_of(*members)
    views = {x.name: build_view(P, kvs, 1, x) for x in members}
    by_address: dict[str, list[Member]] = {}
    for x in members:
        by_address.setdefault(x.address, []).append(x)
    for x in members:
        for y in members:
            if x is y:
                continue
            for vni in set(x.networks) & set(y.networks):
                x_sees_y = y.address in views[x.name].peers[vni]
                y_sees_x = x.address in views[y.name].peers[vni]
                if len(by_address[x.address]) > 1 or len(by_address[y.address]) > 1:
                    continue  # one of them is ignored everywhere
                assert x_sees_y == y_sees_x, (x, y, vni)
                same = x.networks[vni] == y.networks[vni]
                if same and x.networks[vni].endswith("-sclp"):
                    same = x.carrier == y.carrier and (
                        x.carrier == "ip" or x.sclp_udp_port == y.sclp_udp_port
                    )
                assert x_sees_y == same, (x, y, vni)
