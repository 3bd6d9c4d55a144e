"""``sclp cluster``: the members, their networks, carriers, leases and MACs from a
real etcd; one error line and exit 1 when etcd is away."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sclp.cli import main
from sclp.cluster.etcd import Etcd
from sclp.cluster.model import macs_key
from tests.cluster.conftest import Agents, EtcdMember, free_port, wait_for

MAC1 = bytes.fromhex("020000000001")


def registered(etcd: EtcdMember, agents: Agents) -> None:
    agents.add([etcd.url], "host1", "10.0.0.1", {42: "vxlan-sclp", 7: "vxlan"})
    agents.add([etcd.url], "host2", "10.0.0.2", {42: "geneve-sclp"}, carrier="ip")
    agents.agents["host1"].publish_macs(42, [MAC1])
    wait_for(lambda: len(agents.members("host2")) == 2, 3, "both registered")
    client = Etcd([etcd.url])
    try:
        wait_for(lambda: client.get(macs_key("/sclp", 42, "host1")), 3, "host1's MAC written")
    finally:
        client.close()


@pytest.mark.timeout(60)
def test_lists_members_leases_and_conflicts(
    etcd: EtcdMember, agents: Agents, capsys: pytest.CaptureFixture[str]
) -> None:
    registered(etcd, agents)
    assert main(["cluster", "--etcd", etcd.url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"cluster /sclp at {etcd.url} (revision ")
    assert out[0].endswith("2 members")
    assert out[1].split() == ["NAME", "ADDRESS", "CARRIER", "NETWORKS", "LEASE", "TTL", "MACS"]
    host1 = out[2].split()
    assert host1[:4] == ["host1", "10.0.0.1", "udp:7234", "7:vxlan,42:vxlan-sclp"]
    assert host1[4].endswith("/3") and host1[-1] == "1"
    assert out[3].split()[:4] == ["host2", "10.0.0.2", "ip", "42:geneve-sclp"]
    assert out[4:] == [
        "conflict: vni 42: member host2 announces protocol geneve-sclp but host1 uses vxlan-sclp"
    ]


@pytest.mark.timeout(60)
def test_json_and_config(
    etcd: EtcdMember, agents: Agents, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    registered(etcd, agents)
    config = tmp_path / "host.toml"
    config.write_text(
        'name = "host9"\n[underlay]\nlocal = "10.0.0.9"\n'
        '[[network]]\nvni = 42\nprotocol = "vxlan-sclp"\ntap = "tap42"\npeers = []\n'
        f'[cluster]\netcd = ["{etcd.url}"]\nprefix = "/sclp"\n'
    )
    assert main(["cluster", "--config", str(config), "--json"]) == 0
    snap = json.loads(capsys.readouterr().out)
    assert snap["endpoint"] == etcd.url and snap["revision"] > 0
    by_name = {m["name"]: m for m in snap["members"]}
    assert set(by_name) == {"host1", "host2"}
    h1 = by_name["host1"]
    assert h1["networks"] == {"7": "vxlan", "42": "vxlan-sclp"}
    assert h1["lease_id"] == agents.agents["host1"].status()["lease_id"]
    assert h1["lease_granted_ttl"] == 3 and 0 <= h1["lease_remaining_ttl"] <= 3
    assert h1["macs"] == {"42": 1}
    assert len(snap["conflicts"]) == 1
    # Another prefix: nobody there.
    assert main(["cluster", "--etcd", etcd.url, "--prefix", "/other", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["members"] == []


@pytest.mark.timeout(30)
def test_errors_are_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    assert main(["cluster", "--etcd", down]) == 1
    err = capsys.readouterr().err
    assert err == f"sclp: error: etcd: {down}: connection refused\n"
    assert main(["cluster", "--etcd", f"{down},{down}"]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["cluster"]) == 2
    assert "--etcd" in capsys.readouterr().err
    config = tmp_path / "plain.toml"
    config.write_text(
        'name = "h"\n[underlay]\nlocal = "10.0.0.9"\n'
        '[[network]]\nvni = 42\nprotocol = "vxlan"\ntap = "tap42"\npeers = []\n'
    )
    assert main(["cluster", "--config", str(config)]) == 1
    assert "has no [cluster] table" in capsys.readouterr().err
