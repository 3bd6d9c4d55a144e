"""The Network Virtualization Edge: one running endpoint for one configuration.

:class:`Endpoint` only composes the parts (docs/architecture.md, "Where each concern lives"):

- :mod:`~sclp.endpoint.provision` sets up the host (privileges, namespaces, TAPs,
  sockets, nftables) and records every undo on one clean-up stack;
- :class:`~sclp.endpoint.datapath.DataPath` forwards, without I/O;
- :class:`~sclp.endpoint.runner.Runner` owns the epoll loop, signals and timers;
- :class:`~sclp.endpoint.control.ControlServer` answers ``sclp stats`` from the loop
  without blocking it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from sclp.cluster.model import ClusterView
from sclp.endpoint import provision, reconcile, service, show, txerrors
from sclp.endpoint.config import Config, ConfigError, Network, load_config, vm_mtu_problem
from sclp.endpoint.control import ControlServer
from sclp.endpoint.datapath import COUNTER_NAMES, DataPath, VirtualNetwork, VmPort
from sclp.endpoint.faults import FaultInjector
from sclp.endpoint.ports import AttachedPorts, control_commands
from sclp.endpoint.provision import EndpointError
from sclp.endpoint.reconcile import PeerChange, ReloadReport
from sclp.endpoint.registry import RegistryLink
from sclp.endpoint.runner import FaultySender, Runner, UnderlaySender
from sclp.endpoint.tunnels import Channel
from sclp.io import nft
from sclp.io.rxring import RxRing
from sclp.io.tap import TapDevice

__all__ = ["Endpoint", "EndpointError"]

log = logging.getLogger("sclp")

PUBLISH_INTERVAL = 0.5  # seconds between stats snapshots for the metrics thread
HEALTH_TICK_AGE = 2.0  # a loop that has not ticked for this long is unhealthy
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
        self.snapshot: dict[str, Any] | None = None
        self._published_at = -math.inf
        self._last_tick = -math.inf
        self._reload_requested = False
        self._sockets: list[socket.socket] = []  # the underlay's, for the health check
        self._notifier: service.Notifier | None = None
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
                **self._show_handlers(),
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
        taps = [(port, self._open_tap(port)) for port in list(dp.ports.values())]
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
            self._start_attached()
        if cfg.cluster is not None:
            self._start_registry()
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

    def _open_tap(self, port: VmPort) -> TapDevice:
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

    def _start_attached(self) -> None:
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
            self._start_attached()
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
        self._notifier = service.Notifier.from_environment()
        if self._notifier is not None:
            interval = service.watchdog_interval()
            if interval is not None:
                self._watchdog = service.Watchdog(self._notifier, interval)
            self._notifier.notify("READY=1", f"STATUS=forwarding: {self._summary()}")
        try:
            self._runner().run(install_signals)
        finally:
            if self._notifier is not None:
                self._notifier.notify("STOPPING=1")
                self._notifier.close()

    def _summary(self) -> str:
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

    def _reload_on_request(self) -> dict[str, Any]:
        """``sclp reload``: what :meth:`_reload` did, as JSON."""
        return self._reload("sclp reload").to_json()

    def _reload(self, trigger: str) -> ReloadReport:
        """SIGHUP or ``sclp reload`` (``trigger``): re-read the configuration and
        reconcile the running endpoint to it (:mod:`sclp.endpoint.reconcile`): networks
        added, removed or re-created, peers replaced, the rest untouched; one log line
        per change.  A file that cannot be read or is invalid changes nothing."""
        if self._notifier is not None:
            self._notifier.notify("RELOADING=1")
        try:
            path = self.config_path
            if path is None:
                log.warning("%s: no configuration file to re-read", trigger)
                return ReloadReport(
                    None, error="the endpoint was started without a configuration file"
                )
            try:
                new = load_config(path)
            except ConfigError as exc:
                log.error("%s: %s; still running the previous configuration", trigger, exc)
                return ReloadReport(path, error=str(exc))
            if new == self.cfg:
                log.info("%s: %s re-read, unchanged", trigger, path)
                return ReloadReport(path)
            return self.apply_config(new, path)
        finally:
            if self._notifier is not None:
                self._notifier.notify("READY=1")

    def apply_config(self, new: Config, path: str | None = None) -> ReloadReport:
        """Make the running endpoint serve ``new``'s networks; other changed settings
        are logged as needing a restart.  Call it from the loop (or before run).
        Returns what changed (``path``: the file ``new`` came from, for the report)."""
        restart = reconcile.restart_needed(self.cfg, new)
        for key in restart:
            log.warning("reload: [%s] changed; restart the endpoint to apply it", key)
        current = {n.vni: n for n in self.cfg.networks}
        plan = reconcile.plan_networks(current, {n.vni: n for n in new.networks})
        serving = dict(current)
        for vni in plan.remove:
            self._remove_network(vni, "removed from the configuration")
            del serving[vni]
        for net in plan.recreate:
            self._remove_network(net.vni, "changed in the configuration, re-creating it")
            del serving[net.vni]
        not_added: list[tuple[int, str]] = []
        for net in (*plan.add, *plan.recreate):
            error = self._add_network(net)
            if error is None:
                serving[net.vni] = net
            else:
                not_added.append((net.vni, error))
        dp = self._datapath()
        for net in plan.peers:
            dp.networks[net.vni].network = net
            serving[net.vni] = net
        self.cfg = dataclasses.replace(
            self.cfg, networks=tuple(serving[n.vni] for n in new.networks if n.vni in serving)
        )
        if self.attached is not None:
            self.attached.rescan()
        elif any(n.attach for n in self.cfg.networks):
            self._start_attached()
        peers = self._sync_peers()
        if self.registry is not None:
            self.registry.set_member(self.cfg)  # the VNIs it announces
        if plan.empty:
            log.info("reload: networks unchanged")
        failed = {vni for vni, _ in not_added}
        return ReloadReport(
            path,
            added=tuple(n.vni for n in plan.add if n.vni not in failed),
            removed=plan.remove,
            recreated=tuple(n.vni for n in plan.recreate if n.vni not in failed),
            not_added=tuple(not_added),
            peers=tuple(peers),
            restart_needed=tuple(restart),
        )

    def _add_network(self, net: Network) -> str | None:
        """Start serving ``net``; None, or why it could not be (then nothing of it
        remains)."""
        dp, runner = self._datapath(), self._runner()
        underlay = self.cfg.underlay
        problem = vm_mtu_problem(net, underlay.local, dp.underlay.mtu, underlay.sclp_carrier)
        if problem:
            log.error("reload: vni %d not added: mtu %s", net.vni, problem)
            return f"mtu {problem}"
        vnet = dp.add_network(net)
        sockets = self._underlay
        assert sockets is not None
        try:
            channel = vnet.tunnel.channel
            if channel not in sockets.udp and channel not in sockets.raw:
                provision.open_channel(self.cfg, dp, channel, sockets, self._stack)
                self._serve_channel(channel)
                runner.sender.add_channels()
                self._list_sockets()
                self._install_peer_filter()
            for port in vnet.ports:
                runner.add_port(port, self._open_tap(port))
        except (EndpointError, OSError) as exc:
            log.error("reload: vni %d not added: %s", net.vni, exc)
            for port in vnet.ports:
                runner.remove_port(port)
            dp.remove_network(net.vni)
            stack = self._network_stacks.pop(net.vni, None)
            if stack is not None:
                stack.close()
            return str(exc)
        log.info(
            "vni %d added: %s, mtu %d, ports %s",
            net.vni,
            vnet.protocol,
            vnet.vm_mtu,
            ",".join(p.name for p in vnet.ports) or "(attach only)",
        )
        return None

    def _remove_network(self, vni: int, why: str) -> None:
        dp, runner = self._datapath(), self._runner()
        if self.attached is not None:
            self.attached.detach_network(vni, "its network was removed")
        for port in dp.networks[vni].ports:
            runner.remove_port(port)
        dp.remove_network(vni)
        stack = self._network_stacks.pop(vni, None)
        if stack is not None:
            stack.close()
        log.info("vni %d %s", vni, why)

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

    def _sync_peers(self) -> list[PeerChange]:
        """Give every network the peers it should have now (the file's and the
        cluster's); one log line per peer that joins or leaves a VNI.  Returns the
        changes, per VNI."""
        dp = self._datapath()
        names = self._member_names
        changes: list[PeerChange] = []
        for vni, vnet in dp.networks.items():
            want = reconcile.wanted_peers(vnet.network, self._discovered, self.cfg.underlay.local)
            joined, left = dp.set_peers(vni, want)
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
        self._sync_peers()
        self._member_names = names
        for vni, vnet in self._datapath().networks.items():
            vnet.fdb.set_remote(dict(view.macs.get(vni, {})))
        if self.registry is not None:
            self.counters["cluster_conflicts"] += self.registry.conflicts(view)

    def health(self) -> tuple[bool, str]:
        """Is the endpoint serving?  The loop ticked within HEALTH_TICK_AGE seconds, and
        every TAP and underlay socket is open.  Safe to call from another thread (it
        reads plain fields)."""
        runner = self.runner
        if runner is None:
            return False, "not started"
        age = self.clock() - self._last_tick
        if age > HEALTH_TICK_AGE:
            return False, f"event loop stalled or stopped (last tick {age:.1f} s ago)"
        readers = runner.port_readers()
        closed = [r.name for r in readers if r.closed]
        if closed:
            return False, f"port closed: {', '.join(closed)}"
        if any(sock.fileno() < 0 for sock in self._sockets):
            return False, "an underlay socket is closed"
        failing = txerrors.degraded(self._tx_errors(), self.clock())
        if failing:
            return True, failing
        return True, (
            f"loop alive, {len(readers)} VM port(s) and {len(self._sockets)} underlay "
            f"socket(s) open, {self._summary()}"
        )

    def health_report(self) -> dict[str, Any]:
        ok, detail = self.health()
        state = "unhealthy" if not ok else txerrors.health_state(detail)
        return {"name": self.cfg.name, "ok": ok, "state": state, "detail": detail}

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

    # -- sclp show ------------------------------------------------------------------------

    def _show_handlers(self) -> dict[str, Callable[[], Any]]:
        """The control socket's ``show ...`` requests (:mod:`sclp.endpoint.show`),
        answered from the loop: each reads the data path once, as plain rows (the
        FDB's sent in parts, a turn of the loop each)."""
        return {
            "show fdb": lambda: show.fdb_streamed(self._datapath(), self.clock(), self._show({})),
            "show peers": lambda: self._show(
                show.peers(self._datapath(), self.clock(), self._discovered, self._tx_errors())
            ),
            "show ports": lambda: self._show(show.ports(self._datapath())),
        }

    def _show(self, table: dict[str, Any]) -> dict[str, Any]:
        return {"name": self.cfg.name, "vnis": sorted(self._datapath().networks), **table}

    def _requested_stats(self) -> dict[str, Any]:
        """``sclp stats``: the kernel's not-peer counter at most 0.5 s old."""
        return self.stats(provision.PEER_COUNTER_ON_REQUEST)

    def stats(self, kernel_max_age: float = provision.PEER_COUNTER_REFRESH) -> dict[str, Any]:
        """What ``sclp stats`` shows (all zero before :meth:`start`); the kernel's
        not-peer counter in it is at most ``kernel_max_age`` seconds old."""
        dp = self.dp
        report = dp.stats() if dp is not None else {"counters": dict.fromkeys(COUNTER_NAMES, 0)}
        counters = report["counters"]
        for name, value in self.counters.items():
            counters[name] = counters.get(name, 0) + value
        # Dropped by the kernel's peer filter: never received, so not in rx_packets
        # (docs/security.md); nft runs only when the last read is older than allowed.
        pf = self.peer_filter
        kernel_drops = pf.drops(kernel_max_age) if pf is not None else 0
        counters["drop_not_peer"] = counters.get("drop_not_peer", 0) + kernel_drops
        counters["tx_sent"] = txerrors.sent(counters)
        return {
            "name": self.cfg.name,
            "pid": os.getpid(),
            "uptime_s": round(self.clock() - self._started_at, 3),
            "underlay": {
                "local": self.cfg.underlay.local,
                "mtu": dp.underlay.mtu if dp is not None else None,
                "sclp_carrier": self.cfg.underlay.sclp_carrier.value,
                "sclp_udp_port": self.cfg.underlay.sclp_udp_port,
                "vxlan_port": self.cfg.underlay.vxlan_port,
                "geneve_port": self.cfg.underlay.geneve_port,
            },
            "counters": dict(sorted(counters.items())),
            "vni": report.get("vni", {}),
            "ports": report.get("ports", {}),
            "peers": report.get("peers", {}),
            "faults": self._faults.counters() if self._faults else None,
            "cluster": self.registry.status() if self.registry is not None else None,
            "peer_filter": {"kernel": pf is not None, "kernel_drops": kernel_drops},
            "rx_taps": self._tap_stats(),
            "tx_rings": self._tx_ring_stats(),
            "tx_errors": self._tx_errors().report(self.clock()),
        }

    def _tx_errors(self) -> txerrors.TxErrors:
        """The sender's refused sends and reported errors (empty before start)."""
        runner = self.runner
        return runner.sender.errors if runner is not None else txerrors.TxErrors({})

    def _tap_stats(self) -> dict[str, Any]:
        """Per channel read by packet taps (STT, native SCLP): the devices, ``ring``
        or ``recvmmsg``, the packets the kernel dropped for want of a free ring frame
        (``tp_drops``) and those larger than a frame or slot (dropped)."""
        sockets = self._underlay
        if sockets is None:
            return {}
        report: dict[str, Any] = {}
        for channel, taps in sockets.taps.items():
            rings = [tap for tap in taps if isinstance(tap, RxRing)]
            report[channel.value] = {
                "devices": sockets.tap_devices.get(channel, []),
                "kind": "ring" if rings else "recvmmsg",
                "ring_full_drops": sum(ring.read_drops() for ring in rings),
                "truncated": sum(tap.truncated for tap in taps),
            }
        return report

    def _tx_ring_stats(self) -> dict[str, Any]:
        """Per channel sent through TX rings (STT, native SCLP): the devices, the
        batches per path (``ring``, or why the raw socket sent one), how often the
        kernel said "later" (EAGAIN/ENOBUFS: queued frames wait for the next send) and
        frames it refused as malformed."""
        sockets = self._underlay
        if sockets is None:
            return {}
        report: dict[str, Any] = {}
        for channel, sender in sockets.tx.items():
            rings = list(sender.rings.values())
            report[channel.value] = {
                "devices": sorted(ring.ifname for ring in rings),
                "batches": dict(sorted((p.name.lower(), n) for p, n in sender.paths.items())),
                "deferred": sum(ring.deferred for ring in rings),
                "wrong_format": sum(ring.wrong_format for ring in rings),
            }
        return report


def _named(names: dict[str, str], address: str) -> str:
    name = names.get(address)
    return f" ({name})" if name else ""
