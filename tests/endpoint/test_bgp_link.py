"""The event loop's side of BGP EVPN (sclp.endpoint.bgp.EvpnLink) with a real ExaBGP
child and a recording stand-in for the runner's watch/unwatch: the loop stops
watching ExaBGP's pipe before it is closed, watches the new one after a restart,
and re-announces everything to the new speaker.  Also: what a VNI advertises."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sclp.bgp.model import EvpnView, auto_rt, parse_rd, parse_rt, sclp_community
from sclp.endpoint.bgp import EvpnLink, local_vnis
from sclp.endpoint.config import parse_config
from sclp.endpoint.datapath import DataPath

pytestmark = pytest.mark.timeout(60)


def config(control_dir: Path) -> str:
    return f"""
name = "link1"
control_dir = "{control_dir}"
[underlay]
local = "127.77.0.1"
sclp_carrier = "udp"
[bgp]
asn = 65001
neighbors = [{{ address = "127.77.0.9", asn = 65000 }}]
[[network]]
vni = 42
protocol = "vxlan-sclp"
tap = "t42"
[[network]]
vni = 43
protocol = "vxlan"
tap = "t43"
rd = "65001:7"
route_targets = ["65000:43", "65000:1043"]
[[network]]
vni = 44
protocol = "geneve"
tap = "t44"
"""


def test_each_evpn_network_gets_frrs_rd_and_rt_unless_it_sets_them(tmp_path: Path) -> None:
    v42, v43 = local_vnis(parse_config(config(tmp_path)))  # geneve: not advertised
    assert v42.vni == 42 and v42.rd == parse_rd("127.77.0.1:1")
    assert v42.export_rts == (parse_rt(auto_rt(65001, 42)),) and v42.auto_import
    assert v42.sclp == sclp_community(True, 7234)
    assert v43.rd == parse_rd("65001:7") and not v43.auto_import and v43.sclp is None
    assert v43.import_rts == {parse_rt("65000:43"), parse_rt("65000:1043")}


def test_the_loop_unwatches_a_dead_speakers_pipe_before_it_is_closed(tmp_path: Path) -> None:
    cfg = parse_config(config(tmp_path))
    dp = DataPath(cfg, 1500)
    watched: dict[int, Callable[[float], None]] = {}
    events: list[tuple[str, int, bool]] = []

    def watch(fd: int, handler: Callable[[float], None]) -> None:
        watched[fd] = handler
        events.append(("watch", fd, _open(fd)))

    def unwatch(fd: int) -> None:
        watched.pop(fd)
        events.append(("unwatch", fd, _open(fd)))

    views: list[EvpnView] = []
    link = EvpnLink(cfg, views.append, watch, unwatch)
    try:
        link.start(0.0)
        first = link.speaker.proc
        assert first is not None and list(watched) == [link.speaker.fileno()]
        link.tick(0.0, dp)  # announces the two VNIs' type-3 routes
        assert len(link.advertiser.advertised) == 2
        os.killpg(first.pid, signal.SIGKILL)
        _wait(link.speaker.exited, "the speaker exited")
        link.tick(1.0, dp)  # reaped before its EOF was read
        assert events[-1][0] == "unwatch" and events[-1][2], "unwatched a closed fd"
        assert not watched and not link.speaker.running
        status = link.status(1.0)
        assert "signal 9" in status["speaker"]["last_exit"]
        link.tick(2.0, dp)  # the back-off (1 s) is over: restarted, watched again
        assert link.speaker.running and link.speaker.restarts == 1
        assert list(watched) == [link.speaker.fileno()] and events[-1][0] == "watch"
        assert len(link.advertiser.advertised) == 2  # told everything again
    finally:
        link.close()
    assert not watched


def _open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _wait(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.02)
