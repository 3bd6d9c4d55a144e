"""Chaos under load: disturb two running endpoints while a TCP transfer crosses them.

Shared by the chaos test (tests/robustness/test_chaos.py, a minute per tunnel type)
and the soak benchmark (benchmarks/soak.py, the same disturbances at a low rate for
half an hour).  On a :class:`ChaosTestbed` (the lab's :class:`Testbed`, whose
endpoints also attach ``chx*`` interfaces to the network) a paced, byte-exact TCP
transfer runs from VM 1 to VM 2 (:class:`Transfer`, SHA-256 of what was sent and of
what arrived) while :class:`Chaos`, at moments drawn from ``random.Random(seed)``:

- sends SIGHUP with the file unchanged, with a peer added and removed, with a network
  added and removed (endpoint 1);
- attaches and detaches a second port (a veth whose name matches ``attach``);
- takes the underlay link down for a second and up again;
- restarts the receiving endpoint (endpoint 2; TCP stalls, then resumes);
- sends a burst of packets from the peer's address with a VNI nobody serves, and a
  burst of well-formed tunnel packets from an address that is no peer;

while :class:`Querier` asks both endpoints for ``stats`` and ``show fdb``/``peers``/
``ports`` fifty times a second in-process (:func:`sclp.endpoint.control.query`) and
checks that no counter ever goes backwards (except across the restart).

Every disturbance is one line of :attr:`Chaos.events` (and of the ``log`` callback),
and names the endpoint log line it must produce, if the endpoint logs it
(:attr:`Event.expect`): the underlay link and the bursts are not logged by the
endpoint, only counted.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from random import Random

from sclp.endpoint.control import ControlError, query, socket_path
from sclp.engine.segmenter import Segmenter
from sclp.engine.stt import SttSegmenter
from sclp.io import netns as nsio
from sclp.lab.testbed import OVERLAY, UNDERLAY, Testbed, popen_in
from sclp.wire import stt, vxlan
from sclp.wire.sclp import SCLP_PORT_VXLAN, SCLP_UDP_PORT

ATTACH_PATTERN = "chx*"
EXTRA_VNI = 43
EXTRA_PEER = "10.77.0.7"  # a peer added and removed by SIGHUP (nobody answers there)
HOSTILE = "10.77.0.9"  # an address on the underlay that no endpoint lists as a peer
TRANSFER_PORT = 9100
# Counters that are levels, not totals: they may go down.
GAUGES = frozenset(("reasm_bytes_held", "reasm_entries"))
QUERIES = ("stats", "show fdb", "show peers", "show ports")

# Receives one connection and prints "progress BYTES" each second, then "done BYTES
# SHA256" at EOF.
_SERVER = r"""
import hashlib, socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
h = hashlib.sha256(); n = 0; last = time.monotonic()
while True:
    data = c.recv(1 << 20)
    if not data:
        break
    h.update(data); n += len(data)
    if time.monotonic() - last >= 1.0:
        last = time.monotonic(); print("progress", n, flush=True)
print("done", n, h.hexdigest(), flush=True)
"""
# Sends BYTES random bytes at RATE bytes/s (catching up after a stall), then prints
# "sent BYTES SHA256".
_CLIENT = r"""
import hashlib, os, socket, sys, time
addr, port, total, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
c = socket.create_connection((addr, port), timeout=600)
h = hashlib.sha256(); n = 0; start = time.monotonic()
while n < total:
    chunk = os.urandom(min(1 << 16, total - n))
    c.sendall(chunk); h.update(chunk); n += len(chunk)
    ahead = n / rate - (time.monotonic() - start)
    if ahead > 0:
        time.sleep(ahead)
