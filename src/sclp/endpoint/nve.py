"""The Network Virtualization Edge: one running endpoint for one configuration.

:class:`Endpoint` only composes the parts (design.md, "Layers", item 5):

- :mod:`~sclp.endpoint.provision` sets up the host (privileges, namespaces, TAPs,
  sockets, nftables) and records every undo on one clean-up stack;
- :class:`~sclp.endpoint.datapath.DataPath` forwards, without I/O;
- :class:`~sclp.endpoint.runner.Runner` owns the epoll loop, signals and timers;
- :class:`~sclp.endpoint.control.ControlServer` answers ``sclp stats`` from the loop
  without blocking it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from sclp.endpoint import provision
from sclp.endpoint.config import Config
from sclp.endpoint.control import ControlServer
from sclp.endpoint.datapath import COUNTER_NAMES, DataPath, Port
from sclp.endpoint.faults import FaultInjector
from sclp.endpoint.provision import EndpointError
from sclp.endpoint.runner import FaultySender, Runner, UnderlaySender
from sclp.endpoint.tunnels import Channel

__all__ = ["Endpoint", "EndpointError"]

log = logging.getLogger("sclp")


class Endpoint:
    """One running NVE for a :class:`Config`.  ``start()`` builds everything (and
    undoes what it built if a step fails), ``run()`` serves until ``stop()`` or a
    signal, ``close()`` removes TAPs, rules and sockets."""

    def __init__(self, cfg: Config, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.clock = clock
        self.counters: Counter[str] = Counter()  # what the runner's sender counts
        self.dp: DataPath | None = None
        self.runner: Runner | None = None
        faults = cfg.underlay.faults
        self._faults = FaultInjector(faults) if faults.enabled else None
        self._stack = contextlib.ExitStack()
        self._started_at = 0.0

    @property
    def ports(self) -> dict[int, Port]:
        return self.dp.ports if self.dp is not None else {}

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
            {"stats": self.stats},
            watch=lambda fd, write, resume: self._runner().watch(fd, lambda _n: resume(), write),
            unwatch=lambda fd: self._runner().unwatch(fd),
        )
        stack.callback(control.close)
        taps = [(port, provision.open_port(port, stack)) for port in dp.ports.values()]
        sockets = provision.open_underlay(cfg, dp, stack)
        if self._faults is not None:
            sender: UnderlaySender = FaultySender(
                sockets.udp, sockets.raw, self.counters, self._faults
            )
            stack.callback(sender.close)
            log.warning("fault injection is ON for outgoing underlay packets: %s", self._faults)
        else:
            sender = UnderlaySender(sockets.udp, sockets.raw, self.counters)
        runner = self.runner = Runner(dp, sender, self.clock, rx_batch=cfg.tuning.rx_batch)
        stack.callback(runner.close)
        runner.watch(control.fileno(), control.handle_ready)
        runner.on_tick(control.expire)
        for port, tap in taps:
            runner.add_tap(port, tap)
        for channel, (usock, _port) in sockets.udp.items():
            runner.add_udp(channel, usock, sockets.batch)
        for channel, rsock in sockets.raw_receive.items():
            runner.add_raw(channel, rsock, sockets.batch)
        for ptap in sockets.stt_taps:
            runner.add_raw(Channel.STT, ptap, sockets.batch)
        self._started_at = self.clock()
        log.info(
            "endpoint %s up: local %s, underlay mtu %d, %s",
            cfg.name,
            cfg.underlay.local,
            dp.underlay.mtu,
            ", ".join(
                f"vni {p.vni} {p.protocol} tap {p.network.tap} mtu {p.vm_mtu}"
                for p in dp.ports.values()
            ),
        )

    def _runner(self) -> Runner:
        assert self.runner is not None, "the control socket is served only by a running loop"
        return self.runner

    def run(self, install_signals: bool = True) -> None:
        """Serve until :meth:`stop` or SIGINT/SIGTERM."""
        self._runner().run(install_signals)

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

    def stats(self) -> dict[str, Any]:
        """What ``sclp stats`` shows (all zero before :meth:`start`)."""
        dp = self.dp
        report = dp.stats() if dp is not None else {"counters": dict.fromkeys(COUNTER_NAMES, 0)}
        counters = report["counters"]
        for name, value in self.counters.items():
            counters[name] = counters.get(name, 0) + value
        return {
            "name": self.cfg.name,
            "pid": os.getpid(),
            "uptime_s": round(self.clock() - self._started_at, 3),
            "underlay": {
                "local": self.cfg.underlay.local,
                "mtu": dp.underlay.mtu if dp is not None else None,
                "sclp_carrier": self.cfg.underlay.sclp_carrier.value,
            },
            "counters": dict(sorted(counters.items())),
            "vni": report.get("vni", {}),
            "faults": self._faults.counters() if self._faults else None,
        }
