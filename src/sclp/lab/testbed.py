"""The VM-to-VM testbed of the paper's evaluation, in network namespaces.

Four namespaces: two "hosts" joined by a veth pair (the underlay) and two "VMs",
each reached from its host through a TAP owned by an ``sclp run`` endpoint (or, for
the references, a kernel VXLAN device, a ``tincd`` in switch mode, or a bare veth
between the VMs).  Every name
carries a random tag so concurrent runs never collide; :meth:`Testbed.close` (also
called on any failure while building) stops the endpoints and deletes the
namespaces, which removes every interface in them.

Addresses live only inside these namespaces: 10.77.0.0/24 underlay (or
fd00:77::/64 with ``underlay_family=6``), 192.168.77.0/24 overlay (always IPv4).
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sclp.endpoint.control import ControlError, query, socket_path
from sclp.io import netns as nsio
from sclp.wire.vxlan import VXLAN_PORT

UNDERLAY = ("10.77.0.1", "10.77.0.2")
UNDERLAY6 = ("fd00:77::1", "fd00:77::2")
OVERLAY = ("192.168.77.1", "192.168.77.2")
VNI = 42


class TestbedError(Exception):
    """Building or driving the testbed failed; the message says where."""


def wait_for_output(
    proc: subprocess.Popen[Any], text: str, timeout: float, what: str = "process"
) -> str:
    """Read ``proc``'s stdout until ``text`` appears; return what was read.  Raise
    TestbedError if the process exits or ``timeout`` seconds pass first.  Reads the
    pipe's file descriptor directly (``proc.stdout`` is not used afterwards)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    seen = b""
    needle = text.encode()
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TestbedError(f"{what}: no {text!r} within {timeout:.0f} s: {seen[-300:]!r}")
        readable, _, _ = select.select([fd], [], [], min(left, 0.1))
        if readable:
            chunk = os.read(fd, 4096)
            if not chunk:
                err = proc.stderr.read() if proc.stderr is not None else ""
                raise TestbedError(f"{what} exited before {text!r}: {err or seen[-300:]!r}")
            seen += chunk
    return seen.decode(errors="replace")


