"""Shared pieces of the end-to-end tests: commands inside namespaces, a hashed TCP
transfer between two VMs, the ``sclp`` command line, and :class:`Topology` for the
layouts :class:`sclp.lab.testbed.Testbed` does not build (two VNIs, a kernel VXLAN peer).

Every namespace a :class:`Topology` creates is called ``sclp-<tag>-<role>`` and is
deleted by :meth:`Topology.close` (also on a failure while building); traffic only
ever goes to addresses inside those namespaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sclp.endpoint.control import ControlError, query, socket_path
from sclp.io import netns as nsio
from sclp.lab.testbed import UNDERLAY, Testbed, TestbedError, popen_in, wait_for_output

TRANSFER_PORT = 9000

# Receives one TCP connection, hashes everything until EOF, prints "<bytes> <sha256>".
_HASH_SERVER = r"""
import hashlib, socket, sys
addr, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
srv = socket.create_server((addr, port))
srv.settimeout(timeout)
print("ready", flush=True)
conn, _ = srv.accept()
conn.settimeout(timeout)
digest, total = hashlib.sha256(), 0
while chunk := conn.recv(1 << 20):
    digest.update(chunk)
    total += len(chunk)
print(total, digest.hexdigest(), flush=True)
"""

# Sends a file over one TCP connection, then waits for the receiver to close.
_FILE_CLIENT = r"""
import socket, sys
addr, port, path, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
with socket.create_connection((addr, port), timeout=timeout) as s, open(path, "rb") as f:
    s.sendfile(f)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
