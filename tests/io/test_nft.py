"""The kernel's peer filter of sclp.io.nft (``inet sclp_<name>_peers``) and the STT
packet filter with peers of sclp.io.packet, against the real kernel: two namespaces
over a veth pair, the endpoint side ``A`` and a sender ``B`` with a peer's and a
stranger's address."""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import time
from collections.abc import Callable

import pytest

from sclp.endpoint import provision
from sclp.endpoint.config import parse_config
from sclp.endpoint.datapath import DataPath
from sclp.io import nft
from sclp.io.netns import NetNS, create_veth, run_in_netns
from sclp.io.nft import (
    NftError,
    install_peer_filter,
    install_stt_ingress_drop,
    peer_filter_drops,
    peer_filter_table,
    peer_set,
    remove_peer_filter,
    remove_stt_ingress_drop,
    stt_ingress_drops,
    update_peer_set,
)
from sclp.io.packet import MAX_FILTER_PEERS, drop_all_filter, open_ipv4_tap, stt_filter
from sclp.wire.checksum import internet_checksum
from sclp.wire.stt import STT_PORT
from sclp.wire.vxlan import VXLAN_PORT

NsFactory = Callable[[], NetNS]
LOCAL, PEER, STRANGER = "10.73.0.1", "10.73.0.2", "10.73.0.3"
DEV_A, DEV_B = "sclpna", "sclpnb"
VXLAN, STT = VXLAN_PORT, STT_PORT


@pytest.fixture
def veth_pair(netns_factory: NsFactory) -> tuple[NetNS, NetNS]:
    a, b = netns_factory(), netns_factory()
    create_veth(DEV_A, a, DEV_B, b, mtu=1500)
    a.add_address(DEV_A, f"{LOCAL}/24")
    b.add_address(DEV_B, f"{PEER}/24")
    b.add_address(DEV_B, f"{STRANGER}/24")
    return a, b


def _send_udp(ns: NetNS, src: str, port: int, tags: list[bytes]) -> None:
    with ns.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((src, 0))
        for tag in tags:
            sock.sendto(tag, (LOCAL, port))


def _received(sock: socket.socket, timeout: float = 0.5) -> list[bytes]:
    out: list[bytes] = []
    while select.select([sock], [], [], timeout)[0]:
        out.append(sock.recv(2048))
    return out


def _udp_server(ns: NetNS, port: int) -> socket.socket:
    sock = ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOCAL, port))
    return sock


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_peer_filter_drops_and_counts_strangers(veth_pair: tuple[NetNS, NetNS]) -> None:
    a, b = veth_pair
    with _udp_server(a, VXLAN) as rx, _udp_server(a, VXLAN + 1) as other:
        try:
            table = install_peer_filter("ep1", LOCAL, [PEER], udp_ports=[VXLAN], netns=a.name)
            assert table == peer_filter_table("ep1") == "sclp_ep1_peers"
            # Idempotent: a second install replaces the first (one table, counter at 0).
            install_peer_filter("ep1", LOCAL, [PEER], udp_ports=[VXLAN], netns=a.name)
            assert peer_set("ep1", netns=a.name) == [PEER]
            _send_udp(b, STRANGER, VXLAN, [b"s1", b"s2", b"s3", b"s4", b"s5"])
            _send_udp(b, PEER, VXLAN, [b"p1", b"p2", b"p3"])
            _send_udp(b, STRANGER, VXLAN + 1, [b"other port"])  # not guarded
            assert _received(rx) == [b"p1", b"p2", b"p3"]
            assert _received(other) == [b"other port"]
            assert peer_filter_drops("ep1", netns=a.name) == 5
            # Peers found at run time: the set changes, the counter keeps counting.
            update_peer_set("ep1", [STRANGER, "2001:db8::7"], netns=a.name)
            assert peer_set("ep1", netns=a.name) == [STRANGER, "2001:db8::7"]
            _send_udp(b, STRANGER, VXLAN, [b"s6"])
            _send_udp(b, PEER, VXLAN, [b"p4", b"p5"])
            assert _received(rx) == [b"s6"]
            assert peer_filter_drops("ep1", netns=a.name) == 7
            update_peer_set("ep1", [], netns=a.name)  # nobody: everything dropped
            assert peer_set("ep1", netns=a.name) == []
            _send_udp(b, PEER, VXLAN, [b"p6"])
            assert _received(rx, timeout=0.3) == []
            assert peer_filter_drops("ep1", netns=a.name) == 8
        finally:
            remove_peer_filter("ep1", netns=a.name)
        remove_peer_filter("ep1", netns=a.name)  # idempotent
        with pytest.raises(NftError):
            peer_filter_drops("ep1", netns=a.name)
        with pytest.raises(NftError):
            update_peer_set("ep1", [PEER], netns=a.name)
        _send_udp(b, STRANGER, VXLAN, [b"s7"])
        assert _received(rx) == [b"s7"]  # no filter, no drop


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_peer_filter_guards_protocols_and_only_the_local_address(
    veth_pair: tuple[NetNS, NetNS],
) -> None:
    a, b = veth_pair
    a.add_address(DEV_A, "10.73.0.11/24")  # another address of A: not the endpoint's
    with (
        a.socket(socket.AF_INET, socket.SOCK_RAW, 234) as rx,
        b.socket(socket.AF_INET, socket.SOCK_RAW, 234) as tx,
    ):
        try:
            install_peer_filter("ep2", LOCAL, [PEER], protocols=[234, 47], netns=a.name)
            tx.bind((STRANGER, 0))
            tx.sendto(b"stranger", (LOCAL, 0))
            tx.sendto(b"to the other address", ("10.73.0.11", 0))
            assert [p[20:] for p in _received(rx)] == [b"to the other address"]
            assert peer_filter_drops("ep2", netns=a.name) == 1
        finally:
            remove_peer_filter("ep2", netns=a.name)


