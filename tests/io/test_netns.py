"""sclp.io.netns against the real kernel: namespaces, veth, addresses, offloads, setns."""

from __future__ import annotations

import errno
import os
import socket
import threading
import uuid
from collections.abc import Callable

import pytest

from sclp.io.netns import (
    NetNS,
    NetnsError,
    create_netns,
    create_veth,
    delete_netns,
    list_netns,
    move_link,
    netns_exists,
    netns_path,
    run_in_netns,
)

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]

NsFactory = Callable[[], NetNS]


def _thread_netns_inode() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def _udp_roundtrip(tx: NetNS, rx: NetNS, rx_ip: str) -> bytes:
    receiver = rx.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = tx.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with receiver, sender:
        receiver.bind((rx_ip, 0))
        receiver.settimeout(5)
        sender.sendto(b"across", (rx_ip, receiver.getsockname()[1]))
        return receiver.recv(100)


def test_create_list_delete_roundtrip(netns_factory: NsFactory) -> None:
    name = f"sclpt-{uuid.uuid4().hex[:10]}"
    ns = create_netns(name)
    try:
        assert netns_exists(name)
        assert name in list_netns()
        with pytest.raises(NetnsError) as info:
            create_netns(name)
        assert info.value.errno == errno.EEXIST
    finally:
        ns.delete()
    assert not netns_exists(name)
    delete_netns(name)  # idempotent: no error the second time
    ns.delete()


def test_create_with_loopback_up(netns_factory: NsFactory) -> None:
    name = f"sclpt-{uuid.uuid4().hex[:10]}"
    ns = create_netns(name, loopback_up=True)
    try:
        assert ns.link_info("lo").up
        with create_netns(f"sclpt-{uuid.uuid4().hex[:10]}") as plain:
            try:
                assert not plain.link_info("lo").up  # the default leaves lo as it is: down
            finally:
                plain.delete()
    finally:
        ns.delete()


def test_missing_namespace_error_says_how_to_create_it() -> None:
    name = f"sclpt-missing-{uuid.uuid4().hex[:6]}"
    with pytest.raises(NetnsError, match=r"does not exist; create it with") as info:
        NetNS(name)
    assert info.value.errno == errno.ENOENT
    with pytest.raises(NetnsError, match=name), run_in_netns(name):
        pass


def test_invalid_names_are_refused() -> None:
    for bad in ("", "a/b", ".."):
        with pytest.raises(ValueError):
            netns_path(bad)


def test_run_in_netns_switches_the_thread_and_restores_it(netns: NetNS) -> None:
    assert netns.name is not None
    before = _thread_netns_inode()
    target = os.stat(netns_path(netns.name)).st_ino
    assert before != target
    with run_in_netns(netns.name):
        assert _thread_netns_inode() == target
    assert _thread_netns_inode() == before
    with pytest.raises(RuntimeError), run_in_netns(netns.name):
        raise RuntimeError("body failed")
    assert _thread_netns_inode() == before
    with run_in_netns(None):
        assert _thread_netns_inode() == before


def test_run_in_netns_moves_only_the_calling_thread(netns: NetNS) -> None:
    assert netns.name is not None
    main_before = _thread_netns_inode()
    inside = threading.Event()
    release = threading.Event()
    seen: list[int] = []

    def worker() -> None:
        with run_in_netns(netns.name):
            seen.append(_thread_netns_inode())
            inside.set()
            release.wait(10)

    t = threading.Thread(target=worker)
    t.start()
    try:
        assert inside.wait(10)
        assert _thread_netns_inode() == main_before
        assert seen == [os.stat(netns_path(netns.name)).st_ino]
    finally:
        release.set()
        t.join(10)


def test_socket_keeps_its_namespace(netns_factory: NsFactory) -> None:
    a, b = netns_factory(), netns_factory()
    create_veth("sclpva", a, "sclpvb", b, mtu=1400)
    a.add_address("sclpva", "10.77.0.1/24")
    b.add_address("sclpvb", "10.77.0.2/24")
    # 10.77.0.1 exists only in `a`: binding works for a socket made there, even though
    # the bind happens after the thread has left the namespace.
    with run_in_netns(a.name):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.bind(("10.77.0.1", 0))
    plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with plain, pytest.raises(OSError) as info:
        plain.bind(("10.77.0.1", 0))
    assert info.value.errno == errno.EADDRNOTAVAIL
    assert _udp_roundtrip(a, b, "10.77.0.2") == b"across"
    assert _udp_roundtrip(b, a, "10.77.0.1") == b"across"