"""


def wait_for(
    predicate: Callable[[], Any], timeout: float, interval: float = 0.02, what: str = "condition"
) -> Any:
    """Poll ``predicate()`` until it returns something true, and return that; raise
    AssertionError naming ``what`` if ``timeout`` seconds pass first (the predicate
    is always tried once more at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: did not happen within {timeout:g} s (last: {value!r})")
        time.sleep(interval)


def wait_for_counters(
    stats: Callable[[], dict[str, Any]],
    before: dict[str, int],
    done: Callable[[dict[str, int]], bool],
    timeout: float,
    what: str = "counters",
) -> dict[str, int]:
    """Poll the endpoint's counters until ``done(delta(before, now))``; return that
    delta.  For exact checks after traffic: wait for the packets to be counted (with a
    deadline), then assert on the figures.  On timeout: AssertionError with the last
    delta's non-zero entries."""
    last: dict[str, int] = {}

    def reached() -> bool:
        nonlocal last
        last = delta(before, counters(stats()))
        return done(last)

    try:
        wait_for(reached, timeout, interval=0.02, what=what)
    except AssertionError:
        moved = {k: v for k, v in last.items() if v}
        raise AssertionError(f"{what}: not reached within {timeout:g} s; moved: {moved}") from None
    return last


def wait_line(
    proc: subprocess.Popen[Any], expected: str = "ready", timeout: float = 10.0, what: str = ""
) -> None:
    """Wait (with a deadline) for ``proc``'s first stdout line to be ``expected``: how
    every listener a test starts says it is bound.  Reads one byte at a time from the
    pipe, so nothing after the line is consumed (``communicate()`` still gets it)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    line = b""
    deadline = time.monotonic() + timeout
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{what or proc.args}: no {expected!r} within {timeout:g} s")
        if select.select([fd], [], [], min(left, 0.1))[0]:
            byte = os.read(fd, 1)
            if not byte:
                err = proc.stderr.read() if proc.stderr is not None else ""
                raise AssertionError(f"{what or proc.args} exited before {expected!r}: {err}")
            line += byte
    got = line.decode(errors="replace").strip()
    if got != expected:
        raise AssertionError(f"{what or proc.args}: expected {expected!r}, got {got!r}")


def wait_iperf3_server(server: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """An ``iperf3 -s --forceflush`` started by a test is listening (deadline)."""
    try:
        wait_for_output(server, "Server listening", timeout, what="iperf3 server")
    except TestbedError as exc:
        raise AssertionError(str(exc)) from None


def child_commands(pid: int) -> dict[int, list[str]]:
    """The direct children of process ``pid``: child pid -> argv (``ip netns exec``
    execs its command, so an iperf3 run in a namespace shows as ``iperf3 ...``)."""
    children: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != pid:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children[int(entry)] = argv
    return children


def record_figures(path: Path, name: str, values: dict[str, Any]) -> None:
    """Record a measured figure that depends on CPU share (throughput, loss, timing)
    instead of asserting on it: one JSON line appended to ``path`` (under the test's
    tmp dir) and printed (shown by ``pytest -s`` and in a failure's report)."""
    line = json.dumps({"test": name, **values})
    with open(path, "a") as out:
        out.write(line + "\n")
    print(line)


def run_in(
    netns: str, args: list[str], timeout: float = 30.0, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``args`` inside ``netns`` (``ip netns exec``); raise AssertionError with the
    output when ``check`` and it fails."""
    result = subprocess.run(
        ["ip", "netns", "exec", netns, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode:
        raise AssertionError(
            f"{' '.join(args)} in {netns} exited {result.returncode}: "
            f"{result.stderr.strip() or result.stdout.strip()}"
        )
    return result


def stop(proc: subprocess.Popen[Any], timeout: float = 5.0) -> None:
    """End a helper process we started (SIGTERM, then SIGKILL)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def ping(netns: str, address: str, count: int = 3, wait: float = 2.0) -> bool:
    """True if every echo was answered."""
    result = run_in(
        netns,
        ["ping", "-c", str(count), "-i", "0.2", "-W", str(wait), address],
        timeout=count * (wait + 0.2) + 10,
        check=False,
    )
    return result.returncode == 0 and f"{count} received" in result.stdout


def tcp_transfer(
    src_ns: str, dst_ns: str, dst_addr: str, path: Path, timeout: float = 30.0
) -> tuple[int, str]:
    """Send ``path`` from ``src_ns`` to a hashing receiver at ``dst_addr`` in
    ``dst_ns``; return (bytes received, SHA-256 hex of what was received)."""
    server = popen_in(
        dst_ns,
        [sys.executable, "-c", _HASH_SERVER, dst_addr, str(TRANSFER_PORT), str(timeout)],
    )
    try:
        wait_line(server, "ready", timeout=10.0, what="hash server")
        client_args = [_FILE_CLIENT, dst_addr, str(TRANSFER_PORT), str(path), str(timeout)]
        run_in(
            src_ns,
            [sys.executable, "-c", *client_args],
            timeout=timeout + 5,
        )
        out, err = server.communicate(timeout=timeout)
        if server.returncode:
            raise AssertionError(f"hash server failed: {err.strip()}")
        received, digest = out.split()
        return int(received), digest
    finally:
        stop(server)


def sclp_cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """``python -m sclp ARGS`` in this namespace (the endpoint enters its own)."""
    return subprocess.run(
        [sys.executable, "-m", "sclp", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def counters(stats: dict[str, Any]) -> dict[str, int]:
    return {k: int(v) for k, v in stats["counters"].items()}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {key: after.get(key, 0) - before.get(key, 0) for key in after}


def link_mac(netns: str, ifname: str) -> str:
    with nsio.NetNS(netns) as ns:
        return ns.link_info(ifname).mac


def disable_ipv6(netns: str) -> None:
    """Silence IPv6 (router solicitations, MLD, DAD) in a VM namespace so counters
    only move for the traffic a test sends.  Set before any interface arrives."""
    with nsio.NetNS(netns) as ns:
        for scope in ("all", "default"):
            ns.write_sysctl(f"net.ipv6.conf.{scope}.disable_ipv6", 1)


@dataclass
class Endpoint:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = query(socket_path(self.name))
        return result

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""


@dataclass
class Topology:
    """Namespaces, veths and ``sclp run`` endpoints, torn down by :meth:`close`."""

    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    namespaces: list[str] = field(default_factory=list)
    endpoints: list[Endpoint] = field(default_factory=list)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sclp-e2e-")))

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def netns(self, role: str) -> str:
        name = f"sclp-{self.tag}-{role}"
        nsio.create_netns(name, loopback_up=True).close()
        self.namespaces.append(name)
        return name

    def underlay_hosts(self, role1: str, role2: str) -> list[str]:
        """Two host namespaces joined by a veth ``ul0`` with the testbed's underlay
        addresses (:data:`sclp.lab.testbed.UNDERLAY`)."""
        hosts = [self.netns(role1), self.netns(role2)]
        nsio.create_veth("ul0", hosts[0], "ul0", hosts[1])
        for host, address in zip(hosts, UNDERLAY, strict=True):
            with nsio.NetNS(host) as ns:
                ns.add_address("ul0", f"{address}/24")
        return hosts

    def container(self, host: str, ifname: str, cidr: str, mtu: int) -> str:
        """A namespace behind a veth whose host side ``ifname`` is in namespace
        ``host``, as a container runtime makes it (IPv6 off, ``cidr`` on its eth0);
        returns the namespace."""
        ns = self.netns("ct" + ifname.replace("-", ""))
        disable_ipv6(ns)
        nsio.create_veth(ifname, host, "eth0", ns, mtu=mtu)
        with nsio.NetNS(ns) as inside:
            inside.add_address("eth0", cidr)
        return ns

    def endpoint_name(self, role: str) -> str:
        return f"e2e{self.tag}{role}"

    def start_endpoint(self, name: str, config_text: str, timeout: float = 15.0) -> Endpoint:
        """Start ``sclp run`` with this configuration and wait for its control socket."""
        config = self.workdir / f"{name}.toml"
        config.write_text(config_text)
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "sclp", "run", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        endpoint = Endpoint(name, proc, log_path)
        self.endpoints.append(endpoint)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"endpoint {name} exited: {endpoint.log_text().strip()}")
            with contextlib.suppress(ControlError, OSError, json.JSONDecodeError):
                endpoint.stats()
                return endpoint
            time.sleep(0.05)
        raise AssertionError(f"endpoint {name} did not come up within {timeout:.0f} s")

    def stop_endpoints(self) -> list[int]:
        for ep in self.endpoints:
            if ep.proc.poll() is None:
                ep.proc.send_signal(signal.SIGTERM)
        codes = []
        for ep in self.endpoints:
            try:
                codes.append(ep.proc.wait(timeout=5))
            except subprocess.TimeoutExpired:
                ep.proc.kill()
                codes.append(ep.proc.wait())
        return codes

    def close(self) -> None:
        self.stop_endpoints()
        for name in reversed(self.namespaces):
            with contextlib.suppress(OSError):
                nsio.delete_netns(name)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """Namespaces of this topology that still exist (after :meth:`close`: none)."""
        return [name for name in self.namespaces if nsio.netns_exists(name)]


def shut_down(tb: Testbed) -> None:
    """Stop ``tb``'s endpoints and delete its namespaces, then check that both went
    cleanly: exit status 0 on SIGTERM, control sockets removed, no namespace left."""
    names = list(tb.namespaces)
    sockets = [socket_path(tb.endpoint_name(i)) for i in range(len(tb.endpoints))]
    codes = tb.stop_endpoints()
    logs = [tb.log_text(i)[-500:] for i in range(len(codes))]
    tb.close()
    assert all(code == 0 for code in codes), f"endpoint exit codes {codes}; logs: {logs}"
    assert not [s for s in sockets if os.path.exists(s)], "control sockets left behind"
    assert not [n for n in names if nsio.netns_exists(n)], "namespaces left behind"
