"""Network namespaces, links, addresses and offloads over netlink (pyroute2), no ``ip``.

Strategy: instead of letting pyroute2 fork a helper process per namespace-bound
socket, :func:`run_in_netns` moves *the calling thread* into the namespace with
``setns(2)`` (Linux switches network namespaces per thread), creates whatever it needs
there, and moves back.  A socket, netlink socket or TAP keeps the namespace it was
created in for its whole life, so everything created inside the ``with`` block keeps
working from any thread afterwards.  :class:`NetNS` builds on that: one netlink
(``IPRoute``) socket per namespace, opened lazily, and small methods for what the
endpoint and the tests configure (link up/MTU/MAC/``gso_max_size``, addresses, routes,
static neighbours, veth pairs, moving a link, ethtool features, sysctls).

Ethtool features go through :mod:`pyroute2.ethtool` (the ``ETHTOOL_[GS]FEATURES``
ioctls on a socket created inside the namespace), so no ``ethtool`` binary is needed.

Errors name the namespace and the operation: :class:`NetnsError` (an ``OSError`` with
the kernel's errno) replaces pyroute2's bare ``NetlinkError``.

Size: a little over 500 lines, kept as one module on purpose: every method is a thin
netlink call with its error translation, and splitting them by object (links,
addresses, routes) would split :class:`NetNS`, the one handle callers hold.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import os
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Self

from pyroute2 import IPRoute
from pyroute2 import netns as _pyroute2_netns
from pyroute2.ethtool import Ethtool
from pyroute2.ethtool.ioctl import NotSupportedError
from pyroute2.netlink.exceptions import NetlinkError

from sclp.io.linux import CLONE_NEWNET, NUD_PERMANENT

__all__ = [
    "NETNS_RUN_DIR",
    "LinkInfo",
    "NetNS",
    "NetnsError",
    "create_netns",
    "create_veth",
    "delete_netns",
    "list_netns",
    "move_link",
    "netns_exists",
    "netns_path",
    "run_in_netns",
]

NETNS_RUN_DIR: Final = "/var/run/netns"  # where `ip netns` and pyroute2 bind-mount names
_THIS_THREAD_NETNS: Final = "/proc/thread-self/ns/net"

_libc = ctypes.CDLL(None, use_errno=True)

# ethtool -K short names (the ones we use) -> kernel feature names.
FEATURE_ALIASES: Final[Mapping[str, tuple[str, ...]]] = {
    "gro": ("rx-gro",),
    "lro": ("rx-lro",),
    "gso": ("tx-generic-segmentation",),
    "tso": ("tx-tcp-segmentation", "tx-tcp6-segmentation"),
    "sg": ("tx-scatter-gather",),
    "rx": ("rx-checksum",),
    "tx": ("tx-checksum-ip-generic",),
}


class NetnsError(OSError):
    """A namespace or netlink operation failed; the message names the namespace."""


def netns_path(name: str) -> str:
    """The bind-mount that names namespace ``name`` (``/var/run/netns/<name>``)."""
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"invalid network namespace name {name!r}")
    return f"{NETNS_RUN_DIR}/{name}"


def netns_exists(name: str) -> bool:
    return os.path.exists(netns_path(name))


def list_netns() -> list[str]:
    """Names of the namespaces under :data:`NETNS_RUN_DIR`, sorted."""
    try:
        return sorted(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return []


def _missing(name: str) -> NetnsError:
    return NetnsError(
        errno.ENOENT,
        f"network namespace {name!r} does not exist; create it with "
        f"sclp.io.netns.create_netns({name!r}) or `ip netns add {name}`",
    )


def create_netns(name: str, *, loopback_up: bool = False) -> NetNS:
    """Create the named namespace (like ``ip netns add``) and return a handle on it;
    with ``loopback_up`` its ``lo`` is brought up (what a host or VM of the lab needs),
    and if that fails the namespace is deleted again.  Raises :class:`NetnsError`
    (EEXIST) if it exists already, EPERM without root."""
    path = netns_path(name)
    if os.path.exists(path):
        raise NetnsError(
            errno.EEXIST,
            f"network namespace {name!r} already exists; pick another name or "
            f"delete it with sclp.io.netns.delete_netns({name!r})",
        )
    try:
        _pyroute2_netns.create(name)
    except OSError as exc:
        raise NetnsError(
            exc.errno or errno.EIO, f"creating network namespace {name!r} failed: {exc}"
        ) from exc
    if not os.path.exists(path):
        raise NetnsError(errno.EIO, f"creating network namespace {name!r} failed (no {path})")
    ns = NetNS(name)
    if loopback_up:
        try:
            ns.set_link("lo", up=True)
        except BaseException:
            ns.delete()
            raise
    return ns


def delete_netns(name: str) -> None:
    """Remove the named namespace (like ``ip netns del``).  Idempotent: a missing
    namespace is not an error.  Interfaces in it vanish once no process or open
    descriptor (socket, TAP) keeps the namespace alive."""
    if not os.path.exists(netns_path(name)):
        return
    try:
        _pyroute2_netns.remove(name)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise NetnsError(
            exc.errno or errno.EIO, f"deleting network namespace {name!r} failed: {exc}"
        ) from exc


def _setns(fd: int, what: str) -> None:
    if int(_libc.setns(fd, CLONE_NEWNET)) != 0:
        code = ctypes.get_errno()
        raise NetnsError(code, f"setns({what}) failed: {os.strerror(code)}")


def _open_netns(name: str) -> int:
    try:
        return os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _missing(name) from None


@contextlib.contextmanager
def run_in_netns(name: str | None) -> Iterator[None]:
    """Run the ``with`` body with the calling thread inside namespace ``name``.

    Sockets, netlink sockets and TAP devices created in the body belong to ``name``
    for good; use them from any thread afterwards.  The thread returns to its previous
    namespace on exit, even on an exception.  ``None`` means "stay where you are"
    (so callers can pass an optional namespace through).  Only the calling thread
    moves: threads started inside the body inherit ``name``.

    Raises :class:`NetnsError` if the namespace does not exist or ``setns`` fails
    (EPERM without CAP_SYS_ADMIN).
    """
    if name is None:
        yield
        return
    target = _open_netns(name)
    try:
        saved = os.open(_THIS_THREAD_NETNS, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target, name)
            try:
                yield
            finally:
                _setns(saved, "back to the previous namespace")
        finally:
            os.close(saved)
    finally:
        os.close(target)


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """What :meth:`NetNS.link_info` reports about one interface."""

    index: int
    name: str
    mtu: int
    mac: str
    up: bool
    gso_max_size: int
    gso_max_segs: int
    tso_max_size: int
    rx_packets: int
    rx_bytes: int
    tx_packets: int
    tx_bytes: int
    rx_dropped: int
    tx_dropped: int
    kind: str = ""  # IFLA_INFO_KIND: "veth", "tun", ... ("" for a plain device)
    max_mtu: int = 0  # IFLA_MAX_MTU (0: not reported)


class NetNS:
    """A handle on one named network namespace (``None``: the namespace the calling
    thread is in when the netlink socket is first needed).

    Holds one netlink socket (opened lazily inside the namespace); close it with
    :meth:`close` or use the handle as a context manager.  Closing the handle does not
    delete the namespace (:meth:`delete` does).  Not thread-safe: one thread at a time.
    """

    __slots__ = ("_ipr", "name")

    def __init__(self, name: str | None = None) -> None:
        if name is not None and not netns_exists(name):
            raise _missing(name)
        self.name = name
        self._ipr: Any = None

    def __repr__(self) -> str:
        return f"NetNS({self.name!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def label(self) -> str:
        return "the current namespace" if self.name is None else f"namespace {self.name!r}"

    @property
    def ipr(self) -> Any:
        """The namespace's pyroute2 ``IPRoute`` (for anything the methods do not cover)."""
        if self._ipr is None:
            with run_in_netns(self.name):
                self._ipr = IPRoute()
        return self._ipr

    def close(self) -> None:
        if self._ipr is not None:
            ipr, self._ipr = self._ipr, None
            ipr.close()

    def delete(self) -> None:
        """Close the handle and delete the namespace (idempotent)."""
        self.close()
        if self.name is not None:
            delete_netns(self.name)

    def open_fd(self) -> int:
        """A new descriptor on the namespace (for ``IFLA_NET_NS_FD``); caller closes."""
        if self.name is None:
            return os.open(_THIS_THREAD_NETNS, os.O_RDONLY | os.O_CLOEXEC)
        return _open_netns(self.name)

    @contextlib.contextmanager
    def _netlink(self, what: str) -> Iterator[None]:
        try:
            yield
        except NetlinkError as exc:
            raise NetnsError(exc.code, f"{self.label}: {what} failed: {exc}") from None

    # -- sockets -----------------------------------------------------------------------

    def socket(
        self, family: int = socket.AF_INET, type: int = socket.SOCK_DGRAM, proto: int = 0
    ) -> socket.socket:
        """A new socket that lives in this namespace."""
        with run_in_netns(self.name):
            return socket.socket(family, type, proto)

    # -- links -------------------------------------------------------------------------

    def link_index(self, ifname: str) -> int:
        """The interface index of ``ifname``; NetnsError (ENODEV) if there is none."""
        with self._netlink(f"looking up {ifname!r}"):
            found = self.ipr.link_lookup(ifname=ifname)
        if not found:
            raise NetnsError(errno.ENODEV, f"no interface {ifname!r} in {self.label}")
        return int(found[0])

    def link_exists(self, ifname: str) -> bool:
        with self._netlink(f"looking up {ifname!r}"):
            return bool(self.ipr.link_lookup(ifname=ifname))

    def set_link(
        self,
        ifname: str,
        *,
        up: bool | None = None,
        mtu: int | None = None,
        mac: str | None = None,
        gso_max_size: int | None = None,
    ) -> None:
        """Change the given properties of ``ifname`` (None leaves one alone).  MTU,
        MAC and ``gso_max_size`` are applied before bringing the link up."""
        index = self.link_index(ifname)
        attrs: dict[str, Any] = {}
        if mtu is not None:
            attrs["mtu"] = mtu
        if mac is not None:
            attrs["address"] = mac
        if gso_max_size is not None:
            attrs["gso_max_size"] = gso_max_size
        if attrs:
            with self._netlink(f"setting {attrs} on {ifname!r}"):
                self.ipr.link("set", index=index, **attrs)
        if up is not None:
            with self._netlink(f"bringing {ifname!r} {'up' if up else 'down'}"):
                self.ipr.link("set", index=index, state="up" if up else "down")

    def link_info(self, ifname: str) -> LinkInfo:
        index = self.link_index(ifname)
        with self._netlink(f"reading {ifname!r}"):
            msg = self.ipr.get_links(index)[0]
        stats = msg.get_attr("IFLA_STATS64") or {}

        def stat(key: str) -> int:
            return int(stats.get(key, 0)) if stats else 0

        return LinkInfo(
            index=index,
            name=str(msg.get_attr("IFLA_IFNAME")),
            mtu=int(msg.get_attr("IFLA_MTU") or 0),
            mac=str(msg.get_attr("IFLA_ADDRESS") or ""),
            up=bool(msg["flags"] & 1),  # IFF_UP
            gso_max_size=int(msg.get_attr("IFLA_GSO_MAX_SIZE") or 0),
            gso_max_segs=int(msg.get_attr("IFLA_GSO_MAX_SEGS") or 0),
            tso_max_size=int(msg.get_attr("IFLA_TSO_MAX_SIZE") or 0),
            rx_packets=stat("rx_packets"),
            rx_bytes=stat("rx_bytes"),
            tx_packets=stat("tx_packets"),
            tx_bytes=stat("tx_bytes"),
            rx_dropped=stat("rx_dropped"),
            tx_dropped=stat("tx_dropped"),
            kind=str(msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") or ""),
            max_mtu=int(msg.get_attr("IFLA_MAX_MTU") or 0),
        )

    def add_address(self, ifname: str, cidr: str) -> None:
        """Add ``cidr`` (``"10.0.0.1/24"`` or ``"fd00::1/64"``) to ``ifname``.  Adding an
        address that is already there is not an error."""
        iface = ipaddress.ip_interface(cidr)
        index = self.link_index(ifname)
        try:
            with self._netlink(f"adding {cidr} to {ifname!r}"):
                self.ipr.addr(
                    "add",
                    index=index,
                    address=str(iface.ip),
                    prefixlen=iface.network.prefixlen,
                )
        except NetnsError as exc:
            if exc.errno != errno.EEXIST:
                raise

    def addresses(self, ifname: str) -> list[str]:
        """The addresses of ``ifname`` as ``"ip/prefixlen"`` strings."""
        index = self.link_index(ifname)
        with self._netlink(f"listing addresses of {ifname!r}"):
            msgs = self.ipr.get_addr(index=index)
        return [f"{m.get_attr('IFA_ADDRESS')}/{m['prefixlen']}" for m in msgs]

    def add_route(self, dst: str, *, via: str | None = None, dev: str | None = None) -> None:
        """Add a route to ``dst`` (a CIDR, or ``"default"``) via a gateway and/or out
        of an interface."""
        if via is None and dev is None:
            raise ValueError("add_route needs via= and/or dev=")
        spec: dict[str, Any] = {"dst": "0.0.0.0/0" if dst == "default" else dst}
        if via is not None:
            spec["gateway"] = via
        if dev is not None:
            spec["oif"] = self.link_index(dev)
        with self._netlink(f"adding route {dst}"):
            self.ipr.route("add", **spec)

    def add_neighbor(self, ifname: str, ip: str, mac: str) -> None:
        """A permanent ARP/ND entry: ``ip`` is at ``mac`` on ``ifname``."""
        index = self.link_index(ifname)
        with self._netlink(f"adding neighbour {ip} on {ifname!r}"):
            self.ipr.neigh("replace", dst=ip, lladdr=mac, ifindex=index, state=NUD_PERMANENT)

    # -- ethtool features --------------------------------------------------------------

    def get_offloads(self, ifname: str) -> dict[str, bool]:
        """Every ethtool feature of ``ifname`` and whether it is on (``ethtool -k``)."""
        self.link_index(ifname)  # clear error for a missing interface
        with run_in_netns(self.name), Ethtool() as tool:
            features = tool.get_features(ifname).features
        return {name: bool(f.enable) for name, f in features.items()}

    def set_offloads(self, ifname: str, features: Mapping[str, bool]) -> None:
        """Switch ethtool features of ``ifname`` (``ethtool -K``).  Keys are kernel
        feature names (``"rx-gro-list"``, ``"rx-udp-gro-forwarding"``) or the short
        names in :data:`FEATURE_ALIASES` (``"gro"``, ``"tso"``, ...).  Raises
        :class:`NetnsError` for an unknown name or a feature the driver would not
        change (fixed), naming them."""
        wanted: dict[str, bool] = {}
        for key, value in features.items():
            for name in FEATURE_ALIASES.get(key, (key,)):
                wanted[name] = bool(value)
        self.link_index(ifname)
        with run_in_netns(self.name), Ethtool() as tool:
            current = tool.get_features(ifname)
            unknown = sorted(set(wanted) - set(current.features))
            if unknown:
                raise NetnsError(
                    errno.EINVAL, f"{self.label}: {ifname!r} has no ethtool feature {unknown}"
                )
            for name, value in wanted.items():
                current.features[name].enable = value
            try:
                tool.set_features(ifname, current)
            except NotSupportedError:
                pass  # the ioctl did not apply every wish; the check below names them
            except OSError as exc:
                raise NetnsError(
                    exc.errno or errno.EIO,
                    f"{self.label}: setting features {wanted} on {ifname!r} failed: {exc}",
                ) from exc
            after = tool.get_features(ifname).features
        refused = sorted(name for name, value in wanted.items() if after[name].enable != value)
        if refused:
            raise NetnsError(
                errno.EOPNOTSUPP,
                f"{self.label}: {ifname!r} would not change feature(s) {refused} (fixed)",
            )

    # -- sysctl ------------------------------------------------------------------------

    def write_sysctl(self, key: str, value: str | int) -> None:
        """Set a per-namespace sysctl such as ``net.ipv4.ip_forward``."""
        with run_in_netns(self.name), open(_sysctl_path(key), "w") as f:
            f.write(f"{value}\n")

    def read_sysctl(self, key: str) -> str:
        with run_in_netns(self.name), open(_sysctl_path(key)) as f:
            return f.read().strip()


def _sysctl_path(key: str) -> str:
    if not key.startswith("net.") or ".." in key or "/" in key:
        raise ValueError(f"only net.* sysctls are per namespace, got {key!r}")
    return "/proc/sys/" + key.replace(".", "/")


def _as_netns(ns: NetNS | str | None) -> NetNS:
    return ns if isinstance(ns, NetNS) else NetNS(ns)


def create_veth(
    name_a: str,
    ns_a: NetNS | str | None,
    name_b: str,
    ns_b: NetNS | str | None,
    *,
    mtu: int | None = None,
    up: bool = True,
) -> None:
    """Create the veth pair ``name_a`` (in ``ns_a``) <-> ``name_b`` (in ``ns_b``), set
    the MTU on both ends if given and bring both up.  Namespaces are handles, names,
    or None for the calling thread's namespace."""
    a, b = _as_netns(ns_a), _as_netns(ns_b)
    owned = [ns for ns, arg in ((a, ns_a), (b, ns_b)) if not isinstance(arg, NetNS)]
    try:
        peer_fd = b.open_fd()
        try:
            peer: dict[str, Any] = {"ifname": name_b, "net_ns_fd": peer_fd}
            with a._netlink(f"creating veth {name_a!r} <-> {name_b!r}"):
                a.ipr.link("add", ifname=name_a, kind="veth", peer=peer)
        finally:
            os.close(peer_fd)
        for ns, name in ((a, name_a), (b, name_b)):
            ns.set_link(name, mtu=mtu, up=up or None)
    finally:
        for ns in owned:
            ns.close()


def move_link(
    ifname: str,
    src: NetNS | str | None,
    dst: NetNS | str | None,
    *,
    address: str | None = None,
    mtu: int | None = None,
    mac: str | None = None,
    up: bool = True,
) -> int:
    """Move interface ``ifname`` (a TAP, a veth end, ...) from ``src`` to ``dst`` and
    configure it there: MAC, MTU, address (CIDR) and up.  Returns its index in
    ``dst``.  A TAP's file descriptor keeps working after the move."""
    s, d = _as_netns(src), _as_netns(dst)
    owned = [ns for ns, arg in ((s, src), (d, dst)) if not isinstance(arg, NetNS)]
    try:
        index = s.link_index(ifname)
        fd = d.open_fd()
        try:
            with s._netlink(f"moving {ifname!r} to {d.label}"):
                s.ipr.link("set", index=index, net_ns_fd=fd)
        finally:
            os.close(fd)
        d.set_link(ifname, mtu=mtu, mac=mac)
        if address is not None:
            d.add_address(ifname, address)
        if up:
            d.set_link(ifname, up=True)
        return d.link_index(ifname)
    finally:
        for ns in owned:
            ns.close()
