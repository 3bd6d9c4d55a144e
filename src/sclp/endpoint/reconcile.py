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
limits, tuning, metrics, cluster, bgp) need a restart: :func:`restart_needed` names them.
What one reload did is a :class:`ReloadReport`: logged after SIGHUP, returned as JSON
to ``sclp reload``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sclp.endpoint.config import Config, Network

__all__ = [
    "NetworkPlan",
    "PeerChange",
    "ReloadReport",
    "plan_networks",
    "restart_needed",
    "wanted_peers",
]


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
    keys = ("name", "underlay", "limits", "control_dir", "tuning", "metrics", "cluster", "bgp")
    return [key for key in keys if getattr(current, key) != getattr(new, key)]


def wanted_peers(
    network: Network, discovered: Mapping[int, frozenset[str]], local: str
) -> frozenset[str]:
    """A network's peers: the file's ``peers`` and the cluster's members on its VNI
    (never this host itself)."""
    return (frozenset(network.peers) | discovered.get(network.vni, frozenset())) - {local}


@dataclass(frozen=True, slots=True)
class PeerChange:
    """The peers that joined and left one VNI."""

    vni: int
    joined: tuple[str, ...] = ()
    left: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ReloadReport:
    """What one reload of the configuration file did.

    ``error`` (the file could not be read or is invalid) means nothing changed.
    ``not_added`` are networks the file asks for that could not be started, with the
    reason (the others were applied); ``restart_needed`` the top-level settings that
    changed but only apply at the next start."""

    path: str | None
    error: str | None = None
    added: tuple[int, ...] = ()
    removed: tuple[int, ...] = ()
    recreated: tuple[int, ...] = ()
    not_added: tuple[tuple[int, str], ...] = ()
    peers: tuple[PeerChange, ...] = ()
    restart_needed: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """The file was valid and every network it names is served."""
        return self.error is None and not self.not_added

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed or self.recreated or self.peers)

    def lines(self) -> list[str]:
        """One line per change, as ``sclp reload`` prints them."""
        if self.error is not None:
            where = f"{self.path}: " if self.path and self.path not in self.error else ""
            return [f"{where}{self.error}; still running the previous configuration"]
        out = [f"vni {vni} added" for vni in self.added]
        out += [f"vni {vni} removed" for vni in self.removed]
        out += [
            f"vni {vni} re-created (its tunnel, ports, MTU or static entries changed)"
            for vni in self.recreated
        ]
        out += [f"vni {vni} not added: {why}" for vni, why in self.not_added]
        for change in self.peers:
            out += [f"vni {change.vni}: peer {peer} joined" for peer in change.joined]
            out += [f"vni {change.vni}: peer {peer} left" for peer in change.left]
        out += [f"[{key}] changed: restart the endpoint to apply it" for key in self.restart_needed]
        return out or ["unchanged"]

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "path": self.path,
            "error": self.error,
            "added": list(self.added),
            "removed": list(self.removed),
            "recreated": list(self.recreated),
            "not_added": [{"vni": vni, "reason": why} for vni, why in self.not_added],
            "peers": [
                {"vni": c.vni, "joined": list(c.joined), "left": list(c.left)} for c in self.peers
            ],
            "restart_needed": list(self.restart_needed),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReloadReport:
        """The inverse of :meth:`to_json`; KeyError/TypeError/ValueError if ``data``
        is not one."""
        return cls(
            path=data["path"],
            error=data["error"],
            added=tuple(int(v) for v in data["added"]),
            removed=tuple(int(v) for v in data["removed"]),
            recreated=tuple(int(v) for v in data["recreated"]),
            not_added=tuple((int(e["vni"]), str(e["reason"])) for e in data["not_added"]),
            peers=tuple(
                PeerChange(int(c["vni"]), tuple(c["joined"]), tuple(c["left"]))
                for c in data["peers"]
            ),
            restart_needed=tuple(str(k) for k in data["restart_needed"]),
        )
