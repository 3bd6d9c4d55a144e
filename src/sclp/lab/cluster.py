"""Many hosts that find each other through etcd, in network namespaces: the lab of the
cluster demo (``sclp demo --hosts N``), its end-to-end tests and its scaling benchmark.

Layout (every name carries a random tag, so concurrent runs never collide):

- ``sclp-<tag>-sw``: the underlay, one Linux bridge that every host and etcd plug into
  (10.81.0.0/16: host *i* at 10.81.<i // 250>.<i % 250 + 1>, etcd member *k* at
  10.81.255.<k + 1>);
- ``sclp-<tag>-etcd<k>``: the members of an etcd cluster from Debian's
  ``etcd-server`` (one by default; data in a temporary directory), or none when the
  caller gives its own cluster;
- ``sclp-<tag>-h<i>``: host *i*, running ``sclp run`` with a ``[cluster]`` table and no
  ``peers`` at all; ``sclp-<tag>-vm<i>``: its VM, behind the TAP the endpoint owns,
  192.168.82.<i + 1> on VNI 42.

:meth:`ClusterLab.close` (also on a failure while building) stops the endpoints and
etcd and deletes the namespaces, which removes every interface in them.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sclp.endpoint.control import ControlError, query, socket_path
from sclp.io import netns as nsio

ETCD_ADDRESS = "10.81.255.1"
ETCD_URL = f"http://{ETCD_ADDRESS}:2379"


def etcd_address(i: int) -> str:
    """Member ``i`` of the lab's etcd cluster (member 0 is :data:`ETCD_ADDRESS`)."""
    return f"10.81.255.{i + 1}"


VNI = 42
OVERLAY_NET = "192.168.82"
# Below a third of the cluster client's read timeout, so a silent partition is noticed.
PROGRESS_NOTIFY = "2s"


class LabError(Exception):
    """Building or driving the cluster lab failed; the message says where."""


def host_address(i: int) -> str:
    return f"10.81.{i // 250}.{i % 250 + 1}"