def popen_in(netns: str, args: list[str]) -> subprocess.Popen[str]:
    """Start ``args`` in network namespace ``netns``, its output piped, no stdin."""
    return subprocess.Popen(
        ["ip", "netns", "exec", netns, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


@dataclass
class Testbed:
    """``protocol``: an sclp protocol, ``"kernel-vxlan"``, ``"tinc"`` or ``"veth"``.

    ``kernel_offloads=False`` (kernel VXLAN only) turns TSO and GSO off on the
    sender's ``vx0`` (``ethtool -K vx0 tso off gso off`` in host 1): the kernel's
    per-packet path, the fair reference for our classic tunnels.

    ``faults``: keys of an ``[underlay.faults]`` table (e.g. ``"drop = 0.01"``) for
    both endpoints; ``extra_config`` is inserted before ``[underlay]``, where a
    sub-table of it cannot go (a table of its own such as ``[metrics]`` can);
    ``env`` is added to the endpoints' environment (e.g. ``NOTIFY_SOCKET``).

    ``underlay_family=6`` gives the underlay veth the IPv6 addresses of
    :data:`UNDERLAY6` (``/64``, ``nodad``: usable at once) and writes them as the
    endpoints' ``local`` and ``peers`` (and the kernel VXLAN's ``local``/``remote``);
    the VMs keep their IPv4 overlay addresses."""

    __test__ = False  # not a pytest test class, despite the name

    protocol: str = "vxlan-sclp"
    carrier: str = "ip"
    vm_mtu: int | None = None
    underlay_mtu: int = 1500
    extra_config: str = ""
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    endpoints: list[subprocess.Popen[bytes]] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    workdir: Path | None = None
    kernel_offloads: bool = True
    faults: str = ""
    env: dict[str, str] = field(default_factory=dict)  # added to each endpoint's environment
    underlay_family: int = 4  # 4 or 6: the underlay's IP version

    def __post_init__(self) -> None:
        if self.underlay_family not in (4, 6):
            raise ValueError(f"underlay_family must be 4 or 6, not {self.underlay_family!r}")

    @property
    def underlay(self) -> tuple[str, str]:
        """The two hosts' underlay addresses (:data:`UNDERLAY` or :data:`UNDERLAY6`)."""
        return UNDERLAY6 if self.underlay_family == 6 else UNDERLAY

    @property
    def hosts(self) -> tuple[str, str]:
        return (f"sclp-{self.tag}-h1", f"sclp-{self.tag}-h2")

    @property
    def vms(self) -> tuple[str, str]:
        return (f"sclp-{self.tag}-vm1", f"sclp-{self.tag}-vm2")

    @property
    def vm_interface(self) -> str:
        """The VM's interface: the endpoint's TAP, or the veth end for the references."""
        return "eth0" if self.protocol in ("veth", "kernel-vxlan", "tinc") else "tap0"

    def endpoint_name(self, i: int) -> str:
        return f"tb{self.tag}h{i + 1}"

    def __enter__(self) -> Testbed:
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- building ----------------------------------------------------------------

    def build(self) -> None:
        if os.geteuid() != 0:
            raise TestbedError("the testbed needs root to create network namespaces; use sudo")
        self.workdir = Path(tempfile.mkdtemp(prefix=f"sclp-{self.tag}-"))
        for name in (*self.hosts, *self.vms):
            nsio.create_netns(name, loopback_up=True).close()
            self.namespaces.append(name)
        if self.protocol == "veth":
            nsio.create_veth("eth0", self.vms[0], "eth0", self.vms[1], mtu=self.vm_mtu or 1500)
            for vm, addr in zip(self.vms, OVERLAY, strict=True):
                with nsio.NetNS(vm) as ns:
                    ns.add_address("eth0", f"{addr}/24")
            return
        nsio.create_veth("ul0", self.hosts[0], "ul0", self.hosts[1], mtu=self.underlay_mtu)
        if self.underlay_family == 6:
            self._underlay_v6()
        else:
            for host, addr in zip(self.hosts, UNDERLAY, strict=True):
                with nsio.NetNS(host) as ns:
                    ns.add_address("ul0", f"{addr}/24")
        if self.protocol == "kernel-vxlan":
            self._build_kernel_vxlan()
            return
        if self.protocol == "tinc":
            self._build_tinc()
            return
        for i in range(2):
            self._start_endpoint(i)
        for i in range(2):
            self._wait_endpoint(i)

    def _underlay_v6(self, timeout: float = 5.0) -> None:
        """IPv6 on ``ul0`` in both hosts, without duplicate address detection
        (``nodad``: the address is usable at once, not "tentative" for a second or
        two); then wait, with a deadline, until neither address is tentative."""
        for host, addr in zip(self.hosts, UNDERLAY6, strict=True):
            with nsio.NetNS(host) as ns:
                for scope in ("all", "default", "ul0"):
                    ns.write_sysctl(f"net.ipv6.conf.{scope}.disable_ipv6", 0)
            self._ip(host, "-6", "address", "add", f"{addr}/64", "dev", "ul0", "nodad")
        deadline = time.monotonic() + timeout
        for host in self.hosts:
            while True:
                shown = subprocess.run(
                    ["ip", "-n", host, "-6", "address", "show", "dev", "ul0", "tentative"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                    check=False,
                ).stdout
                if "inet6" not in shown:
                    break
                if time.monotonic() > deadline:
                    raise TestbedError(f"IPv6 on ul0 in {host} still tentative: {shown.strip()}")
                time.sleep(0.05)

    def _build_kernel_vxlan(self) -> None:
        """The reference: Linux's own VXLAN device in each host, bridged to a veth
        leading into the VM namespace (the same shape as a TAP-attached VM)."""
        mtu = self.vm_mtu or self.underlay_mtu - (70 if self.underlay_family == 6 else 50)
        for i, (host, vm) in enumerate(zip(self.hosts, self.vms, strict=True)):
            self._ip(
                host,
                "link",
                "add",
                "vx0",
                "type",
                "vxlan",
                "id",
                str(VNI),
                "local",
                self.underlay[i],
                "remote",
                self.underlay[1 - i],
                "dstport",
                str(VXLAN_PORT),
                "nolearning",
            )
            self._ip(host, "link", "add", "br0", "type", "bridge")
            nsio.create_veth("vm0", host, "eth0", vm, mtu=mtu)
            for dev in ("vx0", "vm0"):
                self._ip(host, "link", "set", dev, "master", "br0", "mtu", str(mtu), "up")
            self._ip(host, "link", "set", "br0", "up")
            with nsio.NetNS(vm) as ns:
                ns.add_address("eth0", f"{OVERLAY[i]}/24")
        if not self.kernel_offloads:
            self._kernel_offloads_off(self.hosts[0])

    def _build_tinc(self, timeout: float = 15.0) -> None:
        """The user-space reference: ``tincd`` 1.0 in switch mode in each host (see
        :mod:`sclp.lab.tinc`), its TAP bridged to a veth leading into the VM like the
        kernel VXLAN's; the daemons are :attr:`endpoints` (their CPU is measured,
        they are stopped with SIGTERM by :meth:`close`).  Returns once VM1 pings VM2."""
        from sclp.lab import tinc

        assert self.workdir is not None
        try:
            confdirs = tinc.write_configs(
                self.workdir,
                self.underlay,
                tinc.path_mtu(self.underlay_mtu, self.underlay_family),
            )
        except RuntimeError as exc:
            raise TestbedError(str(exc)) from None
        mtu = self.vm_mtu or tinc.vm_mtu(self.underlay_mtu, self.underlay_family)
        for i, (host, vm) in enumerate(zip(self.hosts, self.vms, strict=True)):
            log = open(self.workdir / f"h{i + 1}.log", "wb")  # noqa: SIM115 - the child's
            cmd = tinc.tincd_command(confdirs[i], self.workdir / f"tinc-h{i + 1}.pid")
            proc = subprocess.Popen(
                ["ip", "netns", "exec", host, *cmd],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            log.close()
            self.endpoints.append(proc)
            self._ip(host, "link", "add", "br0", "type", "bridge")
            nsio.create_veth("vm0", host, "eth0", vm, mtu=mtu)
            with nsio.NetNS(vm) as ns:
                ns.add_address("eth0", f"{OVERLAY[i]}/24")
        deadline = time.monotonic() + timeout
        for i, host in enumerate(self.hosts):
            while not self._has_link(host, tinc.INTERFACE):
                if self.endpoints[i].poll() is not None:
                    tail = " | ".join(self.log_text(i).strip().splitlines()[-3:])
                    raise TestbedError(f"tincd in {host} exited: {tail}")
                if time.monotonic() > deadline:
                    raise TestbedError(f"tincd made no {tinc.INTERFACE} in {host}")
                time.sleep(0.05)
            for dev in (tinc.INTERFACE, "vm0"):
                self._ip(host, "link", "set", dev, "master", "br0", "mtu", str(mtu), "up")
            self._ip(host, "link", "set", "br0", "up")
        # The daemons connect, exchange keys and learn MACs: wait for the first reply.
        while self.run_in(
            self.vms[0], ["ping", "-c", "1", "-W", "1", OVERLAY[1]], timeout=10, check=False
        ).returncode:
            for i, proc in enumerate(self.endpoints):
                if proc.poll() is not None:
                    tail = " | ".join(self.log_text(i).strip().splitlines()[-3:])
                    raise TestbedError(f"tincd h{i + 1} exited: {tail}")
            if time.monotonic() > deadline:
                raise TestbedError(f"VM1 cannot reach VM2 through tinc within {timeout:.0f} s")

    @staticmethod
    def _has_link(netns: str, name: str) -> bool:
        return (
            subprocess.run(
                ["ip", "-n", netns, "link", "show", name],
                capture_output=True,
                timeout=10,
                check=False,
            ).returncode
            == 0
        )

    def _kernel_offloads_off(self, host: str) -> None:
        if shutil.which("ethtool") is None:
            raise TestbedError("ethtool is not installed (apt-get install ethtool)")
        self.run_in(host, ["ethtool", "-K", "vx0", "tso", "off", "gso", "off"], timeout=10)
        shown = self.run_in(host, ["ethtool", "-k", "vx0"], timeout=10).stdout
        for feature in ("tcp-segmentation-offload", "generic-segmentation-offload"):
            if f"{feature}: off" not in shown:
                raise TestbedError(f"ethtool could not turn {feature} off on vx0 in {host}")

    @staticmethod
    def _ip(netns: str, *args: str) -> None:
        # iproute2 for the kernel VXLAN and bridge (pyroute2 also could; this is the
        # command an operator would type, which makes the reference easy to audit).
        result = subprocess.run(
            ["ip", "-n", netns, *args], capture_output=True, text=True, timeout=10, check=False
        )
        if result.returncode:
            raise TestbedError(f"ip -n {netns} {' '.join(args)}: {result.stderr.strip()}")

    def config_text(self, i: int) -> str:
        mtu = f"mtu = {self.vm_mtu}\n" if self.vm_mtu else ""
        faults = f"[underlay.faults]\n{self.faults.rstrip()}\n" if self.faults else ""
        return (
            f'name = "{self.endpoint_name(i)}"\n'
            f"{self.extra_config}"
            "[underlay]\n"
            f'local = "{self.underlay[i]}"\n'
            f'namespace = "{self.hosts[i]}"\n'
            f'sclp_carrier = "{self.carrier}"\n'
            f"{faults}"
            "[[network]]\n"
            f"vni = {VNI}\n"
            f'protocol = "{self.protocol}"\n'
            f"{self.port_keys(i)}"
            f"{mtu}"
            f'peers = ["{self.underlay[1 - i]}"]\n'
        )

    def port_keys(self, i: int) -> str:
        """The ``[[network]]`` keys of host ``i``'s VM port: a TAP the endpoint owns,
        moved into the VM's namespace with its overlay address."""
        return f'tap = "tap0"\nnamespace = "{self.vms[i]}"\naddress = "{OVERLAY[i]}/24"\n'

    def _start_endpoint(self, i: int) -> None:
        assert self.workdir is not None
        path = self.workdir / f"h{i + 1}.toml"
        path.write_text(self.config_text(i))
        log = open(self.workdir / f"h{i + 1}.log", "wb")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(
            [sys.executable, "-m", "sclp", "run", "--config", str(path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **self.env} if self.env else None,
        )
        log.close()
        self.endpoints.append(proc)

    def log_text(self, i: int) -> str:
        assert self.workdir is not None
        try:
            return (self.workdir / f"h{i + 1}.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _wait_endpoint(self, i: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        path = socket_path(self.endpoint_name(i))
        while time.monotonic() < deadline:
            if self.endpoints[i].poll() is not None:
                tail = self.log_text(i).strip().splitlines()[-3:]
                raise TestbedError(f"endpoint h{i + 1} exited: {' | '.join(tail)}")
            with contextlib.suppress(ControlError, OSError, json.JSONDecodeError):
                query(path, timeout=1.0)
                return
            time.sleep(0.05)
        raise TestbedError(f"endpoint h{i + 1} did not come up within {timeout:.0f} s")

    # -- driving -----------------------------------------------------------------

    def stats(self, i: int) -> dict[str, Any]:
        result: dict[str, Any] = query(socket_path(self.endpoint_name(i)))
        return result

    def vm_link_counters(self, i: int) -> dict[str, int]:
        """VM ``i``'s interface counters (``rx_packets``, ``rx_bytes``, ``rx_dropped``,
        ``tx_packets``, ``tx_bytes``, ``tx_dropped``; netlink IFLA_STATS64, the same
        figures as ``/sys/class/net/IF/statistics``) and its ``mtu``.  A frame the
        endpoint writes to the TAP is one ``rx_packets`` in the VM, GSO or not."""
        try:
            with nsio.NetNS(self.vms[i]) as ns:
                info = ns.link_info(self.vm_interface)
        except OSError as exc:
            raise TestbedError(f"reading {self.vm_interface} in {self.vms[i]}: {exc}") from None
        return {
            "rx_packets": info.rx_packets,
            "rx_bytes": info.rx_bytes,
            "rx_dropped": info.rx_dropped,
            "tx_packets": info.tx_packets,
            "tx_bytes": info.tx_bytes,
            "tx_dropped": info.tx_dropped,
            "mtu": info.mtu,
        }

    def run_in(
        self, netns: str, args: list[str], timeout: float = 60.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        try:
            result = subprocess.run(
                ["ip", "netns", "exec", netns, *args],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise TestbedError(
                f"{' '.join(args)} in {netns} took longer than {timeout:.0f} s"
            ) from None
        if check and result.returncode:
            raise TestbedError(
                f"{' '.join(args)} in {netns} failed: "
                f"{result.stderr.strip() or result.stdout.strip()}"
            )
        return result

    def popen_in(self, netns: str, args: list[str]) -> subprocess.Popen[str]:
        return popen_in(netns, args)

    def ping(self, count: int = 3) -> subprocess.CompletedProcess[str]:
        return self.run_in(
            self.vms[0],
            ["ping", "-c", str(count), "-i", "0.2", "-W", "2", OVERLAY[1]],
            timeout=count + 10,
            check=False,
        )

    def iperf3(
        self,
        seconds: float = 5,
        udp: bool = False,
        bitrate: str = "0",
        extra: list[str] | None = None,
    ) -> dict[str, Any]:
        """Run iperf3 from VM1 to VM2; return its JSON report."""
        if shutil.which("iperf3") is None:
            raise TestbedError("iperf3 is not installed (apt-get install iperf3)")
        server = self.popen_in(
            self.vms[1], ["iperf3", "-s", "-1", "--forceflush", "-B", OVERLAY[1]]
        )
        try:
            wait_for_output(server, "Server listening", timeout=10.0, what="iperf3 server")
            args = ["iperf3", "-c", OVERLAY[1], "-t", str(seconds), "-J"]
            if udp:
                args += ["-u", "-b", bitrate]
            args += extra or []
            result = self.run_in(self.vms[0], args, timeout=seconds + 30, check=False)
            try:
                report: dict[str, Any] = json.loads(result.stdout)
            except json.JSONDecodeError:
                raise TestbedError(
                    f"iperf3 failed: {result.stderr.strip() or result.stdout[-300:]}"
                ) from None
            if "error" in report:
                raise TestbedError(f"iperf3: {report['error']}")
            return report
        finally:
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(timeout=5)
            if server.poll() is None:
                server.kill()
                server.wait()

    def restart_endpoint(self, i: int, timeout: float = 15.0) -> None:
        """Stop endpoint ``i`` (SIGTERM) and start it again with the same file; its
        log so far is kept in ``h{i+1}.log.1`` (``.2``, ... on later restarts) and
        :meth:`log_text` goes on with the new one."""
        assert self.workdir is not None
        proc = self.endpoints[i]
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log = self.workdir / f"h{i + 1}.log"
        n = 1
        while log.with_name(f"{log.name}.{n}").exists():
            n += 1
        log.rename(log.with_name(f"{log.name}.{n}"))
        with open(log, "wb") as out:
            self.endpoints[i] = subprocess.Popen(
                [sys.executable, "-m", "sclp", "run", "--config", str(log.with_suffix(".toml"))],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env} if self.env else None,
            )
        self._wait_endpoint(i, timeout)

    # -- teardown ----------------------------------------------------------------

    def stop_endpoints(self, timeout: float = 5.0) -> list[int]:
        codes = []
        for proc in self.endpoints:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for i, proc in enumerate(self.endpoints):
            try:
                codes.append(proc.wait(timeout=timeout))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
            if codes[-1] < 0:  # killed: it could not remove its control socket itself
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(socket_path(self.endpoint_name(i)))
        self.endpoints.clear()
        return codes

    def close(self) -> None:
        self.stop_endpoints()
        for name in reversed(self.namespaces):
            with contextlib.suppress(OSError):
                nsio.delete_netns(name)
        self.namespaces.clear()
        if self.workdir is not None and not os.environ.get("SCLP_KEEP_LOGS"):
            shutil.rmtree(self.workdir, ignore_errors=True)
