"""``sclp check``: what ``sclp run`` would refuse, found without changing the system.

The file's own validation (:func:`~sclp.endpoint.config.load_config`), then the
start-time refusals that can be known by reading only: the namespaces the file names
exist, ``underlay.local`` (and a ``[metrics]`` listen address) is an address of this
host, and the underlay MTU, from ``underlay.mtu`` or else the device that holds the
local address, from which the data path computes each network's VM MTU exactly as at
start.  Nothing is created, bound or moved, and no root is needed: what cannot be read
without root (a device inside ``underlay.namespace``) is reported as known only at
start.  Every problem is one line, the one ``sclp run`` prints.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from sclp.bgp.speaker import EXABGP_MISSING
from sclp.endpoint import provision
from sclp.endpoint.config import Config, ConfigError, load_config
from sclp.endpoint.datapath import DataPath
from sclp.endpoint.provision import EndpointError
from sclp.io import netns as nsio

__all__ = ["CheckReport", "check_config"]

AT_START = "from the device at start"


@dataclass(frozen=True, slots=True)
class CheckReport:
    """A valid configuration: the file, what it says, the underlay MTU (None: known
    only at start) with where it comes from, and each network's VM MTU by VNI."""

    path: str
    cfg: Config
    underlay_mtu: int | None
    mtu_source: str
    vm_mtus: dict[int, int | None]

    def line(self) -> str:
        """``ok: FILE: N network(s) (vni 42 vxlan-sclp mtu 1500, ...), peers ...,
        cluster on|off, underlay mtu ...``"""
        cfg = self.cfg
        nets = ", ".join(
            f"vni {n.vni} {n.protocol.value} mtu {self.vm_mtus[n.vni] or '(at start)'}"
            for n in cfg.networks
        )
        peers = sorted({p for n in cfg.networks for p in n.peers})
        cluster = "cluster off"
        if cfg.cluster is not None:
            tls = ", tls" if any((cfg.cluster.ca, cfg.cluster.cert)) else ""
            cluster = f"cluster on ({', '.join(cfg.cluster.etcd)}{tls})"
        if cfg.bgp is not None:
            count = len(cfg.bgp.neighbors)
            cluster += f", bgp AS {cfg.bgp.asn} ({count} neighbor{'s' if count > 1 else ''})"
        if self.underlay_mtu is None:
            mtu = f"underlay mtu: {self.mtu_source}"
        else:
            mtu = f"underlay mtu {self.underlay_mtu} ({self.mtu_source})"
        return (
            f"ok: {self.path}: endpoint {cfg.name}, {len(cfg.networks)} network(s) ({nets}), "
            f"peers {', '.join(peers) or '(none in the file)'}, {cluster}, {mtu}"
        )


def check_config(path: str | Path, *, host: bool = True) -> CheckReport:
    """Validate ``path`` as ``sclp run`` would before touching the system; raise
    :class:`ConfigError` or :class:`EndpointError` with its one line.  ``host=False``
    checks the file alone (one written for another machine): no namespaces, no
    addresses, and the MTU only from ``underlay.mtu``."""
    cfg = load_config(path)
    if cfg.bgp is not None and importlib.util.find_spec("exabgp") is None:
        raise EndpointError(f"bgp: {EXABGP_MISSING}")
    mtu, source = cfg.underlay.mtu, "underlay.mtu"
    if host:
        mtu, source = _check_host(cfg)
    elif mtu is None:
        source = AT_START
    vm_mtus: dict[int, int | None] = {n.vni: n.mtu for n in cfg.networks}
    if mtu is not None:
        try:
            dp = DataPath(cfg, mtu)
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        vm_mtus = {vni: net.vm_mtu for vni, net in dp.networks.items()}
    return CheckReport(str(path), cfg, mtu, source, vm_mtus)


def _check_host(cfg: Config) -> tuple[int | None, str]:
    """The refusals of a start on this host that reading can find; the underlay MTU
    and where it comes from."""
    try:
        error = provision.missing_namespaces(cfg)
    except ValueError as exc:  # a namespace name no path can hold ('a/b')
        raise EndpointError(f"{exc}; use a name like those of `ip netns list`") from None
    if error is not None:
        raise error
    netns = cfg.underlay.namespace
    if netns and os.geteuid() != 0:
        # Looking inside another namespace needs CAP_SYS_ADMIN (setns).
        return cfg.underlay.mtu, "underlay.mtu" if cfg.underlay.mtu else AT_START
    try:
        with nsio.NetNS(netns) as ns:
            mtu, device = _address_device(ns, cfg.underlay.local)
            if mtu is None:
                raise provision.not_local(cfg.underlay.local)
            listen = cfg.metrics.listen
            if (
                listen is not None
                and not _unspecified(listen[0])
                and _address_device(ns, listen[0])[0] is None
            ):
                raise EndpointError(
                    f"metrics.listen {listen[0]}:{listen[1]}: {listen[0]} is not an "
                    "address of this host; use one of this host's addresses or 127.0.0.1"
                )
    except nsio.NetnsError:
        return cfg.underlay.mtu, "underlay.mtu" if cfg.underlay.mtu else AT_START
    if cfg.underlay.mtu:
        return cfg.underlay.mtu, "underlay.mtu"
    return mtu, f"device {device}"


def _address_device(ns: nsio.NetNS, address: str) -> tuple[int | None, str]:
    """The MTU and name of the device that holds ``address`` (None if none does)."""
    for msg in ns.ipr.get_addr(address=address):
        link = ns.ipr.get_links(msg["index"])[0]
        return int(link.get_attr("IFLA_MTU")), str(link.get_attr("IFLA_IFNAME"))
    return None, ""


def _unspecified(host: str) -> bool:
    return host in ("0.0.0.0", "::")