c.shutdown(socket.SHUT_WR)
c.recv(1)
print("sent", n, h.hexdigest(), flush=True)
"""


@dataclass
class ChaosTestbed(Testbed):
    """The lab's testbed whose endpoints also attach :data:`ATTACH_PATTERN`."""

    def port_keys(self, i: int) -> str:
        return super().port_keys(i) + f'attach = ["{ATTACH_PATTERN}"]\n'

    def config_path(self, i: int) -> Path:
        assert self.workdir is not None
        return self.workdir / f"h{i + 1}.toml"

    def logs(self, i: int) -> str:
        """Endpoint ``i``'s whole log, across restarts."""
        assert self.workdir is not None
        old = sorted(self.workdir.glob(f"h{i + 1}.log.*"), key=lambda p: int(p.suffix[1:]))
        return "".join(p.read_text(errors="replace") for p in old) + self.log_text(i)


@dataclass
class Event:
    """One disturbance: when (seconds into the run), what, on which endpoint, and
    the line its log must then hold once (None: the endpoint does not log it)."""

    at: float
    what: str
    endpoint: int = 0
    expect: str | None = None


class Transfer:
    """A paced TCP transfer of ``total`` bytes at ``rate`` bytes/s from namespace
    ``src`` to ``address`` in namespace ``dst`` (by default the testbed's VM 1 to
    VM 2)."""

    def __init__(
        self,
        total: int,
        rate: float,
        src: str,
        dst: str,
        address: str = OVERLAY[1],
    ) -> None:
        self.total = total
        self.progress: list[tuple[float, int]] = []  # (monotonic time, bytes received)
        self.server = popen_in(dst, [sys.executable, "-c", _SERVER, address, str(TRANSFER_PORT)])
        assert self.server.stdout is not None
        if self.server.stdout.readline().strip() != "ready":
            raise AssertionError(f"transfer server: {self.server.stderr.read()}")  # type: ignore[union-attr]
        self.client = popen_in(
            src, [sys.executable, "-c", _CLIENT, address, str(TRANSFER_PORT), str(total), str(rate)]
        )
        self.done: tuple[int, str] | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.server.stdout is not None
        for line in self.server.stdout:
            parts = line.split()
            if parts[:1] == ["progress"]:
                self.progress.append((time.monotonic(), int(parts[1])))
            elif parts[:1] == ["done"]:
                self.done = (int(parts[1]), parts[2])

    def wait(self, timeout: float) -> tuple[tuple[int, str], tuple[int, str] | None]:
        """(what the client sent, what the server received): bytes and SHA-256."""
        try:
            out, err = self.client.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.close()
            raise AssertionError(f"the transfer did not end within {timeout:.0f} s") from None
        parts = out.split()
        if self.client.returncode or parts[:1] != ["sent"]:
            raise AssertionError(f"transfer client failed: {err.strip() or out.strip()}")
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.server.wait(timeout=30)
        self._reader.join(timeout=5)
        return (int(parts[1]), parts[2]), self.done

    def close(self) -> None:
        for proc in (self.client, self.server):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


