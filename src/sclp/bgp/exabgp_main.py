"""ExaBGP, with the two API commands it lacks: ``announce evpn`` and ``withdraw evpn``.

ExaBGP decodes EVPN routes (its JSON encoder reports them) and sends any NLRI it
holds, but its text API parses no EVPN route.  This module is what the endpoint runs
as its speaker (``python -m sclp.bgp.exabgp_main CONFIG``): it registers the two
commands with ExaBGP's command table, then runs ExaBGP's own ``main``.  The commands
carry what :mod:`sclp.bgp.model` built, in hex, so nothing about EVPN is decided
here::

    announce evpn <nlri hex> next-hop <address> attributes <code>:<flags>:<hex> ...
    withdraw evpn <nlri hex> next-hop <address>

``nlri`` is one EVPN route (type, length, value); each attribute goes out as ExaBGP's
generic attribute (ORIGIN, AS_PATH, LOCAL_PREF are ExaBGP's defaults).

Also ``relay`` mode (``python -m sclp.bgp.exabgp_main relay``): the API process
ExaBGP starts.  It copies ExaBGP's messages (its stdin) to the endpoint's end of
the pipe and the endpoint's commands to ExaBGP (its stdout), through the launcher's
own standard input and output (``/proc/<launcher>/fd/0`` and ``1``), so the
endpoint talks to ExaBGP over two plain pipes of its child.
"""

from __future__ import annotations

import os
import select
import signal
import sys
from collections.abc import Iterator
from typing import Any


def _register() -> None:
    from exabgp.bgp.message import Action
    from exabgp.bgp.message.update.attribute import Attributes
    from exabgp.bgp.message.update.attribute.generic import GenericAttribute
    from exabgp.bgp.message.update.attribute.origin import Origin
    from exabgp.bgp.message.update.nlri.evpn.nlri import EVPN
    from exabgp.protocol.family import AFI, SAFI
    from exabgp.protocol.ip import IP
    from exabgp.reactor.api.command.command import Command
    from exabgp.reactor.api.command.limit import extract_neighbors, match_neighbors
    from exabgp.rib.change import Change

    def parse(command: str, action: Any) -> Any:
        words = command.split()
        if len(words) < 5 or words[3] != "next-hop":
            raise ValueError(f"expected '<verb> evpn NLRI next-hop IP ...', got {command!r}")
        data = bytes.fromhex(words[2])
        nlri, _left = EVPN.unpack_nlri(AFI.l2vpn, SAFI.evpn, data, action, None)
        nlri.action = action
        nlri.nexthop = IP.create(words[4])
        attributes = Attributes()
        attributes.add(Origin(Origin.IGP))
        if len(words) > 5:
            if words[5] != "attributes":
                raise ValueError(f"expected 'attributes', got {words[5]!r}")
            for item in words[6:]:
                code, flags, value = item.split(":")
                attributes.add(GenericAttribute(int(code), int(flags), bytes.fromhex(value)))
        return Change(nlri, attributes)

    def handler(verb: str, action: Any) -> Any:
        def run(self: Any, reactor: Any, service: str, line: str, use_json: bool) -> bool:
            def callback() -> Iterator[bool]:
                try:
                    descriptions, command = extract_neighbors(line)
                    peers = match_neighbors(reactor.peers(service), descriptions)
                    change = parse(command, action)
                except (ValueError, IndexError, KeyError) as exc:
                    self.log_failure(f"{verb} evpn: {exc}")
                    reactor.processes.answer_error(service)
                    yield True
                    return
                if peers:
                    reactor.configuration.inject_change(peers, change)
                reactor.processes.answer_done(service)
                yield False

            reactor.asynchronous.schedule(service, line, callback())
            return True

        return run

    Command.register("announce evpn")(handler("announce", Action.ANNOUNCE))
    Command.register("withdraw evpn")(handler("withdraw", Action.WITHDRAW))


def relay() -> None:
    """Copy stdin (ExaBGP's messages) to the launcher's stdout and the launcher's
    stdin (the endpoint's commands) to stdout (ExaBGP), until either side closes."""
    parent = os.getppid()
    ours_in = os.open(f"/proc/{parent}/fd/0", os.O_RDONLY)
    ours_out = os.open(f"/proc/{parent}/fd/1", os.O_WRONLY)
    routes = {0: ours_out, ours_in: 1}
    while True:
        ready, _, _ = select.select(list(routes), [], [])
        for fd in ready:
            data = os.read(fd, 65536)
            if not data:
                return
            view = memoryview(data)
            while view:
                view = view[os.write(routes[fd], view) :]


def _die_with_parent() -> None:
    """SIGTERM when the endpoint that started us dies (PR_SET_PDEATHSIG), so no BGP
    session outlives the owner of its routes."""
    import ctypes

    parent = os.environ.get("SCLP_PARENT_PID")
    if parent is None:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if str(os.getppid()) != parent:
        sys.exit(0)  # it died before the request took effect


def main() -> None:
    if sys.argv[1:2] == ["relay"]:
        relay()
        return
    _die_with_parent()
    _register()
    from exabgp.application.main import main as exabgp_main

    exabgp_main()


if __name__ == "__main__":
    main()
