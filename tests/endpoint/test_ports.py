"""Many VM ports per network, in memory: local switching, learning of local ports
beside peers, flooding, isolation between VNIs, ports leaving, and GSO frames longer
than a tunnel carries (from an attached port) split at segment boundaries.

The data paths are the real ones (tests/endpoint/test_datapath.py wires two back to
back); a "port" here is what the runner would read a frame from or write one to.
"""

from __future__ import annotations

import re
import struct

import pytest

from sclp.endpoint.config import ConfigError, parse_config
from sclp.endpoint.datapath import HEADROOM, DataPath, Deliver, VmPort
from sclp.endpoint.tunnels import Send
from sclp.switch.fdb import Fdb, LearnResult
from sclp.wire import ipv4, ipv6
from sclp.wire.checksum import internet_checksum
from sclp.wire.virtio_net import VNET_HDR, VNET_HDR_LEN, VNET_HDR_NONE
from tests.endpoint.test_datapath import CASES, IP_A, IP_B, MAC_A, MAC_B, A, B, transfer, vm_read

MAC_C = bytes.fromhex("020000000c01")
BROADCAST = b"\xff" * 6


def config(local: str, peer: str, protocol: str = "vxlan-sclp", carrier: str = "udp") -> str:
    return (
        f'name = "p{local[-1]}"\n[underlay]\nlocal = "{local}"\nmtu = 1500\n'
        f'sclp_carrier = "{carrier}"\n'
        f'[[network]]\nvni = 42\nprotocol = "{protocol}"\ntap = "t42"\n'
        f'attach = ["vm42-*"]\npeers = ["{peer}"]\n'
        f'[[network]]\nvni = 43\nprotocol = "{protocol}"\nattach = ["vm43-*"]\n'
        f'peers = ["{peer}"]\n'
    )


def host(local: str = A, peer: str = B, protocol: str = "vxlan-sclp", carrier: str = "udp"):
    return DataPath(parse_config(config(local, peer, protocol, carrier)), 1500)


def frame(dst: bytes, src: bytes, payload: bytes = b"p" * 100) -> bytes:
    return (
        dst
        + src
        + b"\x08\x00"
        + ipv4.encode(ipv4.IPv4Header(IP_A, IP_B, 17, 20 + len(payload)))
        + payload
    )


def sends(out: list[Send | Deliver]) -> list[Send]:
    return [o for o in out if isinstance(o, Send)]


def delivers(out: list[Send | Deliver]) -> list[Deliver]:
    return [o for o in out if isinstance(o, Deliver)]


# -- configuration -------------------------------------------------------------------------


def test_a_network_may_attach_instead_of_owning_a_tap() -> None:
    dp = host()
    assert [p.name for p in dp.networks[42].ports] == ["t42"]
    assert dp.networks[43].ports == ()
    assert dp.networks[43].network.attaches("vm43-web") and not dp.networks[43].network.attaches(
        "x"
    )


@pytest.mark.parametrize(
    ("network", "message"),
    [
        ("vni = 5\npeers = []\n", "network[0].tap: missing from the [[network]] at line 4; add"),
        ('vni = 5\nattach = ["a/b"]\n', "is not an interface name or shell-style pattern"),
        ('vni = 5\nattach = "vnet*"\n', "attach (line"),
        ('vni = 5\nattach = ["v*"]\nnamespace = "vm"\n', "applies to the network's own tap"),
    ],
)
def test_bad_attach_settings_are_one_line_errors(network: str, message: str) -> None:
    text = f'name = "h"\n[underlay]\nlocal = "10.0.0.1"\n[[network]]\n{network}'
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(text)


def test_network_for_matches_patterns_in_file_order_and_never_our_own_taps() -> None:
    dp = host()
    assert dp.network_for("vm42-a") is dp.networks[42]
    assert dp.network_for("vm43-a") is dp.networks[43]
    assert dp.network_for("t42") is None and dp.network_for("eth0") is None


# -- the FDB with local ports ---------------------------------------------------------------