class Querier(threading.Thread):
    """Queries the endpoints at ``sockets`` (control socket paths) ``rate`` times a
    second in all (:data:`QUERIES` in turn) and records every counter that went
    backwards (:attr:`backwards`); answers from a new process (a restart) start a new
    baseline."""

    def __init__(self, sockets: list[str], rate: float = 50.0) -> None:
        super().__init__(daemon=True)
        self.sockets = sockets
        self.period = 1.0 / rate
        self.stop_event = threading.Event()
        self.answers = 0
        self.errors = 0  # no answer (the endpoint restarting)
        self.backwards: list[str] = []
        self.last: dict[int, tuple[int, dict[str, int]]] = {}
        self.first: dict[int, dict[str, int]] = {}
        self.latest: dict[int, dict[str, int]] = {}

    def run(self) -> None:
        n = 0
        next_at = time.monotonic()
        while not self.stop_event.is_set():
            i = n % len(self.sockets)
            request = QUERIES[(n // len(self.sockets)) % len(QUERIES)]
            n += 1
            try:
                answer = query(self.sockets[i], request, timeout=2.0)
                self.answers += 1
            except (ControlError, OSError, json.JSONDecodeError):
                self.errors += 1
                answer = None
            if request == "stats" and isinstance(answer, dict):
                self._check(i, int(answer["pid"]), answer["counters"])
            next_at += self.period
            self.stop_event.wait(max(0.0, next_at - time.monotonic()))

    def _check(self, i: int, pid: int, counters: dict[str, int]) -> None:
        previous = self.last.get(i)
        if previous is not None and previous[0] == pid:
            for key, value in counters.items():
                if key not in GAUGES and value < previous[1].get(key, 0):
                    self.backwards.append(f"endpoint {i + 1} {key}: {previous[1][key]} -> {value}")
        if previous is None or previous[0] != pid:
            self.first[i] = dict(counters)  # a new process: a new baseline
        self.last[i] = (pid, dict(counters))
        self.latest[i] = dict(counters)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=10)


@dataclass
class Chaos:
    """The disturbances on ``tb``; ``log`` gets one line per disturbance."""

    tb: ChaosTestbed
    rng: Random
    protocol: str
    carrier: str = "ip"
    log: Callable[[str], None] = print
    events: list[Event] = field(default_factory=list)
    start: float = field(default_factory=time.monotonic)
    restarts: int = 0
    _attaches: int = 0
    _extra_peer: bool = False
    _extra_network: bool = False

    def _event(self, what: str, endpoint: int = 0, expect: str | None = None) -> None:
        at = time.monotonic() - self.start
        self.events.append(Event(at, what, endpoint, expect))
        self.log(f"chaos {at:7.2f}s endpoint {endpoint + 1}: {what}")

    def sockets(self) -> list[str]:
        """The two endpoints' control sockets, for a :class:`Querier`."""
        return [socket_path(self.tb.endpoint_name(i)) for i in range(2)]

    # -- SIGHUP --------------------------------------------------------------------

    def _hup(self, text: str | None = None) -> None:
        path = self.tb.config_path(0)
        if text is not None:
            path.write_text(text)
        self.tb.endpoints[0].send_signal(signal.SIGHUP)

    def _wait_log(self, line: str, count: int = 1, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.tb.logs(0).count(line) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"no log line {line!r} within {timeout:.0f} s")
            time.sleep(0.05)  # polling the log file, bounded by the deadline

    def sighup_unchanged(self) -> None:
        line = f"SIGHUP: {self.tb.config_path(0)} re-read, unchanged"
        before = self.tb.logs(0).count(line)
        self._hup()
        self._event("SIGHUP, file unchanged", expect=line if before == 0 else None)
        self._wait_log(line, before + 1)

    def _config_text(self) -> str:
        """Endpoint 1's file as the disturbances so far left it."""
        text = self.tb.config_text(0)
        if self._extra_peer:
            peer = f'"{UNDERLAY[1]}"'
            text = text.replace(f"peers = [{peer}]", f'peers = [{peer}, "{EXTRA_PEER}"]', 1)
        if self._extra_network:
            text += (
                f'[[network]]\nvni = {EXTRA_VNI}\nprotocol = "{self.protocol}"\n'
                f'attach = ["cvn{EXTRA_VNI}*"]\npeers = ["{UNDERLAY[1]}"]\n'
            )
        return text

    def sighup_peer(self, add: bool) -> None:
        self._extra_peer = add
        line = f"vni 42: peer {EXTRA_PEER} {'joined' if add else 'left'}"
        self._hup(self._config_text())
        self._event(f"SIGHUP, peer {EXTRA_PEER} {'added' if add else 'removed'}", expect=line)
        self._wait_log(line)

    def sighup_network(self, add: bool) -> None:
        self._extra_network = add
        line = f"vni {EXTRA_VNI} added:" if add else f"vni {EXTRA_VNI} removed from"
        self._hup(self._config_text())
        self._event(f"SIGHUP, network {EXTRA_VNI} {'added' if add else 'removed'}", expect=line)
        self._wait_log(line)

    # -- a second port -------------------------------------------------------------

    def attach_detach(self) -> None:
        """A veth ``chxN`` (its peer ``cpxN`` matches no pattern) appears in host 1,
        is attached, and goes away again."""
        name, peer = f"chx{self._attaches}", f"cpx{self._attaches}"
        self._attaches += 1
        host = self.tb.hosts[0]
        nsio.create_veth(name, host, peer, host)
        self._event(f"veth {name} created", expect=f"attached {name} (ifindex")
        self._wait_log(f"attached {name} (ifindex")
        with nsio.NetNS(host) as ns:
            ns.ipr.link("del", index=ns.link_index(name))
        self._event(f"veth {name} deleted", expect=f"detached {name} from vni 42")
        self._wait_log(f"detached {name} from vni 42")

    # -- the underlay --------------------------------------------------------------

    def link_flap(self, down_for: float = 1.0) -> None:
        host = self.tb.hosts[0]
        with nsio.NetNS(host) as ns:
            ns.set_link("ul0", up=False)
            self._event(f"underlay link down for {down_for:g} s")
            time.sleep(down_for)  # the disturbance itself: the link stays down this long
            ns.set_link("ul0", up=True)

    def restart_receiver(self) -> None:
        """Endpoint 2 stops and starts again.  Its TAP is VM 2's NIC, which a real
        guest would keep with its MAC address: the new TAP gets the old MAC back, as
        the guest's NIC would have it (else VM 1's ARP entry points nowhere until it
        expires, longer than TCP waits between retransmissions)."""
        vm, tap = self.tb.vms[1], self.tb.vm_interface
        with nsio.NetNS(vm) as ns:
            mac = ns.link_info(tap).mac
        self._event("restarting the receiving endpoint", 1)
        self.tb.restart_endpoint(1)
        with nsio.NetNS(vm) as ns:
            ns.set_link(tap, mac=mac)
        # Its log starts again: "up:" once in each process's log (ChaosTestbed.logs
        # has both), checked by the caller as restarts + 1.
        self._event("receiving endpoint up again, VM 2's MAC kept", 1)
        self.restarts += 1

    # -- hostile packets -----------------------------------------------------------

    def _packets(self, src: str, vni: int, count: int) -> tuple[tuple[str, int], list[bytes]]:
        dst_ip = ipaddress.IPv4Address(OVERLAY[0]).packed
        src_ip = ipaddress.IPv4Address("192.168.77.99").packed
        frame = (
            b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x99\x08\x00"
            + bytes([0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0])
            + src_ip
            + dst_ip
            + bytes(8)
        )
        if self.protocol == "vxlan":
            return ("udp", vxlan.VXLAN_PORT), [vxlan.header(vni) + frame] * count
        if self.protocol == "stt":
            stt_frame = stt.encode(stt.SttHeader(context_id=vni)) + frame
            packets = []
            for _ in range(count):
                batch = SttSegmenter().segment_frame(
                    stt_frame, 50000, 1000, socket.inet_aton(src), socket.inet_aton(UNDERLAY[0])
                )
                packets += [bytes(s) for s in batch.segments()]
            return ("raw", socket.IPPROTO_TCP), packets
        payload = vxlan.header(vni) + frame
        udp = self.carrier == "udp"
        seg = Segmenter()
        packets = []
        for _ in range(count):
            sclp = seg.segment_payload(payload, 50000, SCLP_PORT_VXLAN, 1000, not udp)
            packets += [bytes(s) for s in sclp.segments()]
        return (("udp", SCLP_UDP_PORT) if udp else ("raw", 234)), packets

    def _send(self, src: str, where: tuple[str, int], packets: list[bytes]) -> None:
        kind, number = where
        with nsio.NetNS(self.tb.hosts[1]) as ns:
            if kind == "udp":
                sock = ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
                addr = (UNDERLAY[0], number)
            else:
                sock = ns.socket(socket.AF_INET, socket.SOCK_RAW, number)
                addr = (UNDERLAY[0], 0)
        with sock:
            sock.bind((src, 0))
            for packet in packets:
                with contextlib.suppress(BlockingIOError):
                    sock.sendto(packet, addr)

    def spoofed_burst(self, count: int = 500) -> None:
        """From the peer's own address, packets for a VNI nobody serves."""
        where, packets = self._packets(UNDERLAY[1], 4242, count)
        self._send(UNDERLAY[1], where, packets)
        self._event(f"burst of {len(packets)} spoofed-peer packets (vni 4242)")

    def non_peer_burst(self, count: int = 500) -> None:
        """Well-formed packets for VNI 42 from an address that is no peer."""
        with nsio.NetNS(self.tb.hosts[1]) as ns:
            if HOSTILE not in [a.split("/")[0] for a in ns.addresses("ul0")]:
                ns.add_address("ul0", f"{HOSTILE}/24")
        where, packets = self._packets(HOSTILE, 42, count)
        self._send(HOSTILE, where, packets)
        self._event(f"burst of {len(packets)} packets from non-peer {HOSTILE}")

    # -- a schedule ----------------------------------------------------------------

    def plan(self, window: float, attaches: int = 20, flaps: int = 2) -> list[tuple[float, str]]:
        """Every disturbance once (attach/detach ``attaches`` times, the link
        ``flaps`` times) at moments drawn from the seed within ``window`` seconds."""
        names = [
            "sighup_unchanged",
            "sighup_peer_add",
            "sighup_peer_remove",
            "sighup_network_add",
            "sighup_network_remove",
            "restart_receiver",
            "spoofed_burst",
            "non_peer_burst",
            *(["attach_detach"] * attaches),
            *(["link_flap"] * flaps),
        ]
        times = sorted(self.rng.uniform(0, window) for _ in names)
        self.rng.shuffle(names)
        # Pairs keep their order: add before remove.
        for pair in (
            ("sighup_peer_add", "sighup_peer_remove"),
            ("sighup_network_add", "sighup_network_remove"),
        ):
            a, b = names.index(pair[0]), names.index(pair[1])
            if a > b:
                names[a], names[b] = names[b], names[a]
        return list(zip(times, names, strict=True))

    def run(self, schedule: list[tuple[float, str]]) -> None:
        """Carry out ``schedule`` (seconds from now, disturbance), in order."""
        t0 = time.monotonic()
        for at, name in schedule:
            delay = t0 + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # the schedule's own moments
            self.do(name)

    def do(self, name: str) -> None:
        actions: dict[str, Callable[[], None]] = {
            "sighup_unchanged": self.sighup_unchanged,
            "sighup_peer_add": lambda: self.sighup_peer(True),
            "sighup_peer_remove": lambda: self.sighup_peer(False),
            "sighup_network_add": lambda: self.sighup_network(True),
            "sighup_network_remove": lambda: self.sighup_network(False),
            "restart_receiver": self.restart_receiver,
            "spoofed_burst": self.spoofed_burst,
            "non_peer_burst": self.non_peer_burst,
            "attach_detach": self.attach_detach,
            "link_flap": self.link_flap,
        }
        actions[name]()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise ValueError(f"no VmRSS for pid {pid}")


def log_problems(text: str) -> list[str]:
    """Lines of an endpoint log that speak of a crash or an unhandled error: a
    traceback, an ERROR line, a clean-up step that failed."""
    return [
        line
        for line in text.splitlines()
        if "Traceback" in line
        or "unhandled" in line.lower()
        or "Exception" in line
        or " ERROR " in line
        or "cleanup step failed" in line
    ]


def leftovers(tb: Testbed) -> list[str]:
    """Namespaces or control sockets of ``tb`` still there (after its close)."""
    left = [n for n in nsio.list_netns() if tb.tag in n]
    left += [p for p in (socket_path(tb.endpoint_name(i)) for i in range(2)) if Path(p).exists()]
    return left
