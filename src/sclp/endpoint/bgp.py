"""The endpoint's side of BGP EVPN (``[bgp]``, docs/evpn.md).

:class:`~sclp.bgp.speaker.Speaker` runs ExaBGP as a child process; this link is
what the event loop sees of it, in the shape of the cluster registry's link
(:mod:`sclp.endpoint.registry`):

- ExaBGP's JSON comes through a pipe the runner watches; :meth:`EvpnLink.drain`
  reads what is there (never waits), decodes it (:func:`sclp.bgp.model.decode_message`)
  into the received routes (:class:`~sclp.bgp.model.RemoteRib`) and, when they
  changed, hands the new :class:`~sclp.bgp.model.EvpnView` to the endpoint, which
  makes the VTEPs peers (origin ``evpn``) and their MACs FDB entries (origin ``evpn``);
- every tick (:meth:`EvpnLink.tick`): the speaker is supervised (restarted with
  back-off), the routes of neighbors down for longer than the hold time go, and the
  advertisements follow the MACs learned behind this host's ports (twice a second);
- one log line per session change; :meth:`EvpnLink.status` is ``sclp stats``'s
  ``bgp`` section.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable
from typing import Any, Final

from sclp.bgp.model import (
    Advertiser,
    EvpnView,
    LocalVni,
    RemoteRib,
    SessionEvent,
    SpeakerError,
    auto_rd,
    auto_rt,
    decode_message,
    parse_rd,
    parse_rt,
    sclp_community,
)
from sclp.bgp.speaker import Neighbor, Speaker, exabgp_config
from sclp.endpoint.config import Config, Protocol
from sclp.endpoint.datapath import DataPath
from sclp.wire.sclp import Carrier

log = logging.getLogger("sclp")

__all__ = ["EVPN_PROTOCOLS", "EvpnLink", "local_vnis"]

EVPN_PROTOCOLS: Final = (Protocol.VXLAN, Protocol.VXLAN_SCLP)
ADVERTISE_INTERVAL: Final = 0.5  # seconds between looks at the local MACs


def local_vnis(cfg: Config) -> list[LocalVni]:
    """What this endpoint advertises per VNI (the VXLAN and VXLAN-over-SCLP
    networks): RD ``router-id:index`` (index 1.. in file order) and RT ``ASN:VNI``
    unless the network sets ``rd`` / ``route_targets``; the SCLP marker for
    VXLAN over SCLP."""
    bgp = cfg.bgp
    assert bgp is not None
    out = []
    evpn = [n for n in cfg.networks if n.protocol in EVPN_PROTOCOLS]
    for index, net in enumerate(evpn, 1):
        rd = parse_rd(net.rd or auto_rd(bgp.router_id, index))
        targets = net.route_targets or (auto_rt(bgp.asn, net.vni),)
        rts = tuple(parse_rt(t) for t in targets)
        sclp = None
        if net.protocol is Protocol.VXLAN_SCLP:
            udp = cfg.underlay.sclp_carrier is Carrier.UDP
            sclp = sclp_community(udp, cfg.underlay.sclp_udp_port)
        out.append(LocalVni(net.vni, rd, rts, frozenset(rts), not net.route_targets, sclp))
    return out


class EvpnLink:
    """One endpoint's BGP speaker, the routes it received and what it advertises."""

    def __init__(
        self,
        cfg: Config,
        on_view: Callable[[EvpnView], None],
        watch: Callable[[int, Callable[[float], None]], None],
        unwatch: Callable[[int], None],
    ) -> None:
        bgp = cfg.bgp
        assert bgp is not None
        self.bgp = bgp
        self.local = cfg.underlay.local
        self.vnis = local_vnis(cfg)
        self._on_view = on_view
        self._watch, self._unwatch = watch, unwatch
        relay = f"{sys.executable} -m sclp.bgp.exabgp_main relay"
        neighbors = [Neighbor(n.address, n.asn) for n in bgp.neighbors]
        config = exabgp_config(bgp.asn, bgp.router_id, self.local, neighbors, bgp.hold_time, relay)
        self.speaker = Speaker(config, f"{cfg.control_dir}/{cfg.name}.bgp", bind=self.local)
        self.rib = RemoteRib(float(bgp.hold_time), self.local)
        self.advertiser = Advertiser(self.local)
        self.view = EvpnView()
        self._watched = -1
        self._advertised_at = -math.inf
        self.sessions: dict[str, dict[str, Any]] = {
            n.address: {"asn": n.asn, "state": "idle", "since": None, "flaps": 0}
            for n in bgp.neighbors
        }
        self.bad_messages = 0

    # -- the speaker ------------------------------------------------------------------

    def start(self, now: float) -> None:
        self.speaker.start(now)
        self._watch_speaker()
        log.info(
            "bgp: AS %d router-id %s, neighbors %s, EVPN on vni %s",
            self.bgp.asn,
            self.bgp.router_id,
            ", ".join(f"{n.address} (AS {n.asn})" for n in self.bgp.neighbors),
            ", ".join(str(v.vni) for v in self.vnis) or "(none)",
        )

    def _watch_speaker(self) -> None:
        fd = self.speaker.fileno()
        if fd >= 0:
            self._watch(fd, self.drain)
            self._watched = fd

    def _unwatch_speaker(self) -> None:
        if self._watched >= 0:
            self._unwatch(self._watched)
            self._watched = -1

    def close(self) -> None:
        self._unwatch_speaker()
        self.speaker.close()

    def drain(self, now: float) -> None:
        """ExaBGP wrote something (the loop): take every complete line."""
        changed = False
        for line in self.speaker.read():
            try:
                event = decode_message(line)
            except SpeakerError as exc:
                self.bad_messages += 1
                log.debug("bgp: %s", exc)
                continue
            if event is None:
                continue
            if isinstance(event, SessionEvent):
                self._session(event, now)
            changed |= self.rib.apply(event, now)
        if self.speaker.at_eof:
            self._unwatch_speaker()  # it exited; tick() reaps and restarts it
        if changed:
            self._publish()

    def _session(self, event: SessionEvent, now: float) -> None:
        session = self.sessions.setdefault(
            event.neighbor, {"asn": None, "state": "idle", "since": None, "flaps": 0}
        )
        state = "established" if event.up else "down"
        was = session["state"]
        if was == state:
            return
        session["state"], session["since"] = state, now
        if event.up:
            log.info("bgp: session with %s (AS %s) established", event.neighbor, session["asn"])
        elif was == "established":
            session["flaps"] += 1
            log.warning(
                "bgp: session with %s down; its %d routes stay for the hold time (%d s)",
                event.neighbor,
                self.rib.route_count(event.neighbor),
                self.bgp.hold_time,
            )

    def _publish(self) -> None:
        self.view = self.rib.view(self.vnis)
        self._on_view(self.view)

    def tick(self, now: float, dp: DataPath) -> None:
        """Supervise the speaker, expire lost neighbors' routes, follow the MACs."""
        if self.speaker.exited():
            self._unwatch_speaker()  # before poll() closes the pipe the loop watches
        what = self.speaker.poll(now)
        if what == "restarted":
            log.info("bgp: exabgp restarted (restart %d)", self.speaker.restarts)
            self.advertiser.reset()
            self._watch_speaker()
            self._advertised_at = -math.inf
        elif what is not None:
            log.warning("bgp: %s; restarting it", what)
            for address, session in self.sessions.items():
                self._session(SessionEvent(address, False), now)
                self.rib.apply(SessionEvent(address, False), now)
                session["state"] = "idle"  # no speaker: no session at all
        expired = self.rib.expire(now)
        if expired:
            for address in expired:
                log.warning(
                    "bgp: %s: routes not (re)sent within the hold time (%d s) removed",
                    address,
                    self.bgp.hold_time,
                )
            self._publish()
        if not self.speaker.running:
            return
        if now - self._advertised_at >= ADVERTISE_INTERVAL:
            self._advertised_at = now
            macs = {
                vni: net.fdb.local_macs()
                for vni, net in dp.networks.items()
                if any(v.vni == vni for v in self.vnis)
            }
            commands = self.advertiser.update(self.vnis, macs, self.view.seqs)
            self.speaker.send(commands)
            for vni, mac in self.advertiser.superseded:  # moved to another VTEP
                dp.networks[vni].fdb.forget(mac)
        else:
            self.speaker.flush()

    # -- what sclp stats shows ------------------------------------------------------------

    def set_config(self, cfg: Config) -> None:
        """The networks changed (a reload): advertise what they are now."""
        self.vnis = local_vnis(cfg)
        self._advertised_at = -math.inf

    def status(self, now: float) -> dict[str, Any]:
        proc = self.speaker.proc
        return {
            "asn": self.bgp.asn,
            "router_id": self.bgp.router_id,
            "speaker": {
                "running": proc is not None,
                "pid": proc.pid if proc is not None else None,
                "restarts": self.speaker.restarts,
                "last_exit": self.speaker.last_exit,
            },
            "neighbors": [
                {
                    "address": address,
                    "asn": s["asn"],
                    "state": s["state"],
                    "for_s": None if s["since"] is None else round(now - s["since"], 3),
                    "flaps": s["flaps"],
                    "routes_received": self.rib.route_count(address),
                }
                for address, s in sorted(self.sessions.items())
            ],
            "routes_advertised": len(self.advertiser.advertised),
            "bad_messages": self.bad_messages,
        }

    def established(self) -> int:
        return sum(1 for s in self.sessions.values() if s["state"] == "established")
