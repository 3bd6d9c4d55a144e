"""The Network Virtualization Edge: one running endpoint for one configuration.

:class:`Endpoint` only composes the parts (docs/architecture.md, "Where each concern lives"):

- :mod:`~sclp.endpoint.provision` sets up the host (privileges, namespaces, TAPs,
  sockets, nftables) and records every undo on one clean-up stack;
- :class:`~sclp.endpoint.datapath.DataPath` forwards, without I/O;
- :class:`~sclp.endpoint.runner.Runner` owns the epoll loop, signals and timers;
- :class:`~sclp.endpoint.control.ControlServer` answers ``sclp stats`` from the loop
  without blocking it;
- :mod:`~sclp.endpoint.reload` carries out a reload (SIGHUP, ``sclp reload``) on these
  parts, and :mod:`~sclp.endpoint.report` builds the ``stats`` and ``health`` reports.

What is left here is the composition itself: building and undoing the parts in
order, serving the underlay channels, and the peers every network should have now
(the file's and the cluster registry's).
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from sclp.bgp.model import Encap, EvpnView
from sclp.cluster.model import ClusterView
from sclp.endpoint import provision, reconcile, reload, report, service, show, txerrors
from sclp.endpoint.bgp import EvpnLink
from sclp.endpoint.config import Config
from sclp.endpoint.control import ControlServer
from sclp.endpoint.datapath import DataPath, VirtualNetwork, VmPort
from sclp.endpoint.faults import FaultInjector
from sclp.endpoint.ports import AttachedPorts, control_commands
from sclp.endpoint.provision import EndpointError
from sclp.endpoint.reconcile import PeerChange, ReloadReport
from sclp.endpoint.registry import RegistryLink
from sclp.endpoint.runner import FaultySender, Runner, UnderlaySender
from sclp.endpoint.stats import (
    EndpointStats,
    HealthReport,
)
from sclp.endpoint.tunnels import Channel
from sclp.io import nft
from sclp.io.tap import TapDevice
from sclp.switch.fdb import Origin

__all__ = ["Endpoint", "EndpointError"]

log = logging.getLogger("sclp")

PUBLISH_INTERVAL = 0.5  # seconds between stats snapshots for the metrics thread
MAC_PUBLISH_INTERVAL = 1.0  # seconds between checks of the MACs to announce


class Endpoint:
    """One running NVE for a :class:`Config`.  ``start()`` builds everything (and
    undoes what it built if a step fails), ``run()`` serves until ``stop()`` or a
    signal, ``close()`` removes TAPs, rules and sockets."""

    def __init__(
        self,
        cfg: Config,
        clock: Callable[[], float] = time.monotonic,
        *,
        config_path: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.config_path = config_path  # re-read on SIGHUP
        # The stats as last published by the loop (every PUBLISH_INTERVAL): what the
        # metrics thread reads, so a scrape never touches the data path.
        self.snapshot: EndpointStats | None = None
        self._published_at = -math.inf
        self._last_tick = -math.inf
        self._reload_requested = False
        self._sockets: list[socket.socket] = []  # the underlay's, for the health check
        self.notifier: service.Notifier | None = None
        self._watchdog: service.Watchdog | None = None
        self.counters: Counter[str] = Counter()  # what the runner's sender counts
        self.dp: DataPath | None = None
        self.runner: Runner | None = None
        # The kernel's filter of non-peers (None: they are dropped in user space).
        self.peer_filter: provision.PeerFilter | None = None
        self.attached: AttachedPorts | None = None  # hot-plugged ports (attach = [...])
        self._underlay: provision.UnderlaySockets | None = None
        self._network_stacks: dict[int, contextlib.ExitStack] = {}  # owned TAPs by VNI
        # The cluster registry (None without [cluster]): its agent's views reach the loop
        # through a queue and a pipe; peers it found per VNI, member names by address.
        self.registry: RegistryLink | None = None
        self._discovered: dict[int, frozenset[str]] = {}
        self._member_names: dict[str, str] = {}
        self._published_macs_at = -math.inf
        # BGP EVPN (None without [bgp]): the VTEPs per VNI with their encapsulation.
        self.evpn: EvpnLink | None = None
        self._evpn_peers: dict[int, dict[str, Encap]] = {}
        faults = cfg.underlay.faults
        self._faults = FaultInjector(faults) if faults.enabled else None
        self._stack = contextlib.ExitStack()
        self._started_at = 0.0

    @property
    def networks(self) -> dict[int, VirtualNetwork]:
        return self.dp.networks if self.dp is not None else {}

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        cfg = self.cfg
        stack = self._stack
        provision.check_privileges()
        provision.enter_underlay_namespace(cfg)
        dp = self.dp = DataPath(cfg, provision.underlay_mtu(cfg))
        control = ControlServer(
            cfg.control_socket,
            {
                "stats": self._requested_stats,
                "health": self.health_report,
                **show.handlers(
                    self.cfg.name,
                    self._datapath,
                    self.clock,
                    lambda: self._discovered,
                    lambda: self._evpn_peers,
                    self._tx_errors,
                ),
            },
            watch=lambda fd, write, resume: self._runner().watch(fd, lambda _n: resume(), write),
            unwatch=lambda fd: self._runner().unwatch(fd),
        )
        stack.callback(control.close)
        stack.callback(self._close_network_stacks)
        # `sclp reload`: served by the loop, so it applies the file at once.
        control.handlers["reload"] = self._reload_on_request
        # `attach <ifname> <vni>`, `detach <ifname>`: ports handed over by sclp-cni.
        control.commands.update(control_commands(self._attached_ports))
        taps = [(port, self.open_tap(port)) for port in list(dp.ports.values())]
        sockets = self._underlay = provision.open_underlay(cfg, dp, stack)
        self.peer_filter = provision.install_peer_filter(cfg, dp, sockets, stack)
        self._list_sockets()
        if self._faults is not None:
            sender: UnderlaySender = FaultySender(
                sockets.udp, sockets.raw, self.counters, self._faults
            )
            stack.callback(sender.close)
            log.warning("fault injection is ON for outgoing underlay packets: %s", self._faults)
        else:
            sender = UnderlaySender(sockets.udp, sockets.raw, self.counters, sockets.tx)
        runner = self.runner = Runner(dp, sender, self.clock, rx_batch=cfg.tuning.rx_batch)
        stack.callback(runner.close)
        runner.watch(control.fileno(), control.handle_ready)
        runner.on_tick(control.expire)
        runner.on_tick(self._on_tick)
        if cfg.metrics.listen is not None:
            self._start_metrics(cfg.metrics.listen)
        for port, tap in taps:
            runner.add_port(port, tap)
        if any(n.attach for n in cfg.networks):
            self.start_attached()
        if cfg.cluster is not None:
            self._start_registry()
        if cfg.bgp is not None:
            self._start_evpn()
        for channel in sorted(dp.channels, key=lambda c: c.value):
            self._serve_channel(channel)
        self._started_at = self.clock()
        log.info(
            "endpoint %s up: local %s, underlay mtu %d, %s",
            cfg.name,
            cfg.underlay.local,
            dp.underlay.mtu,
            ", ".join(
                f"vni {n.vni} {n.protocol} mtu {n.vm_mtu} ports "
                f"{','.join(p.name for p in n.ports) or '(none yet)'}"
                for n in dp.networks.values()
            ),
        )

    def open_tap(self, port: VmPort) -> TapDevice:
        """The owned TAP of ``port``, closed with its network (or the endpoint)."""
        stack = self._network_stacks.setdefault(port.vni, contextlib.ExitStack())
        return provision.open_tap(port, stack)

    def _close_network_stacks(self) -> None:
        stacks, self._network_stacks = self._network_stacks, {}
        for stack in stacks.values():
            stack.close()

    def _list_sockets(self) -> None:
        sockets = self._underlay
        assert sockets is not None
        self._sockets = [
            *(u.sock for u, _port in sockets.udp.values()),
            *(r.sock for r in sockets.raw.values()),
            *(t.sock for t in sockets.all_taps()),
        ]

    def _datapath(self) -> DataPath:
        assert self.dp is not None, "the endpoint is not started"
        return self.dp

    def start_attached(self) -> None:
        attached = AttachedPorts(self.cfg.name, self._datapath(), self._runner())
        try:
            attached.start()
        except OSError as exc:
            raise EndpointError(f"watching interfaces for attach: {exc}") from None
        self.attached = attached
        self._stack.callback(attached.close)

    def _attached_ports(self) -> AttachedPorts:
        """The attached ports, started on the first request if no pattern did."""
        if self.attached is None:
            self.start_attached()
        assert self.attached is not None
        return self.attached

    def _runner(self) -> Runner:
        assert self.runner is not None, "the control socket is served only by a running loop"
        return self.runner

    def _start_metrics(self, listen: tuple[str, int]) -> None:
        from sclp.endpoint.metrics import MetricsServer

        try:
            server = MetricsServer.start(listen, lambda: self.snapshot, self.health)
        except OSError as exc:
            raise EndpointError(
                f"metrics.listen {listen[0]}:{listen[1]}: {exc.strerror}; "
                "choose a free port or one of this host's addresses"
            ) from None
        self._stack.callback(server.close)
        log.info("metrics on http://%s:%d/metrics", listen[0], server.port)

    def run(self, install_signals: bool = True) -> None:
        """Serve until :meth:`stop` or SIGINT/SIGTERM (SIGHUP re-reads the file).
        Tells systemd READY=1 once the loop runs, when started as a notify service."""
        if install_signals:
            signal.signal(signal.SIGHUP, lambda *_: self._request_reload())
        self.notifier = service.Notifier.from_environment()
        if self.notifier is not None:
            interval = service.watchdog_interval()
            if interval is not None:
                self._watchdog = service.Watchdog(self.notifier, interval)
            self.notifier.ready(f"forwarding: {self.summary()}")
        try:
            self._runner().run(install_signals)
        finally:
            if self.notifier is not None:
                self.notifier.stopping()
                self.notifier.close()

    def summary(self) -> str:
        """The networks served, in a few words (systemd's STATUS, the health line)."""
        return ", ".join(f"vni {n.vni} {n.protocol}" for n in self.networks.values())

    def _request_reload(self) -> None:
        self._reload_requested = True  # handled on the next tick, in the loop

    def _on_tick(self, now: float) -> None:
        self._last_tick = now
        if now - self._published_at >= PUBLISH_INTERVAL:
            self.snapshot = self.stats()
            self._published_at = now
        if self._watchdog is not None:
            self._watchdog.tick(now)
        if self._reload_requested:
            self._reload_requested = False
            self._reload("SIGHUP")
        if self.registry is not None and now - self._published_macs_at >= MAC_PUBLISH_INTERVAL:
            self._published_macs_at = now
            self.registry.publish(self._datapath())
        if self.evpn is not None:
            self.evpn.tick(now, self._datapath())

    def _reload_on_request(self) -> dict[str, Any]:
        """``sclp reload``: what :meth:`_reload` did, as JSON."""
        return self._reload("sclp reload").to_json()

    def _reload(self, trigger: str) -> ReloadReport:
        """SIGHUP or ``sclp reload`` (``trigger``): :func:`sclp.endpoint.reload.reload_file`."""
        return reload.reload_file(self, trigger)

    def apply_config(self, new: Config, path: str | None = None) -> ReloadReport:
        """Make the running endpoint serve ``new``'s networks
        (:func:`sclp.endpoint.reload.apply_config`); call it from the loop (or
        before run)."""
        return reload.apply_config(self, new, path)

    def open_channel(self, channel: Channel) -> None:
        """Open ``channel``'s underlay socket(s), unless open, and serve them (for a
        network added at run time): the sender, the health check and the kernel's
        peer filter take them in.  Raises EndpointError or OSError."""
        sockets = self._underlay
        assert sockets is not None
        if channel in sockets.udp or channel in sockets.raw:
            return
        provision.open_channel(self.cfg, self._datapath(), channel, sockets, self._stack)
        self._serve_channel(channel)
        self._runner().sender.add_channels()
        self._list_sockets()
        self._install_peer_filter()

    def close_network(self, vni: int) -> None:
        """Close what was opened for network ``vni`` (its owned TAPs)."""
        stack = self._network_stacks.pop(vni, None)
        if stack is not None:
            stack.close()

    def _serve_channel(self, channel: Channel) -> None:
        """Have the loop read ``channel``'s open socket(s) (or its packet taps)."""
        sockets, runner = self._underlay, self._runner()
        assert sockets is not None
        if channel in sockets.udp:
            runner.add_udp(channel, sockets.udp[channel][0], sockets.batch)
        if channel in sockets.raw_receive:
            runner.add_raw(channel, sockets.raw_receive[channel], sockets.batch)
        for ptap in sockets.taps.get(channel, ()):
            runner.add_raw(channel, ptap, sockets.batch)

    def _install_peer_filter(self) -> None:
        """(Re)install the kernel's peer filter for the channels now open."""
        assert self._underlay is not None
        self.peer_filter = provision.install_peer_filter(
            self.cfg, self._datapath(), self._underlay, self._stack
        )

    def sync_peers(self) -> list[PeerChange]:
        """Give every network the peers it should have now (the file's and the
        cluster's); one log line per peer that joins or leaves a VNI.  Returns the
        changes, per VNI."""
        dp = self._datapath()
        names = self._member_names
        changes: list[PeerChange] = []
        for vni, vnet in dp.networks.items():
            want = reconcile.wanted_peers(vnet.network, self._discovered, self.cfg.underlay.local)
            evpn = self._evpn_peers.get(vni, {})
            others = want  # the file's and the cluster's speak the network's protocol
            want |= evpn.keys()
            plain = [p for p, e in evpn.items() if e is Encap.VXLAN and p not in others]
            joined, left = dp.set_peers(vni, want, plain)
            for peer in sorted(joined):
                log.info("vni %d: peer %s%s joined", vni, peer, _named(names, peer))
            for peer in sorted(left):
                log.info("vni %d: peer %s%s left", vni, peer, _named(names, peer))
            if joined or left:
                changes.append(PeerChange(vni, tuple(sorted(joined)), tuple(sorted(left))))
        if not changes:
            return changes
        self._runner().refresh_peers()
        if self.peer_filter is not None:
            try:
                self.peer_filter.update(dp.peers)
            except (OSError, ValueError, nft.NftError) as exc:
                log.warning("updating the kernel's peer filter failed: %s", exc)
        if self._underlay is not None:
            provision.refresh_tap_filters(self.cfg, dp, self._underlay)
            self._tap_channels()
        return changes

    def _tap_channels(self) -> None:
        """Move the channels still read from raw sockets for want of peers at start
        (STT, native SCLP) to packet taps now that there are peers."""
        sockets, runner = self._underlay, self._runner()
        assert sockets is not None
        moved = False
        for channel in sorted(
            provision.TAPPED.keys() & sockets.raw_receive.keys(), key=lambda c: c.value
        ):
            raw = sockets.raw_receive[channel]
            if provision.open_taps(self.cfg, self._datapath(), channel, sockets, self._stack):
                runner.unwatch(raw.fileno())
                self._serve_channel(channel)
                moved = True
        if moved:
            self._list_sockets()
            self._install_peer_filter()

    # -- the cluster registry ------------------------------------------------------------

    def _start_registry(self) -> None:
        cluster = self.cfg.cluster
        assert cluster is not None
        link = RegistryLink(self.cfg, self._apply_view)
        self._stack.callback(link.close)
        self._runner().watch(link.fileno(), link.drain)
        link.start()
        self.registry = link
        log.info(
            "cluster: registering %s at %s under %s (lease %d s)",
            self.cfg.name,
            ", ".join(cluster.etcd),
            cluster.prefix,
            cluster.lease_ttl,
        )

    def _apply_view(self, view: ClusterView) -> None:
        """A new state of the cluster (in the loop): peers, remote MACs, conflicts."""
        names = {m.address: name for name, m in view.members.items()}
        self._member_names.update(names)  # a member that left is still named in its line
        self._discovered = {vni: frozenset(peers) for vni, peers in view.peers.items()}
        self.sync_peers()
        self._member_names = names
        for vni, vnet in self._datapath().networks.items():
            vnet.fdb.set_remote(dict(view.macs.get(vni, {})))
        if self.registry is not None:
            self.counters["cluster_conflicts"] += self.registry.conflicts(view)

    # -- BGP EVPN -------------------------------------------------------------------------

    def _start_evpn(self) -> None:
        runner = self._runner()
        link = EvpnLink(self.cfg, self._apply_evpn, runner.watch, runner.unwatch)
        self._stack.callback(link.close)
        try:
            link.start(self.clock())
        except OSError as exc:
            raise EndpointError(f"bgp: starting exabgp: {exc}") from None
        self.evpn = link

    def _apply_evpn(self, view: EvpnView) -> None:
        """New EVPN routes (in the loop): the VTEPs become peers, their MACs entries."""
        self._evpn_peers = view.peers
        self.sync_peers()
        for vni, vnet in self._datapath().networks.items():
            vnet.fdb.set_remote(view.macs.get(vni, {}), Origin.EVPN)

    def health(self) -> tuple[bool, str]:
        """Is the endpoint serving (:func:`sclp.endpoint.report.health`)?  Safe to call
        from another thread (it reads plain fields)."""
        age = self.clock() - self._last_tick
        ok, detail = report.health(self.runner, age, self._sockets, self.summary())
        failing = txerrors.degraded(self._tx_errors(), self.clock()) if ok else None
        return (True, failing) if failing else (ok, detail)

    def health_report(self) -> HealthReport:
        return report.health_report(self.cfg.name, self.health())

    def stop(self) -> None:
        if self.runner is not None:
            self.runner.stop()

    def close(self) -> None:
        """Undo everything start() did, newest first.  Idempotent."""
        try:
            self._stack.close()
        except Exception as exc:  # keep the process alive to report it
            log.warning("cleanup step failed: %s", exc)
        self._stack = contextlib.ExitStack()
        self.peer_filter = None
        self.attached = None
        self.registry = None
        self.evpn = None

    # -- sclp stats -----------------------------------------------------------------------

    def _requested_stats(self) -> EndpointStats:
        """``sclp stats``: the kernel's not-peer counter at most 0.5 s old."""
        return self.stats(provision.PEER_COUNTER_ON_REQUEST)

    def stats(self, kernel_max_age: float = provision.PEER_COUNTER_REFRESH) -> EndpointStats:
        """What ``sclp stats`` shows (:func:`sclp.endpoint.report.stats`); the kernel's
        not-peer counter in it is at most ``kernel_max_age`` seconds old."""
        parts = report.Parts(
            self.cfg,
            self.dp,
            self.counters,
            self.peer_filter,
            self._underlay,
            self._faults,
            self.registry,
            self.evpn,
            self.clock(),
            self._tx_errors(),
        )
        return report.stats(parts, self.clock() - self._started_at, kernel_max_age)

    def _tx_errors(self) -> txerrors.TxErrors:
        """The sender's refused sends and reported errors (empty before start)."""
        runner = self.runner
        return runner.sender.errors if runner is not None else txerrors.TxErrors({})


def _named(names: dict[str, str], address: str) -> str:
    name = names.get(address)
    return f" ({name})" if name else ""
