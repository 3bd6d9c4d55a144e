"""The plugin's changes to interfaces, through iproute2 (``ip``, ``nsenter``).

A runtime names the container's namespace by a path (``CNI_NETNS``), and the endpoint's
is ``/proc/PID/ns/net`` of its process: ``ip`` takes such paths for ``netns``, and
``nsenter --net=PATH`` runs ``ip`` inside one.  Each function raises :class:`LinkError`
with ``ip``'s own message.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any


def _binary(name: str, *places: str) -> str:
    """An absolute path: runtimes may run plugins with a bare PATH."""
    for place in places:
        path = os.path.join(place, name)
        if os.access(path, os.X_OK):
            return path
    return name


IP = _binary("ip", "/usr/sbin", "/sbin", "/usr/bin", "/bin")
NSENTER = _binary("nsenter", "/usr/bin", "/bin", "/usr/sbin")
TIMEOUT = 10.0


class LinkError(OSError):
    """An ``ip`` command failed; the message is its stderr."""


def _run(argv: list[str], stdin: str | None = None) -> str:
    try:
        proc = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LinkError(f"{' '.join(argv[:4])}: {exc}") from None
    if proc.returncode != 0:
        raise LinkError(proc.stderr.strip() or f"{' '.join(argv)} exited {proc.returncode}")
    return proc.stdout


def _in(netns: str | None, *argv: str) -> list[str]:
    return [NSENTER, f"--net={netns}", *argv] if netns else list(argv)


def create_veth(host: str, host_netns: str, ifname: str, netns: str, mtu: int) -> None:
    """The veth pair ``host`` (in ``host_netns``) <-> ``ifname`` (in ``netns``), both at
    ``mtu``, created in one request (no name is ever taken in the runtime's namespace)."""
    _run(
        [IP, "link", "add", host, "mtu", str(mtu), "netns", host_netns, "type", "veth",
         "peer", "name", ifname, "mtu", str(mtu), "netns", netns]
    )  # fmt: skip


def configure(netns: str, ifname: str, addresses: list[str], routes: list[list[str]]) -> None:
    """Inside ``netns``: ``ifname`` up with ``addresses`` (CIDR), then ``routes`` (each
    the words after ``ip route add``)."""
    lines = [f"link set {ifname} up", *(f"addr add {a} dev {ifname}" for a in addresses)]
    lines += ["route add " + " ".join(r) for r in routes]
    _run(_in(netns, IP, "-batch", "-"), "\n".join(lines) + "\n")


def link(netns: str | None, ifname: str) -> dict[str, Any] | None:
    """``ip -j addr show dev ifname`` inside ``netns``, or None if there is no such
    interface (or namespace)."""
    if netns and not os.path.exists(netns):
        return None
    try:
        out = _run(_in(netns, IP, "-j", "addr", "show", "dev", ifname))
    except LinkError as exc:
        if "does not exist" in str(exc) or "No such" in str(exc):
            return None
        raise
    items = json.loads(out or "[]")
    return items[0] if items and isinstance(items[0], dict) else None


def addresses(info: dict[str, Any]) -> set[str]:
    """The CIDRs of an interface as :func:`link` reported it (global scope)."""
    return {
        f"{a['local']}/{a['prefixlen']}"
        for a in info.get("addr_info", [])
        if a.get("scope") == "global" and "local" in a
    }


def delete(netns: str | None, ifname: str) -> bool:
    """Delete ``ifname`` in ``netns`` (a veth takes its peer with it); False if it was
    not there."""
    if link(netns, ifname) is None:
        return False
    try:
        _run(_in(netns, IP, "link", "del", ifname))
    except LinkError as exc:
        if "does not exist" in str(exc) or "Cannot find" in str(exc):
            return False
        raise
    return True