def test_fdb_tells_local_ports_from_peers_and_forgets_a_port_that_leaves() -> None:
    fdb = Fdb(["10.0.0.2"])
    p1, p2 = object(), object()
    fdb.add_port(p1)
    fdb.add_port(p2)
    assert fdb.learn(MAC_A, p1, 0.0) is LearnResult.NEW
    assert fdb.learn(MAC_B, "10.0.0.2", 0.0) is LearnResult.NEW
    assert fdb.learn(MAC_C, object(), 0.0) is LearnResult.NOT_PEER
    assert fdb.lookup(MAC_A, 1.0).ports == (p1,) and fdb.lookup(MAC_A, 1.0).peers == ()
    assert fdb.lookup(MAC_B, 1.0).peers == ("10.0.0.2",) and fdb.lookup(MAC_B, 1.0).ports == ()
    flood = fdb.lookup(BROADCAST, 1.0)
    assert flood.flooded and flood.ports == (p1, p2) and flood.peers == ("10.0.0.2",)
    assert fdb.learn(MAC_A, "10.0.0.2", 2.0) is LearnResult.MOVED  # the VM migrated away
    assert fdb.learn(MAC_A, p2, 3.0) is LearnResult.MOVED  # ... and came back elsewhere
    assert fdb.remove_port(p2) == 1
    assert fdb.lookup(MAC_A, 4.0).flooded and fdb.lookup(BROADCAST, 4.0).ports == (p1,)


def test_fdb_set_peers_forgets_macs_behind_a_peer_that_left() -> None:
    fdb = Fdb(["10.0.0.2", "10.0.0.3"])
    fdb.learn(MAC_A, "10.0.0.2", 0.0)
    fdb.learn(MAC_B, "10.0.0.3", 0.0)
    assert fdb.set_peers(["10.0.0.3", "10.0.0.4"]) == 1
    assert fdb.lookup(MAC_A, 1.0).flooded
    assert fdb.lookup(BROADCAST, 1.0).peers == ("10.0.0.3", "10.0.0.4")


# -- local switching --------------------------------------------------------------------------


def two_ports(dp: DataPath, vni: int = 42) -> tuple[VmPort, VmPort]:
    first = dp.networks[vni].ports[0] if vni == 42 else dp.add_port(f"vm{vni}-a", vni)
    return first, dp.add_port(f"vm{vni}-b", vni)


def test_local_unicast_is_switched_without_the_underlay() -> None:
    dp = host()
    p1, p2 = two_ports(dp)
    dp.from_vm(p2, *vm_read(frame(BROADCAST, MAC_B)), now=0.0)  # p2's VM makes itself known
    data = frame(MAC_B, MAC_A)
    out = dp.from_vm(p1, *vm_read(data), now=0.1)
    assert sends(out) == []
    [d] = delivers(out)
    assert (d.port, d.vnet, bytes(d.frame)) == (p2, VNET_HDR_NONE, data)
    net = dp.networks[42]
    assert net.counters["tx_local"] == 2 and net.counters["tx_packets"] == 1  # the broadcast
    assert p1.counters["tx_frames"] == 1 and p2.counters["tx_frames"] == 1


def test_a_local_gso_frame_keeps_its_virtio_header() -> None:
    """Two VMs on one host exchange 64 KB TSO frames as they are: header and all."""
    dp = host()
    p1, p2 = two_ports(dp)
    dp.from_vm(p2, *vm_read(frame(BROADCAST, MAC_B)), now=0.0)
    big = tcp_frame(b"g" * 60_000)
    buf, size = vm_read(big, gso_size=1448)
    header = bytes(buf[HEADROOM - VNET_HDR_LEN : HEADROOM])
    [d] = dp.from_vm(p1, buf, size, now=0.1)
    assert isinstance(d, Deliver) and d.port is p2 and d.vnet == header
    assert bytes(d.frame) == big


def test_broadcast_reaches_the_other_local_ports_and_every_peer_but_not_its_source() -> None:
    dp = host()
    p1, p2 = two_ports(dp)
    p3 = dp.add_port("vm42-c", 42)
    out = dp.from_vm(p1, *vm_read(frame(BROADCAST, MAC_A)), now=0.0)
    assert {d.port.name for d in delivers(out)} == {p2.name, p3.name}
    assert [s.peer for s in sends(out)] == [B]


def test_a_frame_to_the_port_it_came_from_is_filtered() -> None:
    dp = host()
    p1, _ = two_ports(dp)
    dp.from_vm(p1, *vm_read(frame(BROADCAST, MAC_C)), now=0.0)  # MAC_C lives behind p1
    assert dp.from_vm(p1, *vm_read(frame(MAC_C, MAC_A)), now=0.1) == []
    assert dp.networks[42].counters["tx_filtered"] == 1