def vm_address(i: int) -> str:
    return f"{OVERLAY_NET}.{i + 1}"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _prefix_end(prefix: str) -> str:
    """The end of etcd's range of every key that starts with ``prefix`` (ASCII)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def etcd_binary() -> str:
    path = shutil.which("etcd") or "/usr/bin/etcd"
    if not os.access(path, os.X_OK):
        raise LabError("etcd is not installed (apt-get install etcd-server)")
    return path


@dataclass
class Host:
    index: int
    netns: str
    vm: str
    name: str
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    spawned_at: float = 0.0  # time.monotonic() when its endpoint process was started

    @property
    def address(self) -> str:
        return host_address(self.index)

    def stats(self, control_dir: str) -> dict[str, Any]:
        stats: dict[str, Any] = query(socket_path(self.name, control_dir))
        return stats


@dataclass
class ClusterLab:
    """``hosts`` endpoints on one underlay with an etcd cluster of ``etcd_members``
    (one by default); ``protocol`` of VNI 42, ``lease_ttl`` of their registrations.
    ``etcd_urls``: use that cluster instead of starting one (it must be reachable
    from the hosts' namespaces)."""

    hosts: int = 3
    protocol: str = "vxlan-sclp"
    carrier: str = "udp"
    lease_ttl: int = 5
    etcd_urls: tuple[str, ...] = ()
    etcd_members: int = 1
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sclp-cl-")))
    control_dir: str = ""
    members: list[Host] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    etcds: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    own_etcd: bool = False

    def __post_init__(self) -> None:
        if not self.control_dir:
            self.control_dir = str(self.workdir / "run")
        if not self.etcd_urls:
            self.own_etcd = True
            self.etcd_urls = tuple(
                f"http://{etcd_address(i)}:2379" for i in range(self.etcd_members)
            )

    def __enter__(self) -> ClusterLab:
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- building ------------------------------------------------------------------------

    def _netns(self, role: str) -> str:
        name = f"sclp-{self.tag}-{role}"
        nsio.create_netns(name, loopback_up=True).close()
        self.namespaces.append(name)
        return name

    @property
    def switch(self) -> str:
        return f"sclp-{self.tag}-sw"

    def build(self) -> None:
        switch = self._netns("sw")
        with nsio.NetNS(switch) as ns:
            ns.ipr.link("add", ifname="br0", kind="bridge")
            ns.set_link("br0", up=True)
        if self.own_etcd:
            for i in range(self.etcd_members):
                self._start_etcd(i, wait=False)
            for i in range(self.etcd_members):
                self._wait_etcd(i)
        for _ in range(self.hosts):
            self.add_host()
        self.wait_full_mesh()

    def _plug(self, netns: str, port: str, address: str) -> None:
        """A veth from ``netns`` (eth0, ``address``/16) to the underlay bridge."""
        nsio.create_veth(port, self.switch, "eth0", netns)
        with nsio.NetNS(self.switch) as sw:
            sw.ipr.link("set", index=sw.link_index(port), master=sw.link_index("br0"))
        with nsio.NetNS(netns) as ns:
            ns.add_address("eth0", f"{address}/16")

    def _start_etcd(self, i: int, *, wait: bool = True, new: bool = True) -> None:
        """Member ``i`` of the lab's etcd cluster, in namespace ``etcd<i>``."""
        binary = etcd_binary()
        ns = f"sclp-{self.tag}-etcd{i}"
        if ns not in self.namespaces:
            self._netns(f"etcd{i}")
            self._plug(ns, f"etcd{i}", etcd_address(i))
        client, peer = f"http://{etcd_address(i)}:2379", f"http://{etcd_address(i)}:2380"
        initial = ",".join(f"e{k}=http://{etcd_address(k)}:2380" for k in range(self.etcd_members))
        log = open(self.workdir / f"etcd{i}.log", "ab")  # noqa: SIM115 - the child's
        self.etcds[i] = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ns,
                binary,
                f"--name=e{i}",
                f"--data-dir={self.workdir / f'etcd{i}'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster={initial}",
                f"--initial-cluster-state={'new' if new else 'existing'}",
                f"--initial-cluster-token=sclp-{self.tag}",
                f"--experimental-watch-progress-notify-interval={PROGRESS_NOTIFY}",
                "--heartbeat-interval=100",
                "--election-timeout=1000",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        if wait:
            self._wait_etcd(i)

    def _wait_etcd(self, i: int, timeout: float = 20.0) -> None:
        ns = f"sclp-{self.tag}-etcd{i}"
        deadline = time.monotonic() + timeout
        while not self.etcd_healthy(i):
            if self.etcds[i].poll() is not None:
                text = (self.workdir / f"etcd{i}.log").read_text(errors="replace")
                raise LabError(f"etcd member {i} in {ns} exited: {text[-400:]}")
            if time.monotonic() > deadline:
                raise LabError(f"etcd member {i} was not healthy within {timeout:.0f} s")
            time.sleep(0.05)

    def etcd_healthy(self, i: int) -> bool:
        return self._etcd_post(i, "/health", None) is not None

    def _etcd_post(self, i: int, path: str, body: dict[str, Any] | None) -> Any:
        """One request to member ``i`` from inside its namespace; None on failure."""
        url = f"http://{etcd_address(i)}:2379{path}"
        data = None if body is None else json.dumps(body).encode()
        with (
            nsio.run_in_netns(f"sclp-{self.tag}-etcd{i}"),
            contextlib.suppress(OSError, ValueError),
            urllib.request.urlopen(url, data=data, timeout=1) as reply,
        ):
            answer = json.loads(reply.read())
            if path == "/health":
                return answer if answer.get("health") == "true" else None
            return answer
        return None

    def etcd_leader(self) -> int:
        """The index of the etcd member that leads now; raises LabError if none."""
        for i in self.etcds:
            status = self._etcd_post(i, "/v3/maintenance/status", {})
            if status and status.get("leader") == status.get("header", {}).get("member_id"):
                return i
        raise LabError("no etcd member says it leads")

    def etcd_get(self, i: int, path: str) -> str | None:
        """GET ``path`` (``/metrics``, ``/version``) from member ``i``; None on failure."""
        with (
            nsio.run_in_netns(f"sclp-{self.tag}-etcd{i}"),
            contextlib.suppress(OSError, ValueError),
            urllib.request.urlopen(f"http://{etcd_address(i)}:2379{path}", timeout=2) as reply,
        ):
            text: str = reply.read().decode(errors="replace")
            return text
        return None

    def etcd_count(self, key_prefix: str, i: int = 0) -> int:
        """How many keys start with ``key_prefix`` (a ``count_only`` range at member
        ``i``); raises LabError when it does not answer."""
        body = {
            "key": _b64(key_prefix),
            "range_end": _b64(_prefix_end(key_prefix)),
            "count_only": True,
        }
        answer = self._etcd_post(i, "/v3/kv/range", body)
        if answer is None:
            raise LabError(f"etcd member {i} did not answer a range of {key_prefix}")
        return int(answer.get("count", 0))

    def etcd_usage(self, prefix: str = "/sclp", i: int = 0) -> dict[str, int]:
        """What the registry costs etcd (member ``i``): ``keys`` under ``prefix`` (a
        ``count_only`` range), ``members`` and ``macs`` (keys under its ``members/``
        and ``macs/``), ``key_bytes`` and ``value_bytes`` summed over those keys,
        ``db_size`` and ``db_size_in_use`` (bytes of the backend file) and the
        ``revision``.  Raises LabError when member ``i`` does not answer."""
        base = prefix.rstrip("/")

        def count(sub: str) -> int:
            return self.etcd_count(f"{base}/{sub}", i)

        key = f"{base}/"
        body = {"key": _b64(key), "range_end": _b64(_prefix_end(key))}
        listing = self._etcd_post(i, "/v3/kv/range", body)
        status = self._etcd_post(i, "/v3/maintenance/status", {})
        if listing is None or status is None:
            raise LabError(f"etcd member {i} did not answer a range or its status")
        kvs = listing.get("kvs", [])
        return {
            "keys": count(""),
            "members": count("members/"),
            "macs": count("macs/"),
            "key_bytes": sum(len(base64.b64decode(kv["key"])) for kv in kvs),
            "value_bytes": sum(len(base64.b64decode(kv.get("value", ""))) for kv in kvs),
            "db_size": int(status.get("dbSize", 0)),
            "db_size_in_use": int(status.get("dbSizeInUse", 0)),
            "revision": int(status.get("header", {}).get("revision", 0)),
        }

    def stop_etcd(self, i: int) -> None:
        proc = self.etcds[i]
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)

    def restart_etcd(self, i: int = 0) -> None:
        """Stop etcd member ``i`` (SIGTERM) and start it again on its data."""
        if not self.own_etcd:
            raise LabError("this lab uses an etcd it did not start")
        self.stop_etcd(i)
        self._start_etcd(i, new=False)

    def config_text(self, host: Host, protocol: str | None = None) -> str:
        urls = ", ".join(f'"{u}"' for u in self.etcd_urls)
        return (
            f'name = "{host.name}"\n'
            f'control_dir = "{self.control_dir}"\n'
            "[underlay]\n"
            f'local = "{host.address}"\n'
            f'namespace = "{host.netns}"\n'
            f'sclp_carrier = "{self.carrier}"\n'
            "[cluster]\n"
            f"etcd = [{urls}]\n"
            f"lease_ttl = {self.lease_ttl}\n"
            "[[network]]\n"
            f"vni = {VNI}\n"
            f'protocol = "{protocol or self.protocol}"\n'
            'tap = "tap42"\n'
            f'namespace = "{host.vm}"\n'
            f'address = "{vm_address(host.index)}/24"\n'
        )

    def add_host(self, timeout: float = 15.0, protocol: str | None = None) -> Host:
        """One more host (and its VM), its endpoint started; returns it once its
        control socket answers (not once the others have found it).  ``protocol``:
        another encapsulation for its VNI 42 than the lab's (a misconfiguration)."""
        host = self.prepare_host(protocol)
        self.start(host, timeout)
        return host

    def prepare_host(self, protocol: str | None = None) -> Host:
        """One more host's namespaces, underlay port and configuration; its endpoint
        is not started (:meth:`spawn`, :meth:`start`)."""
        i = len(self.members)
        netns, vm = self._netns(f"h{i}"), self._netns(f"vm{i}")
        self._plug(netns, f"p{i}", host_address(i))
        with nsio.NetNS(vm) as ns:
            ns.write_sysctl("net.ipv6.conf.all.disable_ipv6", 1)
        name = f"cl{self.tag}h{i}"
        host = Host(i, netns, vm, name, self.workdir / f"{name}.toml", self.workdir / f"{name}.log")
        host.config.write_text(self.config_text(host, protocol))
        self.members.append(host)
        return host

    def start(self, host: Host, timeout: float = 15.0) -> None:
        """:meth:`spawn` the endpoint and :meth:`wait_up` for it."""
        self.spawn(host)
        self.wait_up(host, timeout)

    def spawn(self, host: Host) -> None:
        """Start the host's ``sclp run`` and return at once."""
        log = open(host.log, "ab")  # noqa: SIM115 - the child's
        host.spawned_at = time.monotonic()
        host.proc = subprocess.Popen(
            [sys.executable, "-m", "sclp", "run", "--config", str(host.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()

    def is_up(self, host: Host) -> bool:
        """The host's endpoint answers on its control socket; LabError if it exited."""
        if host.proc is None or host.proc.poll() is not None:
            raise LabError(f"endpoint {host.name} exited: {self.log_tail(host)}")
        try:
            host.stats(self.control_dir)
        except (ControlError, OSError, ValueError):
            return False
        return True

    def wait_up(self, host: Host, timeout: float = 15.0) -> None:
        """Return once the spawned endpoint answers; LabError if it exits or stays
        silent for ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self.is_up(host):
            if time.monotonic() > deadline:
                raise LabError(f"endpoint {host.name} did not come up within {timeout:.0f} s")
            time.sleep(0.05)

    def log_tail(self, host: Host, lines: int = 5) -> str:
        try:
            text = host.log.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    # -- observing -----------------------------------------------------------------------

    def alive(self) -> list[Host]:
        return [h for h in self.members if h.proc is not None and h.proc.poll() is None]

    def peers(self, host: Host) -> set[str]:
        """The peers ``host``'s endpoint has on VNI 42 now."""
        try:
            return set(host.stats(self.control_dir)["vni"][str(VNI)]["peers"])
        except (ControlError, OSError, ValueError, KeyError):
            return set()

    def converged(self) -> bool:
        """Every live host has exactly the other live hosts as peers."""
        alive = self.alive()
        addresses = {h.address for h in alive}
        return all(self.peers(h) == addresses - {h.address} for h in alive)

    def wait_converged(self, timeout: float) -> float:
        """Seconds until :meth:`converged`; raises LabError after ``timeout``."""
        start = time.monotonic()
        while not self.converged():
            if time.monotonic() - start > timeout:
                detail = {h.name: sorted(self.peers(h)) for h in self.alive()}
                raise LabError(f"no full mesh within {timeout:.0f} s: {detail}")
            time.sleep(0.05)
        return time.monotonic() - start

    def wait_full_mesh(self, timeout: float = 30.0) -> float:
        return self.wait_converged(timeout)

    def ping(self, src: Host, dst: Host, count: int = 1, wait: float = 2.0) -> bool:
        result = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                src.vm,
                "ping",
                "-c",
                str(count),
                "-i",
                "0.2",
                "-W",
                str(wait),
                vm_address(dst.index),
            ],
            capture_output=True,
            text=True,
            timeout=count * (wait + 0.2) + 10,
            check=False,
        )
        return result.returncode == 0

    def all_pairs(self, hosts: list[Host] | None = None) -> dict[tuple[int, int], bool]:
        """Ping every ordered pair of (live) hosts' VMs, a few in parallel."""
        chosen = hosts if hosts is not None else self.alive()
        pairs = [(a, b) for a in chosen for b in chosen if a is not b]
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(lambda ab: self.ping(*ab), pairs))
        return {(a.index, b.index): ok for (a, b), ok in zip(pairs, results, strict=True)}

    # -- failures ------------------------------------------------------------------------

    def kill(self, host: Host) -> None:
        """``kill -9`` the host's endpoint: no goodbye to etcd, its lease must expire."""
        if host.proc is not None and host.proc.poll() is None:
            host.proc.send_signal(signal.SIGKILL)
            host.proc.wait()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path(host.name, self.control_dir))

    # -- tearing down --------------------------------------------------------------------

    def stop_endpoints(self, timeout: float = 5.0) -> list[int]:
        for host in self.members:
            if host.proc is not None and host.proc.poll() is None:
                host.proc.send_signal(signal.SIGTERM)
        codes = []
        for host in self.members:
            if host.proc is None:
                continue
            try:
                codes.append(host.proc.wait(timeout=timeout))
            except subprocess.TimeoutExpired:
                host.proc.kill()
                codes.append(host.proc.wait())
        return codes

    def close(self) -> None:
        self.stop_endpoints()
        for proc in self.etcds.values():
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for name in reversed(self.namespaces):
            with contextlib.suppress(nsio.NetnsError, OSError):
                nsio.delete_netns(name)
        self.namespaces.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)
