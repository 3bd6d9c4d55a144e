"""Shared pieces of the robustness tests: hand-made underlay packets of every
protocol (valid, forged or broken), sending them from a namespace with a chosen
source address, a listener in a VM, and the endpoint's memory and liveness.

The "hostile host" is always host 2's namespace: it sits on the underlay link
(the veth between the hosts), which is where an attacker on a shared L2 underlay
sits.  It sends either from an extra address that no endpoint lists as a peer
(:data:`HOSTILE`), or with the peer's own address: on a shared L2 segment nothing
stops a neighbour from using any source address, so spoofing a peer is sending
from its address, which host 2's namespace can do without raw IP header tricks.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from sclp.engine.segmenter import Segmenter
from sclp.engine.stt import SttSegmenter, pseudo_sum_for
from sclp.io import netns as nsio
from sclp.lab.testbed import OVERLAY
from sclp.wire import geneve, nvgre, sclp, stt, vxlan
from sclp.wire.checksum import internet_checksum
from sclp.wire.sclp import Carrier, SclpHeader

from ..e2e.helpers import popen_in, run_in, stop, wait_iperf3_server, wait_line

HOSTILE = "10.77.0.9"
LISTEN_PORT = 9999
STT_PORT = stt.STT_PORT

# Prints every datagram to ADDR:PORT up to its first NUL byte (a tag), until `idle`
# seconds of silence.
_LISTENER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(10.0)
print("ready", flush=True)
try:
    while True:
        data = s.recv(65535)
        print(data.split(b"\0")[0][:40].decode(errors="replace"), flush=True)
        s.settimeout(float(sys.argv[3]))
except socket.timeout:
    pass
"""

# -- packets -----------------------------------------------------------------------------


def inner_udp_frame(
    dst_mac: str,
    payload: bytes,
    dst_ip: str = OVERLAY[0],
    src_mac: str = "02:00:00:00:00:99",
    src: str = "192.168.77.99",
) -> bytes:
    """Ethernet + IPv4 + UDP from ``src`` to ``dst_ip``:LISTEN_PORT, checksums
    complete (the VM's kernel verifies them)."""
    src_ip = ipaddress.IPv4Address(src).packed
    dst = ipaddress.IPv4Address(dst_ip).packed
    udp_len = 8 + len(payload)
    pseudo = src_ip + dst + struct.pack("!BBH", 0, 17, udp_len)
    udp = struct.pack("!HHHH", 40000, LISTEN_PORT, udp_len, 0) + payload
    csum = internet_checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    ip = bytearray(
        struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 1, 0, 64, 17, 0, src_ip, dst)
    )
    struct.pack_into("!H", ip, 10, internet_checksum(ip))
    mac = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", ""))
    return mac + b"\x08\x00" + bytes(ip) + udp


def raw_sclp(
    ident: int,
    first: bool,
    remaining: int,
    data: bytes,
    dport: int = sclp.SCLP_PORT_VXLAN,
    sport: int = 50000,
    checksum: bool = True,
) -> bytes:
    """One SCLP segment with any field values; a correct checksum unless told."""
    hdr = SclpHeader(sport, dport, ident, first, remaining)
    if checksum:
        hdr = SclpHeader(sport, dport, ident, first, remaining, sclp.compute_checksum(hdr, data))
    return sclp.encode(hdr) + data


def sclp_segments(
    payload: bytes,
    carrier: str,
    seg_size: int = 1000,
    ident: int | None = None,
    dport: int = sclp.SCLP_PORT_VXLAN,
) -> list[bytes]:
    """``payload`` (tunnel header + frame) as an endpoint would segment it."""
    mode = Carrier.UDP if carrier == "udp" else Carrier.IP
    batch = Segmenter(ident_start=ident).segment_payload(
        payload, 50000, dport, seg_size, checksum=mode is Carrier.IP
    )
    return [bytes(s) for s in batch.segments()]


def stt_segment(
    total: int,
    offset: int,
    ident: int,
    data: bytes,
    src: str,
    dst: str,
    *,
    doff: int = 5,
    checksum: bool = True,
    flags: int = 0x10,
) -> bytes:
    """One STT pseudo-TCP segment with any field values (options are zero bytes)."""
    hdr = bytearray(
        struct.pack(
            "!HHIIBBHHH",
            50000,
            STT_PORT,
            (total << 16) | offset,
            ident,
            doff << 4,
            flags,
            65535,
            0,
            0,
        )
    )
    segment = hdr + bytes(max(0, doff * 4 - 20)) + data
    if checksum:
        pseudo = pseudo_sum_for(socket.inet_aton(src), socket.inet_aton(dst), len(segment))
        struct.pack_into("!H", segment, 16, internet_checksum(segment, pseudo))
    return bytes(segment)


def stt_segments(
    frame: bytes, src: str, dst: str, mss: int = 1000, ident: int | None = None, vni: int = 42
) -> list[bytes]:
    stt_frame = stt.encode(stt.SttHeader(context_id=vni)) + frame
    batch = SttSegmenter().segment_frame(
        stt_frame, 50000, mss, socket.inet_aton(src), socket.inet_aton(dst), ident=ident
    )
    return [bytes(s) for s in batch.segments()]


# Where each kind of underlay packet goes: ("udp", port) or ("raw", IP protocol).
UDP_VXLAN = ("udp", vxlan.VXLAN_PORT)  # the endpoint's default vxlan_port
UDP_GENEVE = ("udp", geneve.GENEVE_PORT)  # ... and geneve_port
UDP_SCLP = ("udp", sclp.SCLP_UDP_PORT)  # the endpoint's default sclp_udp_port
RAW_SCLP = ("raw", 234)
RAW_GRE = ("raw", socket.IPPROTO_GRE)
RAW_TCP = ("raw", socket.IPPROTO_TCP)


