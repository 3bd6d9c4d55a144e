"""The reconcile planner: the smallest change between two sets of networks."""

from __future__ import annotations

import dataclasses

from sclp.endpoint.config import parse_config
from sclp.endpoint.reconcile import plan_networks, restart_needed, wanted_peers

BASE = """name = "h1"
[underlay]
local = "10.0.0.1"
[[network]]
vni = 42
tap = "t42"
peers = ["10.0.0.2"]
[[network]]
vni = 43
protocol = "vxlan"
attach = ["c43-*"]
peers = ["10.0.0.2"]
"""


def networks(text: str) -> dict[int, object]:
    return {n.vni: n for n in parse_config(text).networks}


def test_unchanged_networks_plan_nothing() -> None:
    assert plan_networks(networks(BASE), networks(BASE)).empty


def test_added_removed_recreated_and_peer_only_changes_are_told_apart() -> None:
    new = BASE.replace('protocol = "vxlan"', 'protocol = "geneve"')  # 43: re-created
    new = new.replace('tap = "t42"\npeers = ["10.0.0.2"]', 'tap = "t42"\npeers = ["10.0.0.3"]')
    new += '[[network]]\nvni = 44\nattach = ["c44-*"]\n'
    plan = plan_networks(networks(BASE), networks(new))
    assert plan.remove == ()
    assert [n.vni for n in plan.add] == [44]
    assert [n.vni for n in plan.recreate] == [43]
    assert [(n.vni, n.peers) for n in plan.peers] == [(42, ("10.0.0.3",))]
    gone = plan_networks(networks(new), networks(BASE))
    assert gone.remove == (44,) and [n.vni for n in gone.recreate] == [43]


def test_a_changed_tap_or_attach_pattern_re_creates_the_network() -> None:
    for old, new in (('tap = "t42"', 'tap = "t42b"'), ('["c43-*"]', '["c43-*", "vm*"]')):
        plan = plan_networks(networks(BASE), networks(BASE.replace(old, new)))
        assert len(plan.recreate) == 1 and not plan.peers


def test_settings_outside_the_networks_need_a_restart() -> None:
    old = parse_config(BASE)
    new = dataclasses.replace(old, underlay=dataclasses.replace(old.underlay, mtu=1400))
    assert restart_needed(old, new) == ["underlay"]
    assert restart_needed(old, old) == []


def test_wanted_peers_join_the_file_and_the_cluster_and_never_this_host() -> None:
    net = parse_config(BASE).networks[0]
    found = {42: frozenset({"10.0.0.1", "10.0.0.7"}), 43: frozenset({"10.0.0.9"})}
    assert wanted_peers(net, found, "10.0.0.1") == {"10.0.0.2", "10.0.0.7"}
    assert wanted_peers(net, {}, "10.0.0.1") == {"10.0.0.2"}
