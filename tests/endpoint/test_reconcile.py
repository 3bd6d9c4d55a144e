"""The reconcile planner: the smallest change between two sets of networks."""

from __future__ import annotations

import dataclasses
import json

from sclp.endpoint.config import parse_config
from sclp.endpoint.reconcile import (
    PeerChange,
    ReloadReport,
    plan_networks,
    restart_needed,
    wanted_peers,
)

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


def test_a_reload_report_round_trips_through_json_and_names_each_change() -> None:
    report = ReloadReport(
        "/etc/sclp/h1.toml",
        added=(44,),
        removed=(43,),
        recreated=(42,),
        not_added=((45, "network namespace 'x' (vni 45) does not exist"),),
        peers=(PeerChange(42, joined=("10.0.0.3",), left=("10.0.0.2",)),),
        restart_needed=("underlay",),
    )
    data = json.loads(json.dumps(report.to_json()))
    assert ReloadReport.from_json(data) == report
    assert data["ok"] is False  # vni 45 could not be added
    assert report.changed
    assert report.lines() == [
        "vni 44 added",
        "vni 43 removed",
        "vni 42 re-created (its tunnel, ports, MTU or static entries changed)",
        "vni 45 not added: network namespace 'x' (vni 45) does not exist",
        "vni 42: peer 10.0.0.3 joined",
        "vni 42: peer 10.0.0.2 left",
        "[underlay] changed: restart the endpoint to apply it",
    ]


def test_a_reload_report_of_an_invalid_file_or_no_change() -> None:
    bad = ReloadReport("h1.toml", error="h1.toml: not valid TOML: ...")
    assert not bad.ok and not bad.changed
    assert bad.lines() == ["h1.toml: not valid TOML: ...; still running the previous configuration"]
    assert ReloadReport.from_json(bad.to_json()) == bad
    unknown = ReloadReport("/etc/sclp/h1.toml", error="network[0].peer (line 8): unknown key")
    assert unknown.lines() == [
        "/etc/sclp/h1.toml: network[0].peer (line 8): unknown key; "
        "still running the previous configuration"
    ]
    same = ReloadReport("h1.toml")
    assert same.ok and not same.changed and same.lines() == ["unchanged"]