def test_vnis_stay_apart_for_attached_ports() -> None:
    dp = host()
    a42, b42 = two_ports(dp, 42)
    a43, b43 = two_ports(dp, 43)
    out = dp.from_vm(a43, *vm_read(frame(BROADCAST, MAC_A)), now=0.0)
    assert {d.port for d in delivers(out)} == {b43}
    # MAC_A was learned in VNI 43 only: a frame to it in VNI 42 floods there.
    out = dp.from_vm(a42, *vm_read(frame(MAC_A, MAC_B)), now=0.1)
    assert {d.port for d in delivers(out)} == {b42} and len(sends(out)) == 1


@pytest.mark.parametrize(("protocol", "carrier"), CASES)
def test_frames_from_a_peer_go_to_the_port_of_their_mac_else_to_every_port(
    protocol: str, carrier: str
) -> None:
    a = host(A, B, protocol, carrier)
    b = host(B, A, protocol, carrier)
    b1, b2 = two_ports(b)
    b.from_vm(b2, *vm_read(frame(BROADCAST, MAC_B)), now=0.0)  # MAC_B behind b2
    a_port = a.networks[42].ports[0]
    known = transfer(A, b, sends(a.from_vm(a_port, *vm_read(frame(MAC_B, MAC_A)), now=0.0)))
    assert [d.port for d in known] == [b2]
    unknown = transfer(A, b, sends(a.from_vm(a_port, *vm_read(frame(MAC_C, MAC_A)), now=0.0)))
    assert sorted(d.port.name for d in unknown) == sorted((b1.name, b2.name))
    assert b.networks[42].fdb.lookup(MAC_A, 0.0).peers == (A,)  # learned as remote


def test_a_port_that_leaves_takes_its_macs_and_gets_no_more_frames() -> None:
    dp = host()
    p1, p2 = two_ports(dp)
    dp.from_vm(p2, *vm_read(frame(BROADCAST, MAC_B)), now=0.0)
    assert dp.remove_port(p2) == 1
    assert "vm42-b" not in dp.ports
    out = dp.from_vm(p1, *vm_read(frame(MAC_B, MAC_A)), now=0.1)
    assert delivers(out) == [] and len(sends(out)) == 1  # unknown again: flooded to peers


def test_frames_for_a_network_with_no_port_left_are_counted() -> None:
    a, b = host(A, B), host(B, A)
    a43 = a.add_port("vm43-a", 43)
    out = transfer(A, b, sends(a.from_vm(a43, *vm_read(frame(BROADCAST, MAC_A)), now=0.0)))
    assert out == [] and b.networks[43].counters["drop_no_route"] == 1


def test_adding_a_port_twice_or_to_an_unknown_vni_is_refused() -> None:
    dp = host()
    dp.add_port("vm42-x", 42)
    with pytest.raises(ValueError, match="already a port"):
        dp.add_port("vm42-x", 42)
    with pytest.raises(ValueError, match="vni 7"):
        dp.add_port("vm7-x", 7)


# -- GSO frames longer than the tunnel carries -------------------------------------------------


def tcp_frame(payload: bytes, *, v6: bool = False, flags: int = 0x18) -> bytes:
    """A TCP GSO frame from MAC_A to MAC_B with a partial (pseudo-header) checksum."""
    tcp = bytearray(struct.pack("!HHIIBBHHH", 40000, 5201, 0xFFFFF000, 7, 5 << 4, flags, 501, 0, 0))
    tcp += payload
    if v6:
        src, dst = b"\xfd" + bytes(14) + b"\x01", b"\xfd" + bytes(14) + b"\x02"
        struct.pack_into("!H", tcp, 16, ipv6.pseudo_header_sum(src, dst, 6, len(tcp)) & 0xFFFF)
        ip = ipv6.encode(ipv6.IPv6Header(src, dst, 6, len(tcp)))
        return MAC_B + MAC_A + b"\x86\xdd" + ip + bytes(tcp)
    struct.pack_into("!H", tcp, 16, ipv4.pseudo_header_sum(IP_A, IP_B, 6, len(tcp)) & 0xFFFF)
    ip = ipv4.encode(ipv4.IPv4Header(IP_A, IP_B, 6, 20 + len(tcp), ident=0xFFF0))
    return MAC_B + MAC_A + b"\x08\x00" + ip + bytes(tcp)


