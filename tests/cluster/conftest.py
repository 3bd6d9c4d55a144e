"""Fixtures for the cluster registry tests: real etcd processes on loopback.

``etcd`` starts one member (Debian's ``etcd-server``, ``/usr/bin/etcd``) with free
ports and a data directory under the test's tmp; ``etcd_cluster`` starts three.  Each
member can be stopped, killed, frozen (SIGSTOP: a silent partition) and started again
on the same data directory.  Every process is killed and its directory removed when
the test ends.  Without ``etcd-server`` the tests fail with the package to install:
the quick start installs it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sclp.cluster.agent import ClusterAgent
from sclp.cluster.model import ClusterView, Member

ETCD = "/usr/bin/etcd"
# Progress notifications well below the agents' watch timeout in these tests.
PROGRESS_INTERVAL = "1s"
WATCH_TIMEOUT = 4.0


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> float:
    """Poll ``condition`` until it is true; the seconds it took.  Fails the test with
    ``what`` after ``timeout``."""
    start = time.monotonic()
    while True:
        if condition():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Tls:
    ca: str
    cert: str  # server and client certificate (127.0.0.1, localhost)
    key: str


@dataclass
class EtcdMember:
    name: str
    data_dir: Path
    client_port: int
    peer_port: int
    initial_cluster: str
    log: Path
    tls: Tls | None = None
    progress: str | None = PROGRESS_INTERVAL  # None: etcd's default (10 minutes)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def start(self) -> None:
        args = [
            ETCD,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.url,
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.initial_cluster,
            "--initial-cluster-state", "new",
        ]  # fmt: skip
        if self.progress:
            args += ["--experimental-watch-progress-notify-interval", self.progress]
        if self.tls:
            args += [
                "--trusted-ca-file", self.tls.ca,
                "--cert-file", self.tls.cert,
                "--key-file", self.tls.key,
                "--client-cert-auth",
            ]  # fmt: skip
        out = self.log.open("ab")
        self.process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        out.close()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def freeze(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def healthy(self) -> bool:
        if self.tls:
            return _tls_health(self)
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1) as answer:
                return bool(json.load(answer).get("health") == "true")
        except (OSError, ValueError):
            return False


def _tls_health(member: EtcdMember) -> bool:
    import ssl

    assert member.tls is not None
    context = ssl.create_default_context(cafile=member.tls.ca)
    context.load_cert_chain(member.tls.cert, member.tls.key)
    try:
        with urllib.request.urlopen(f"{member.url}/health", timeout=1, context=context) as a:
            return bool(json.load(a).get("health") == "true")
    except (OSError, ValueError, urllib.error.URLError):
        return False


class EtcdCluster:
    def __init__(self, root: Path, size: int, tls: Tls | None = None) -> None:
        if not os.path.exists(ETCD):
            pytest.fail(
                f"{ETCD} not found: install the Debian package etcd-server "
                "(apt-get install etcd-server; ./quickstart.sh installs it)"
            )
        ports = [(free_port(), free_port()) for _ in range(size)]
        initial = ",".join(f"e{i}=http://127.0.0.1:{p}" for i, (_, p) in enumerate(ports))
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.members = [
            EtcdMember(f"e{i}", root / f"e{i}", c, p, initial, root / f"e{i}.log", tls)
            for i, (c, p) in enumerate(ports)
        ]

    @property
    def urls(self) -> list[str]:
        return [m.url for m in self.members]

    def start(self) -> None:
        for member in self.members:
            member.start()
        self.wait_healthy()

    def wait_healthy(self, members: list[EtcdMember] | None = None) -> None:
        for member in members or self.members:
            wait_for(member.healthy, 20, f"etcd {member.name} healthy ({member.log})")

    def leader(self) -> EtcdMember:
        """The member that leads now (from the members' own status)."""
        from sclp.cluster.etcd import Etcd

        for member in self.members:
            if member.process is None:
                continue
            client = Etcd([member.url], ca=_ca(member), cert=_cert(member), key=_key(member))
            try:
                status = client._post("maintenance/status", {}, one_url=True)
            finally:
                client.close()
            if status.get("leader") == status["header"]["member_id"]:
                return member
        raise AssertionError("no leader")

    def close(self) -> None:
        for member in self.members:
            if member.process is not None:
                member.thaw()
                member.stop(signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


def _ca(m: EtcdMember) -> str | None:
    return m.tls.ca if m.tls else None


def _cert(m: EtcdMember) -> str | None:
    return m.tls.cert if m.tls else None


def _key(m: EtcdMember) -> str | None:
    return m.tls.key if m.tls else None


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdMember]:
    """One etcd member on loopback (plain HTTP)."""
    cluster = EtcdCluster(tmp_path / "etcd", 1)
    try:
        cluster.start()
        yield cluster.members[0]
    finally:
        cluster.close()


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    """Three etcd members on loopback (plain HTTP)."""
    cluster = EtcdCluster(tmp_path / "etcd3", 3)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


def make_tls(directory: Path) -> Tls:
    """A CA and one certificate for 127.0.0.1/localhost (server and client auth),
    made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl not found: install the Debian package openssl")
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca = directory / "ca.key", directory / "ca.pem"
    key, csr, cert = directory / "node.key", directory / "node.csr", directory / "node.pem"
    ext = directory / "node.ext"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        "keyUsage=digitalSignature,keyEncipherment\n"
    )

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=sclp test CA", "-keyout", str(ca_key), "-out", str(ca))  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", str(key), "-out", str(csr))  # fmt: skip
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
            "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(cert))  # fmt: skip
    return Tls(str(ca), str(cert), str(key))


@pytest.fixture
def etcd_tls(tmp_path: Path) -> Iterator[EtcdMember]:
    """One etcd member serving HTTPS and requiring client certificates."""
    tls = make_tls(tmp_path / "pki")
    cluster = EtcdCluster(tmp_path / "etcd-tls", 1, tls)
    try:
        cluster.start()
        yield cluster.members[0]
    finally:
        cluster.close()


class Agents:
    """Agents made by a test, each with the views it was handed; all stopped at the
    end of the test (and checked to leave no thread behind)."""

    def __init__(self) -> None:
        self.agents: dict[str, ClusterAgent] = {}
        self.views: dict[str, list[ClusterView]] = {}
        self.lock = threading.Lock()

    def add(
        self,
        urls: list[str],
        name: str,
        address: str,
        networks: dict[int, str] | None = None,
        *,
        carrier: str = "udp",
        port: int = 7234,
        prefix: str = "/sclp",
        ttl: int = 3,
        start: bool = True,
        tls: Tls | None = None,
        label: str | None = None,
        watch_timeout: float = WATCH_TIMEOUT,
    ) -> ClusterAgent:
        """A new agent for endpoint ``name``; its views and the agent are filed under
        ``label`` (default: the name)."""
        label = label or name
        me = Member(name, address, carrier, port, networks or {42: "vxlan-sclp"})
        self.views[label] = []

        def on_view(view: ClusterView) -> None:
            with self.lock:
                self.views[label].append(view)

        agent = ClusterAgent(
            urls,
            prefix,
            ttl,
            me,
            on_view,
            watch_timeout=watch_timeout,
            ca=tls.ca if tls else None,
            cert=tls.cert if tls else None,
            key=tls.key if tls else None,
        )
        self.agents[label] = agent
        if start:
            agent.start()
        return agent

    def view(self, name: str) -> ClusterView | None:
        with self.lock:
            views = self.views[name]
            return views[-1] if views else None

    def peers(self, name: str, vni: int = 42) -> frozenset[str]:
        view = self.view(name)
        return view.peers.get(vni, frozenset()) if view else frozenset()

    def macs(self, name: str, vni: int = 42) -> dict[bytes, str]:
        view = self.view(name)
        return dict(view.macs.get(vni, {})) if view else {}

    def members(self, name: str) -> set[str]:
        view = self.view(name)
        return set(view.members) if view else set()

    def stop_all(self) -> None:
        for agent in self.agents.values():
            agent.stop()


@pytest.fixture
def agents() -> Iterator[Agents]:
    before = set(threading.enumerate())
    made = Agents()
    try:
        yield made
    finally:
        made.stop_all()
    left = [t for t in threading.enumerate() if t not in before and t.name == "sclp-cluster"]
    assert not left, f"agent threads left behind: {left}"