def tunnel_packets(
    protocol: str, carrier: str, frame: bytes, src: str, dst: str, vni: int = 42
) -> tuple[tuple[str, int], list[bytes]]:
    """The underlay packets that carry ``frame`` from ``src`` to ``dst`` as an
    endpoint of ``protocol`` would send them, and where they go."""
    if protocol == "vxlan":
        return UDP_VXLAN, [vxlan.header(vni) + frame]
    if protocol == "geneve":
        return UDP_GENEVE, [geneve.header(vni) + frame]
    if protocol == "nvgre":
        return RAW_GRE, [nvgre.header(vni, 0) + frame]
    if protocol == "stt":
        return RAW_TCP, stt_segments(frame, src, dst, vni=vni)
    if protocol == "vxlan-sclp":
        payload, dport = vxlan.header(vni) + frame, sclp.SCLP_PORT_VXLAN
    else:
        payload, dport = geneve.header(vni) + frame, sclp.SCLP_PORT_GENEVE
    segments = sclp_segments(payload, carrier, dport=dport)
    return (UDP_SCLP if carrier == "udp" else RAW_SCLP), segments


def send_from(
    netns: str,
    src: str,
    dst: str,
    where: tuple[str, int],
    packets: list[bytes],
    gap: float = 0.0,
) -> None:
    """Send ``packets`` from address ``src`` inside ``netns`` to ``dst``: UDP
    datagrams to port ``where[1]``, or raw IP packets of protocol ``where[1]``."""
    kind, number = where
    with nsio.NetNS(netns) as ns:
        if kind == "udp":
            sock = ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
            addr = (dst, number)
        else:
            sock = ns.socket(socket.AF_INET, socket.SOCK_RAW, number)
            addr = (dst, 0)
    with sock:
        sock.bind((src, 0))
        for packet in packets:
            sock.sendto(packet, addr)
            if gap:
                # Pacing on purpose (the subject of the caller): keeps the receiver's
                # socket buffer from overflowing, so every packet reaches the endpoint.
                time.sleep(gap)


class Listener:
    """A UDP receiver in a VM that reports every datagram's payload."""

    def __init__(self, netns: str, address: str, idle: float = 1.0) -> None:
        self.proc = popen_in(
            netns, [sys.executable, "-c", _LISTENER, address, str(LISTEN_PORT), str(idle)]
        )
        wait_line(self.proc, "ready", what="UDP listener")

    def received(self, timeout: float = 20.0) -> list[str]:
        """What arrived, once the sender has been quiet for ``idle`` seconds."""
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        finally:
            stop(self.proc)
        return out.split()

    def close(self) -> None:
        stop(self.proc)


# -- the endpoint, watched -----------------------------------------------------------------


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def snmp(netns: str, group: str = "Udp") -> dict[str, int]:
    """The ``group`` counters of /proc/net/snmp as seen inside ``netns``."""
    lines = [
        line.split()
        for line in run_in(netns, ["cat", "/proc/net/snmp"]).stdout.splitlines()
        if line.startswith(f"{group}:")
    ]
    names, values = lines[0][1:], lines[1][1:]
    return {name: int(value) for name, value in zip(names, values, strict=True)}


def wait_for(
    probe: Callable[[], Any], done: Callable[[Any], bool], timeout: float, step: float = 0.1
) -> Any:
    """Poll ``probe()`` until ``done(value)``; return the last value either way."""
    deadline = time.monotonic() + timeout
    value = probe()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(step)  # polling interval, bounded by the deadline
        value = probe()
    return value


def drained(stats: dict[str, Any]) -> bool:
    c = stats["counters"]
    return bool(c["reasm_bytes_held"] == 0 and c["reasm_entries"] == 0)


def assert_alive(
    proc: subprocess.Popen[bytes], stats: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """The endpoint process still runs and answers on its control socket."""
    assert proc.poll() is None, f"endpoint exited with {proc.returncode}"
    answer = stats()
    assert answer["pid"] == proc.pid
    return answer


def iperf3_popen(
    client_ns: str, server_ns: str, server_addr: str, seconds: float
) -> tuple[subprocess.Popen[str], subprocess.Popen[str]]:
    """Start an iperf3 server and a client (JSON, 0.5 s intervals); caller ends both."""
    server = popen_in(server_ns, ["iperf3", "-s", "-1", "--forceflush", "-B", server_addr])
    try:
        wait_iperf3_server(server)
    except AssertionError:
        stop(server)
        raise
    client = popen_in(
        client_ns,
        [
            "iperf3",
            "-c",
            server_addr,
            "-t",
            str(seconds),
            "-i",
            "0.5",
            "-J",
            "--connect-timeout",
            "3000",
        ],
    )
    return server, client


def iperf3_result(
    client: subprocess.Popen[str], server: subprocess.Popen[str], timeout: float
) -> dict[str, Any]:
    try:
        out, err = client.communicate(timeout=timeout)
    finally:
        stop(client)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=3)
        stop(server)
    try:
        report: dict[str, Any] = json.loads(out)
    except json.JSONDecodeError:
        raise AssertionError(f"iperf3 failed: {err.strip() or out[-300:]}") from None
    assert "error" not in report, report["error"]
    return report


def record(name: str, values: dict[str, Any]) -> None:
    """Append one measurement to $SCLP_ROBUSTNESS_LOG (JSON lines), if set."""
    path = os.environ.get("SCLP_ROBUSTNESS_LOG")
    if path:
        with open(path, "a") as log:
            log.write(json.dumps({"test": name, **values}) + "\n")