def test_peer_filter_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        install_peer_filter("ep", LOCAL, [PEER])  # nothing to guard
    with pytest.raises(ValueError):
        install_peer_filter("ep", LOCAL, [PEER], udp_ports=[0])
    with pytest.raises(ValueError):
        install_peer_filter("ep", LOCAL, [PEER], protocols=[256])
    with pytest.raises(ValueError):
        install_peer_filter("ep", LOCAL, ["10.0.0.2; flush ruleset"], udp_ports=[VXLAN])
    with pytest.raises(ValueError):
        install_peer_filter("ep", "not an address", [PEER], udp_ports=[VXLAN])
    with pytest.raises(ValueError):
        install_peer_filter(
            "ep", LOCAL, [PEER], tcp_ports=[STT], ingress_devices=['eth0" ; flush ruleset']
        )
    with pytest.raises(ValueError):
        update_peer_set("ep", ["10.0.0.2 }"])


# -- STT: the packet tap's filter and the ingress chain ------------------------------------


def _stt_packet(src: str, payload: bytes) -> bytes:
    """An IPv4 packet with a TCP segment to LOCAL:7471, valid checksums."""
    tcp = bytearray(struct.pack("!HHIIBBHHH", 50000, STT, 1, 1, 5 << 4, 0x18, 65535, 0, 0))
    pseudo = socket.inet_aton(src) + socket.inet_aton(LOCAL)
    pseudo += struct.pack("!BBH", 0, 6, len(tcp) + len(payload))
    struct.pack_into("!H", tcp, 16, internet_checksum(pseudo + tcp + payload))
    segment = bytes(tcp) + payload
    header = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            20 + len(segment),
            1,
            0x4000,
            64,
            6,
            0,
            socket.inet_aton(src),
            socket.inet_aton(LOCAL),
        )
    )
    struct.pack_into("!H", header, 10, internet_checksum(header))
    return bytes(header) + segment


def _drain(sock: socket.socket, timeout: float = 0.5) -> list[bytes]:
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0 and select.select(
        [sock], [], [], remaining
    )[0]:
        out.append(sock.recv(70_000)[40:])
    return out


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_stt_tap_filter_with_peers_drops_a_strangers_segment(
    veth_pair: tuple[NetNS, NetNS],
) -> None:
    a, b = veth_pair
    with run_in_netns(a.name):
        tap = open_ipv4_tap(DEV_A, stt_filter(LOCAL, STT, [PEER, "2001:db8::2"]))
        unfiltered = open_ipv4_tap(DEV_A, stt_filter(LOCAL, STT))
    with tap, unfiltered, b.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as tx:
        try:
            # The peer filter at the ingress hook, ahead of STT's ingress drop: the
            # stranger's segment is counted as not from a peer, the peer's reaches
            # the STT drop.  Both ran after the taps.
            install_stt_ingress_drop([DEV_A], LOCAL, STT, "ep3", netns=a.name)
            install_peer_filter(
                "ep3", LOCAL, [PEER], tcp_ports=[STT], ingress_devices=[DEV_A], netns=a.name
            )
            for src, tag in ((STRANGER, b"stranger"), (PEER, b"peer"), (STRANGER, b"again")):
                tx.sendto(_stt_packet(src, tag), (LOCAL, 0))
            assert _drain(tap) == [b"peer"]
            assert _drain(unfiltered) == [b"stranger", b"peer", b"again"]
            assert peer_filter_drops("ep3", netns=a.name) == 2
            assert stt_ingress_drops("ep3", netns=a.name) == 1
        finally:
            remove_peer_filter("ep3", netns=a.name)
            remove_stt_ingress_drop("ep3", netns=a.name)


def test_stt_filter_peer_list_shape() -> None:
    plain = stt_filter(LOCAL, STT)
    assert stt_filter(LOCAL, STT, None) == plain
    # One load and one comparison per IPv4 peer; IPv6 peers do not count.
    assert len(stt_filter(LOCAL, STT, [PEER, STRANGER, "2001:db8::1"])) == len(plain) + 3
    assert stt_filter(LOCAL, STT, ["2001:db8::1"]) == drop_all_filter()  # no IPv4 peer
    many = [f"10.74.{i // 256}.{i % 256}" for i in range(MAX_FILTER_PEERS + 1)]
    assert stt_filter(LOCAL, STT, many) == plain  # too many: the source is not checked
    assert len(stt_filter(LOCAL, STT, many[:MAX_FILTER_PEERS])) == len(plain) + 33


# -- the endpoint's use: ports of its channels, the fallback without nft ------------------

_CONFIG = """
name = "pf"
[underlay]
local = "10.73.0.1"
mtu = 1500
sclp_carrier = "udp"
[[network]]
vni = 1
protocol = "vxlan-sclp"
tap = "tap1"
peers = ["10.73.0.2"]
[[network]]
vni = 2
protocol = "stt"
tap = "tap2"
peers = ["10.73.0.3"]
"""


def test_endpoint_guards_only_its_channels() -> None:
    cfg = parse_config(_CONFIG)
    dp = DataPath(cfg, 1500)
    assert dp.peers == {PEER, STRANGER}
    assert provision.filter_ports(cfg, dp) == ([7234], [], [STT])


def test_endpoint_starts_without_nft(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = parse_config(_CONFIG)
    monkeypatch.setattr(nft.shutil, "which", lambda _name: None)
    with contextlib.ExitStack() as stack:
        got = provision.install_peer_filter(
            cfg, DataPath(cfg, 1500), provision.UnderlaySockets(), stack
        )
    assert got is None
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "user space" in warnings[0], warnings
