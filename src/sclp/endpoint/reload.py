"""Reloading a running endpoint: SIGHUP or ``sclp reload`` re-reads its file.

:func:`reload_file` reads and checks the configuration file (one that cannot be read
or is invalid changes nothing) and hands a changed one to :func:`apply_config`, which
carries out :mod:`sclp.endpoint.reconcile`'s plan on the running
:class:`~sclp.endpoint.nve.Endpoint`: networks removed, re-created and added (their
TAPs, and the underlay channel a new tunnel type needs), peers replaced, the rest
untouched, and one log line per change.  What changes is decided in
:mod:`~sclp.endpoint.reconcile` (pure); this module only orders the steps.  Both run
in the event loop (or before it runs), between two batches of forwarding.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from sclp.endpoint import reconcile
from sclp.endpoint.config import Config, ConfigError, Network, load_config, vm_mtu_problem
from sclp.endpoint.datapath import DataPath
from sclp.endpoint.provision import EndpointError
from sclp.endpoint.reconcile import ReloadReport
from sclp.endpoint.runner import Runner

if TYPE_CHECKING:  # the endpoint imports this module
    from sclp.endpoint.nve import Endpoint

__all__ = ["add_network", "apply_config", "reload_file", "remove_network"]

log = logging.getLogger("sclp")


def reload_file(ep: Endpoint, trigger: str) -> ReloadReport:
    """SIGHUP or ``sclp reload`` (``trigger``): re-read ``ep``'s configuration file
    and reconcile the running endpoint to it (:func:`apply_config`).  A file that
    cannot be read or is invalid changes nothing.  systemd hears ``RELOADING=1`` (with
    ``MONOTONIC_USEC``, as ``Type=notify-reload`` requires) before and ``READY=1``
    with the networks now served after, whatever the outcome."""
    if ep.notifier is not None:
        ep.notifier.reloading()
    try:
        path = ep.config_path
        if path is None:
            log.warning("%s: no configuration file to re-read", trigger)
            return ReloadReport(None, error="the endpoint was started without a configuration file")
        try:
            new = load_config(path)
        except ConfigError as exc:
            log.error("%s: %s; still running the previous configuration", trigger, exc)
            return ReloadReport(path, error=str(exc))
        if new == ep.cfg:
            log.info("%s: %s re-read, unchanged", trigger, path)
            return ReloadReport(path)
        return apply_config(ep, new, path)
    finally:
        if ep.notifier is not None:
            ep.notifier.ready(f"forwarding: {ep.summary()}")


def apply_config(ep: Endpoint, new: Config, path: str | None = None) -> ReloadReport:
    """Make the running endpoint serve ``new``'s networks; other changed settings are
    logged as needing a restart.  Returns what changed (``path``: the file ``new``
    came from, for the report)."""
    restart = reconcile.restart_needed(ep.cfg, new)
    for key in restart:
        log.warning("reload: [%s] changed; restart the endpoint to apply it", key)
    current = {n.vni: n for n in ep.cfg.networks}
    plan = reconcile.plan_networks(current, {n.vni: n for n in new.networks})
    serving = dict(current)
    for vni in plan.remove:
        remove_network(ep, vni, "removed from the configuration")
        del serving[vni]
    for net in plan.recreate:
        remove_network(ep, net.vni, "changed in the configuration, re-creating it")
        del serving[net.vni]
    not_added: list[tuple[int, str]] = []
    for net in (*plan.add, *plan.recreate):
        error = add_network(ep, net)
        if error is None:
            serving[net.vni] = net
        else:
            not_added.append((net.vni, error))
    dp, _ = _running(ep)
    for net in plan.peers:
        dp.networks[net.vni].network = net
        serving[net.vni] = net
    ep.cfg = dataclasses.replace(
        ep.cfg, networks=tuple(serving[n.vni] for n in new.networks if n.vni in serving)
    )
    if ep.attached is not None:
        ep.attached.rescan()
    elif any(n.attach for n in ep.cfg.networks):
        ep.start_attached()
    peers = ep.sync_peers()
    if ep.registry is not None:
        ep.registry.set_member(ep.cfg)  # the VNIs it announces
    if ep.evpn is not None:
        ep.evpn.set_config(ep.cfg)
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


def add_network(ep: Endpoint, net: Network) -> str | None:
    """Start serving ``net``; None, or why it could not be (then nothing of it
    remains)."""
    dp, runner = _running(ep)
    underlay = ep.cfg.underlay
    problem = vm_mtu_problem(net, underlay.local, dp.underlay.mtu, underlay.sclp_carrier)
    if problem:
        log.error("reload: vni %d not added: mtu %s", net.vni, problem)
        return f"mtu {problem}"
    vnet = dp.add_network(net)
    try:
        ep.open_channel(vnet.tunnel.channel)
        for port in vnet.ports:
            runner.add_port(port, ep.open_tap(port))
    except (EndpointError, OSError) as exc:
        log.error("reload: vni %d not added: %s", net.vni, exc)
        for port in vnet.ports:
            runner.remove_port(port)
        dp.remove_network(net.vni)
        ep.close_network(net.vni)
        return str(exc)
    log.info(
        "vni %d added: %s, mtu %d, ports %s",
        net.vni,
        vnet.protocol,
        vnet.vm_mtu,
        ",".join(p.name for p in vnet.ports) or "(attach only)",
    )
    return None


def remove_network(ep: Endpoint, vni: int, why: str) -> None:
    """Stop serving ``vni``: its attached ports are let go, its TAPs closed."""
    dp, runner = _running(ep)
    if ep.attached is not None:
        ep.attached.detach_network(vni, "its network was removed")
    for port in dp.networks[vni].ports:
        runner.remove_port(port)
    dp.remove_network(vni)
    ep.close_network(vni)
    log.info("vni %d %s", vni, why)


def _running(ep: Endpoint) -> tuple[DataPath, Runner]:
    assert ep.dp is not None and ep.runner is not None, "the endpoint is not started"
    return ep.dp, ep.runner
