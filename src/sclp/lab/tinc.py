"""tinc 1.0 as a reference tunnel: a C per-packet user-space L2 tunnel, the peer the
paper's "ahead of a user-space tunnel" is measured against.

Each host namespace runs one ``tincd`` in switch mode (``Mode = switch``: a TAP,
Ethernet frames, MAC learning) with neither cipher nor digest, so what is measured
is the cost of moving frames through a user-space process one packet at a time, as
our classic tunnels do.  The daemon runs in the foreground (``-D``) as a child of
the testbed, with its own ``--pidfile`` and configuration in the testbed's temporary
directory: nothing in ``/etc/tinc`` or ``/var/run`` is read or written, and several
testbeds can run at once.  Its TAP (``Interface = tinc0``) is bridged in the host
namespace with a veth leading into the VM, the shape of the kernel VXLAN reference.

UDP socket buffers are the size our endpoints ask for (``UDPRcvBuf``, ``UDPSndBuf``).
Path MTU discovery is off and the path MTU set (``PMTUDiscovery = no``, ``PMTU``):
with discovery on, tinc 1.0 sends every frame larger than the MTU found so far over
its TCP meta connection until the probes converge (seconds), which would measure
TCP-in-TCP.  The VM MTU leaves room for tinc's 4-byte sequence number and the
Ethernet header in the underlay's MTU (1454 over a 1500 B IPv4 underlay).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Final

PACKAGE: Final = "tinc"
INTERFACE: Final = "tinc0"
PORT: Final = 655
KEY_BITS: Final = 2048
SEQNO_BYTES: Final = 4  # tinc 1.0's UDP packet: seqno + frame (+ MAC, none here)
ETHERNET_HEADER: Final = 14
# The socket buffers our endpoints ask for; tinc sets them with the plain SO_RCVBUF,
# so net.core.[rw]mem_max caps them (with the kernel's default, 208 KiB, tinc 1.0
# overflows its receive buffer and TCP through it collapses to retransmits).
SOCKET_BUFFER: Final = 16 << 20


def tincd_path() -> str:
    """The ``tincd`` binary; RuntimeError naming the package when it is missing."""
    path = shutil.which("tincd") or shutil.which("tincd", path="/usr/sbin:/sbin")
    if path is None:
        raise RuntimeError(f"tincd is not installed (apt-get install {PACKAGE})")
    return path


def path_mtu(underlay_mtu: int, underlay_family: int) -> int:
    """The largest frame (Ethernet header included) tinc may send in one UDP packet."""
    outer = (40 if underlay_family == 6 else 20) + 8 + SEQNO_BYTES
    return underlay_mtu - outer


def vm_mtu(underlay_mtu: int, underlay_family: int) -> int:
    return path_mtu(underlay_mtu, underlay_family) - ETHERNET_HEADER


def node_name(i: int) -> str:
    return f"h{i + 1}"


def tinc_conf(i: int) -> str:
    """``tinc.conf`` of node ``i`` (0 or 1); node 0 connects to node 1."""
    lines = [
        f"Name = {node_name(i)}",
        "Mode = switch",
        f"Interface = {INTERFACE}",
        "AddressFamily = any",
        f"UDPRcvBuf = {SOCKET_BUFFER}",
        f"UDPSndBuf = {SOCKET_BUFFER}",
    ]
    if i == 0:
        lines.append(f"ConnectTo = {node_name(1)}")
    return "\n".join(lines) + "\n"


def host_conf(address: str, pmtu: int) -> str:
    """``hosts/NAME`` without its public key (``tincd -K`` appends it)."""
    return (
        f"Address = {address}\n"
        f"Port = {PORT}\n"
        "Cipher = none\n"
        "Digest = none\n"
        "Compression = 0\n"
        "PMTUDiscovery = no\n"
        f"PMTU = {pmtu}\n"
    )


def write_configs(workdir: Path, addresses: tuple[str, str], pmtu: int) -> list[Path]:
    """Both nodes' configuration directories under ``workdir`` (``tinc-h1``,
    ``tinc-h2``), keys generated, each node's host file copied to the other.
    Returns the directories; TestbedError-free: raises RuntimeError on failure."""
    tincd = tincd_path()
    dirs = []
    for i, address in enumerate(addresses):
        confdir = workdir / f"tinc-{node_name(i)}"
        (confdir / "hosts").mkdir(parents=True)
        (confdir / "tinc.conf").write_text(tinc_conf(i))
        (confdir / "hosts" / node_name(i)).write_text(host_conf(address, pmtu))
        result = subprocess.run(
            [tincd, "-c", str(confdir), f"-K{KEY_BITS}"],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if result.returncode or not (confdir / "rsa_key.priv").exists():
            raise RuntimeError(f"tincd -K failed: {result.stderr.strip()[-300:]}")
        dirs.append(confdir)
    for i, confdir in enumerate(dirs):
        other = dirs[1 - i]
        name = node_name(1 - i)
        shutil.copyfile(other / "hosts" / name, confdir / "hosts" / name)
    return dirs


def tincd_command(confdir: Path, pidfile: Path) -> list[str]:
    """``tincd`` in the foreground, logging to stderr, with its own pid file."""
    return [tincd_path(), "-c", str(confdir), "-D", f"--pidfile={pidfile}"]