def test_veth_link_properties(netns_factory: NsFactory) -> None:
    a, b = netns_factory(), netns_factory()
    create_veth("sclpva", a, "sclpvb", b, mtu=1400)
    info = a.link_info("sclpva")
    assert info.name == "sclpva"
    assert info.mtu == 1400
    assert info.up
    assert b.link_info("sclpvb").mtu == 1400
    assert not a.link_exists("sclpvb")
    assert b.link_exists("sclpvb")
    a.set_link("sclpva", mtu=9000, mac="02:11:22:33:44:55", gso_max_size=32768)
    info = a.link_info("sclpva")
    assert (info.mtu, info.mac, info.gso_max_size) == (9000, "02:11:22:33:44:55", 32768)
    a.set_link("sclpva", up=False)
    assert not a.link_info("sclpva").up
    a.add_address("sclpva", "10.78.0.1/24")
    a.add_address("sclpva", "10.78.0.1/24")  # already there: not an error
    a.add_address("sclpva", "fd00:78::1/64")
    assert "10.78.0.1/24" in a.addresses("sclpva")
    assert "fd00:78::1/64" in a.addresses("sclpva")
    with pytest.raises(NetnsError, match=r"no interface 'nosuch0'") as exc_info:
        a.link_index("nosuch0")
    assert exc_info.value.errno == errno.ENODEV


def test_netlink_errors_become_netns_errors(netns: NetNS) -> None:
    create_veth("sclpva", netns, "sclpvb", netns)
    with pytest.raises(NetnsError, match=r"namespace 'sclpt-.*sclpva") as info:
        netns.set_link("sclpva", mtu=10)  # below the minimum MTU
    assert info.value.errno == errno.EINVAL


def test_move_link_and_configure(netns_factory: NsFactory) -> None:
    a, b = netns_factory(), netns_factory()
    create_veth("sclpva", a, "sclpvb", a)
    index = move_link("sclpvb", a, b, address="10.79.0.2/24", mtu=1300, mac="02:00:00:00:79:02")
    assert not a.link_exists("sclpvb")
    info = b.link_info("sclpvb")
    assert (info.index, info.mtu, info.mac, info.up) == (index, 1300, "02:00:00:00:79:02", True)
    a.set_link("sclpva", mtu=1300)
    a.add_address("sclpva", "10.79.0.1/24")
    assert _udp_roundtrip(a, b, "10.79.0.2") == b"across"


def test_routes_and_neighbors(netns_factory: NsFactory) -> None:
    a, b = netns_factory(), netns_factory()
    create_veth("sclpva", a, "sclpvb", b)
    a.add_address("sclpva", "10.80.0.1/24")
    b.add_address("sclpvb", "10.80.0.2/24")
    b.add_address("lo", "10.81.0.9/32")
    a.add_route("10.81.0.0/24", via="10.80.0.2")
    a.add_neighbor("sclpva", "10.80.0.2", b.link_info("sclpvb").mac)
    assert _udp_roundtrip(a, b, "10.81.0.9") == b"across"
    with pytest.raises(ValueError):
        a.add_route("10.82.0.0/24")


def test_offloads_get_and_set(netns_factory: NsFactory) -> None:
    a, b = netns_factory(), netns_factory()
    create_veth("sclpva", a, "sclpvb", b)
    features = a.get_offloads("sclpva")
    assert "rx-gro" in features
    assert "tx-tcp-segmentation" in features
    a.set_offloads("sclpva", {"gro": True, "rx-udp-gro-forwarding": True})
    after = a.get_offloads("sclpva")
    assert after["rx-gro"] and after["rx-udp-gro-forwarding"]
    a.set_offloads("sclpva", {"tso": False})
    after = a.get_offloads("sclpva")
    assert not after["tx-tcp-segmentation"]
    assert not after["tx-tcp6-segmentation"]
    assert b.get_offloads("sclpvb")["tx-tcp-segmentation"]  # the peer is untouched
    with pytest.raises(NetnsError, match=r"no ethtool feature \['no-such-feature'\]"):
        a.set_offloads("sclpva", {"no-such-feature": True})
    with pytest.raises(NetnsError, match=r"fixed"):
        a.set_offloads("lo", {"rx-gro-hw": True})  # lo has no hardware GRO


def test_sysctl_is_per_namespace(netns_factory: NsFactory) -> None:
    # A new namespace inherits the host's IPv4 settings (ip_forward is 1 on a host
    # running podman, Docker or Kubernetes): flip b's value in a, whatever it is.
    a, b = netns_factory(), netns_factory()
    before = b.read_sysctl("net.ipv4.ip_forward")
    flipped = "0" if before == "1" else "1"
    a.write_sysctl("net.ipv4.ip_forward", flipped)
    assert a.read_sysctl("net.ipv4.ip_forward") == flipped
    assert b.read_sysctl("net.ipv4.ip_forward") == before
    with pytest.raises(ValueError):
        a.read_sysctl("kernel.hostname")
