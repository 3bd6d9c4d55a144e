"""Reconcile, don't restart: what changes when a new desired state arrives.

Two sources change what a running endpoint should serve (docs/architecture.md, layer 6):
the TOML file, re-read on ``SIGHUP``, and the cluster registry on etcd, whose members
are peers.  This module only *plans* (pure functions, unit-tested): which networks to
add, remove or re-create, and which peers each network gains or loses; the endpoint
(:mod:`sclp.endpoint.nve`) carries the plan out, touching only what the plan names,
so the traffic of networks that did not change goes on untouched.

A network whose tunnel, ports, MTU or static entries changed is re-created (removed,
then added: its FDB starts empty); one whose only change is its ``peers`` keeps
running and has its peers replaced.  Changes outside ``[[network]]`` (underlay,
limits, tuning, metrics, cluster) need a restart: :func:`restart_needed` names them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from sclp.endpoint.config import Config, Network

__all__ = ["NetworkPlan", "plan_networks", "restart_needed", "wanted_peers"]


@dataclass(frozen=True, slots=True)
class NetworkPlan:
    """VNIs to remove, networks to add, VNIs to re-create (remove, then add the new
    definition) and VNIs whose static peers changed."""

    remove: tuple[int, ...] = ()
    add: tuple[Network, ...] = ()
    recreate: tuple[Network, ...] = ()
    peers: tuple[Network, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.remove or self.add or self.recreate or self.peers)


def plan_networks(current: Mapping[int, Network], new: Mapping[int, Network]) -> NetworkPlan:
    """The smallest change that turns ``current`` into ``new`` (both by VNI)."""
    remove = tuple(sorted(vni for vni in current if vni not in new))
    add = tuple(net for vni, net in sorted(new.items()) if vni not in current)
    recreate: list[Network] = []
    peers: list[Network] = []
    for vni, net in sorted(new.items()):
        old = current.get(vni)
        if old is None or old == net:
            continue
        if dataclasses.replace(old, peers=net.peers) == net:
            peers.append(net)
        else:
            recreate.append(net)
    return NetworkPlan(remove, add, tuple(recreate), tuple(peers))


def restart_needed(current: Config, new: Config) -> list[str]:
    """The top-level settings that differ and that only a restart applies."""
    keys = ("name", "underlay", "limits", "control_dir", "tuning", "metrics", "cluster")
    return [key for key in keys if getattr(current, key) != getattr(new, key)]


def wanted_peers(
    network: Network, discovered: Mapping[int, frozenset[str]], local: str
) -> frozenset[str]:
    """A network's peers: the file's ``peers`` and the cluster's members on its VNI
    (never this host itself)."""
    return (frozenset(network.peers) | discovered.get(network.vni, frozenset())) - {local}
