"""The classic tunnels' UDP ports in the registry: members announce ``vxlan_port`` and
``geneve_port``, and a member on another port is not a peer of a VXLAN or Geneve VNI
(it would never hear what is sent to it)."""

from __future__ import annotations

import json

import pytest

from sclp.cluster import model
from sclp.cluster.model import Member, build_view, cluster_conflicts, member_key, parse_records
from sclp.endpoint.config import parse_config
from sclp.endpoint.registry import member_of
from sclp.wire import geneve, vxlan

P = "/sclp"


def m(name: str, address: str, protocol: str, **ports: int) -> Member:
    return Member(name, address, "ip", 7234, {42: protocol}, **ports)


def kvs_of(*members: Member) -> dict[str, tuple[bytes, int]]:
    return {member_key(P, x.name): (x.to_json(), 10 + i) for i, x in enumerate(members)}


def test_defaults_are_the_wire_constants() -> None:
    assert (model.VXLAN_PORT, model.GENEVE_PORT) == (vxlan.VXLAN_PORT, geneve.GENEVE_PORT)


def test_ports_round_trip_and_default_for_older_records() -> None:
    a = m("a", "10.0.0.1", "vxlan", vxlan_port=8472, geneve_port=6082)
    record = json.loads(a.to_json())
    assert (record["vxlan_port"], record["geneve_port"]) == (8472, 6082)
    assert Member.from_json(a.to_json()) == a
    assert hash(Member.from_json(a.to_json())) == hash(a)
    assert a != m("a", "10.0.0.1", "vxlan", geneve_port=6082)
    del record["vxlan_port"], record["geneve_port"]  # a record from before the keys
    old = Member.from_json(json.dumps(record).encode())
    assert (old.vxlan_port, old.geneve_port) == (4789, 6081)


@pytest.mark.parametrize("key", ["vxlan_port", "geneve_port"])
@pytest.mark.parametrize("value", [0, 65536, True, "4789", None])
def test_bad_ports_are_rejected(key: str, value: object) -> None:
    record = json.loads(m("a", "10.0.0.1", "vxlan").to_json())
    record[key] = value
    with pytest.raises(ValueError, match=key):
        Member.from_json(json.dumps(record).encode())


@pytest.mark.parametrize(("protocol", "key"), [("vxlan", "vxlan_port"), ("geneve", "geneve_port")])
def test_member_on_another_port_is_not_a_peer(protocol: str, key: str) -> None:
    me = m("a", "10.0.0.1", protocol, **{key: 8472})
    same = m("b", "10.0.0.2", protocol, **{key: 8472})
    other = m("c", "10.0.0.3", protocol)  # the default port
    view = build_view(P, kvs_of(me, same, other), 99, me)
    assert view.peers == {42: frozenset({"10.0.0.2"})}
    default = 4789 if protocol == "vxlan" else 6081
    assert view.conflicts == (
        f"vni 42: member c (10.0.0.3) uses {protocol} UDP port {default} but a uses 8472; "
        "not a peer on vni 42",
    )
    assert cluster_conflicts(parse_records(P, kvs_of(me, same, other))) == [
        f"vni 42: member c uses {protocol} UDP port {default} but a uses 8472",
        f"vni 42: member c uses {protocol} UDP port {default} but b uses 8472",
    ]


def test_ports_of_other_protocols_do_not_matter() -> None:
    """Over SCLP the 4789 in the SCLP header is no UDP port; a Geneve port is nothing
    to a VXLAN network."""
    me = m("a", "10.0.0.1", "vxlan-sclp", vxlan_port=8472)
    b = m("b", "10.0.0.2", "vxlan-sclp")
    assert build_view(P, kvs_of(me, b), 99, me).peers == {42: frozenset({"10.0.0.2"})}
    me = m("a", "10.0.0.1", "vxlan", geneve_port=9000)
    b = m("b", "10.0.0.2", "vxlan")
    view = build_view(P, kvs_of(me, b), 99, me)
    assert view.peers == {42: frozenset({"10.0.0.2"})} and not view.conflicts


def test_endpoint_announces_its_configured_ports() -> None:
    cfg = parse_config(
        'name = "h1"\n[underlay]\nlocal = "10.0.0.1"\nvxlan_port = 8472\ngeneve_port = 6082\n'
        '[[network]]\nvni = 42\nprotocol = "vxlan"\ntap = "t42"\n'
    )
    member = member_of(cfg)
    assert (member.vxlan_port, member.geneve_port) == (8472, 6082)
    assert member.networks == {42: "vxlan"}