@pytest.mark.parametrize(("protocol", "carrier"), CASES)
def test_an_attached_ports_oversize_gso_frame_is_split_and_arrives_intact(
    protocol: str, carrier: str
) -> None:
    """A guest's TSO frame may be an IPv4 packet of up to 65,535 bytes: above what every
    tunnel carries (the UDP carrier's limit is one GSO send that GRO keeps whole).  An
    owned TAP's gso_max_size keeps its VM below; an attached interface's sender is
    not ours, so the endpoint splits the frame at segment boundaries."""
    a, b = host(A, B, protocol, carrier), host(B, A, protocol, carrier)
    port = a.add_port("vm42-guest", 42)
    payload = bytes(i % 253 for i in range(65_480))
    big = tcp_frame(payload)
    assert (
        len(big) > a.networks[42].max_tunnel_frame
    )  # 65,534 > 65,511 (MAX_VM_FRAME) and the UDP carrier's ~63,700
    buf, size = vm_read(big)
    VNET_HDR.pack_into(buf, HEADROOM - VNET_HDR_LEN, 1, 1, 54, 1400, 34, 16)
    out = a.from_vm(port, buf, size, now=0.0)
    assert a.networks[42].counters["tx_split"] == 1
    [local] = delivers(out)  # unknown MAC: flooded to the network's TAP too, whole
    assert local.port.name == "t42" and bytes(local.frame) == big
    got = transfer(A, b, sends(out))
    data = b"".join(bytes(d.frame)[54:] for d in got)
    assert data == payload
    for d in got:  # a plain frame (a one-segment remainder) has a complete checksum
        if d.vnet == VNET_HDR_NONE:
            f = bytes(d.frame)
            pseudo = ipv4.pseudo_header_sum(f[26:30], f[30:34], 6, len(f) - 34)
            assert internet_checksum(f[34:], pseudo) == 0, len(f)
    assert any(d.vnet == VNET_HDR_NONE for d in got) == (
        carrier == "ip" or not protocol.endswith("sclp")
    )


# -- peers and networks at run time (SIGHUP, the cluster registry) -----------------------------


def test_cluster_announced_macs_stop_floods_but_traffic_learned_wins() -> None:
    fdb = Fdb(["10.0.0.2", "10.0.0.3"])
    port = object()
    fdb.add_port(port)
    fdb.set_remote({MAC_A: "10.0.0.2", MAC_B: "10.0.0.9"})  # .9 is no peer: ignored
    assert fdb.lookup(MAC_A, 0.0).peers == ("10.0.0.2",) and not fdb.lookup(MAC_A, 0.0).flooded
    assert fdb.lookup(MAC_B, 0.0).flooded
    fdb.learn(MAC_A, "10.0.0.3", 1.0)  # the VM moved before the registry knew
    assert fdb.lookup(MAC_A, 1.0).peers == ("10.0.0.3",)
    fdb.learn(MAC_C, port, 1.0)
    assert fdb.local_macs() == {MAC_C}
    fdb.set_peers(["10.0.0.3"])  # .2 left: its announcements go with it
    fdb.set_remote({MAC_B: "10.0.0.3"})
    assert fdb.lookup(MAC_B, 2.0).peers == ("10.0.0.3",)


def test_networks_and_peers_change_while_running() -> None:
    dp = host()
    assert dp.set_peers(42, ["10.9.0.2", "10.9.0.7"]) == (frozenset({"10.9.0.7"}), frozenset())
    assert "10.9.0.7" in dp.peers and dp.networks[42].fdb.peers == ("10.9.0.2", "10.9.0.7")
    assert dp.set_peers(42, ["10.9.0.2", "10.9.0.7"]) == (frozenset(), frozenset())
    removed = dp.remove_network(42)
    assert removed.vni == 42 and "t42" not in dp.ports and 42 not in dp.networks
    assert "10.9.0.7" not in dp.peers
    again = dp.add_network(removed.network)
    assert [p.name for p in again.ports] == ["t42"] and dp.networks[42] is again
    with pytest.raises(ValueError, match="served already"):
        dp.add_network(removed.network)
