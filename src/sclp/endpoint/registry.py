"""The endpoint's side of the cluster registry (``[cluster]``, docs/cluster.md).

:class:`~sclp.cluster.agent.ClusterAgent` talks to etcd in its own thread; this link
carries its views into the event loop and the endpoint's MACs out to it:

- the agent's ``on_view`` puts the view on a queue and writes a byte to a pipe the
  runner watches, so the loop wakes, takes the *newest* view (older ones are
  superseded) and hands it to the endpoint, which reconciles its peers to it
  (:mod:`sclp.endpoint.reconcile`) — the data path is only ever touched by the loop;
- once a second (:meth:`RegistryLink.publish`) the MACs learned behind this host's
  ports are announced per VNI, when they changed;
- :meth:`RegistryLink.conflicts` turns the view's mismatch lines into one log line and
  one ``cluster_conflicts`` count each, the first time they appear.

While etcd is away the agent keeps its last view and the data path keeps forwarding
on it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
from collections.abc import Callable

from sclp.cluster.agent import ClusterAgent
from sclp.cluster.model import ClusterView, Member
from sclp.endpoint.config import Config
from sclp.endpoint.datapath import DataPath
from sclp.endpoint.stats import ClusterStats

log = logging.getLogger("sclp")

__all__ = ["RegistryLink", "member_of"]


def member_of(cfg: Config) -> Member:
    """This endpoint as the registry lists it."""
    return Member(
        name=cfg.name,
        address=cfg.underlay.local,
        carrier=cfg.underlay.sclp_carrier.value,
        sclp_udp_port=cfg.underlay.sclp_udp_port,
        networks={n.vni: n.protocol.value for n in cfg.networks},
        vxlan_port=cfg.underlay.vxlan_port,
        geneve_port=cfg.underlay.geneve_port,
    )


class RegistryLink:
    """One endpoint's agent, the pipe its views come through, and what was announced."""

    def __init__(self, cfg: Config, on_view: Callable[[ClusterView], None]) -> None:
        cluster = cfg.cluster
        assert cluster is not None
        self.cluster = cluster
        self._on_view = on_view
        self._views: queue.SimpleQueue[ClusterView] = queue.SimpleQueue()
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._published: dict[int, frozenset[bytes]] = {}
        self._conflicts: set[str] = set()
        self.agent = ClusterAgent(
            cluster.etcd,
            cluster.prefix,
            cluster.lease_ttl,
            member_of(cfg),
            self._handed_over,
            ca=cluster.ca,
            cert=cluster.cert,
            key=cluster.key,
        )

    def fileno(self) -> int:
        """Readable when a view waits: the loop calls :meth:`drain` then."""
        return self._read_fd

    def start(self) -> None:
        self.agent.start()

    def close(self) -> None:
        """Stop the agent (revoking its lease: the others drop this host at once)."""
        self.agent.stop()
        for fd in (self._read_fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _handed_over(self, view: ClusterView) -> None:  # the agent's thread
        self._views.put(view)
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._write_fd, b"v")

    def drain(self, now: float) -> None:  # the loop
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read_fd, 4096):
                pass
        view = None
        while not self._views.empty():
            view = self._views.get_nowait()
        if view is not None:
            self._on_view(view)

    def set_member(self, cfg: Config) -> None:
        """Announce the networks of ``cfg`` (after a reload changed them)."""
        self.agent.set_member(member_of(cfg))

    def publish(self, dp: DataPath) -> None:
        """Announce the MACs behind this host's ports, per VNI, where they changed."""
        for vni, net in dp.networks.items():
            macs = net.fdb.local_macs()
            if self._published.get(vni) != macs:
                self._published[vni] = macs
                self.agent.publish_macs(vni, macs)

    def conflicts(self, view: ClusterView) -> int:
        """Log the view's new mismatch lines once each; returns how many are new."""
        new = [line for line in view.conflicts if line not in self._conflicts]
        for line in new:
            log.error("cluster: %s", line)
        self._conflicts = set(view.conflicts)
        return len(new)

    def status(self) -> ClusterStats:
        return {**self.agent.status(), "conflicts_now": sorted(self._conflicts)}
