"""Attached ports and hot-plug: existing interfaces become VM ports while the endpoint
runs (docs/vms.md).

A network's ``attach`` patterns name interfaces that another program creates and
owns — QEMU or libvirt the TAP of a guest, a container runtime the host side of a
veth pair — in the namespace the endpoint runs in.  :class:`AttachedPorts` keeps the
data path's ports in step with the interfaces that exist:

- at start, every matching interface is attached;
- a link notification (:class:`~sclp.io.links.LinkWatch`, read by the loop) for a new
  matching interface attaches it once it has lasted :data:`SETTLE` seconds (at the
  loop's next tick: 0.05–0.15 s): an interface that is gone again by then was never
  a port (libvirt deletes a stopped guest's TAP by creating it for well under a
  millisecond); one for an interface that is gone (deleted, moved to another
  namespace, renamed) detaches it and flushes the FDB entries learned on it;
- the other ports and the underlay are never touched, and each change is one log line.

Attaching an interface: its MTU becomes the network's VM MTU and it is brought up (as
for the TAPs the endpoint owns), an :class:`~sclp.io.attach.AttachedPort` packet
socket with virtio-net headers reads and writes it, and the port guard
(:func:`sclp.io.nft.install_port_guard`) keeps the host's own stack away from its
frames.  A problem with one interface is a warning about that interface, never a
stop: the endpoint keeps serving the others.

Requested ports (docs/containers.md): a CNI plugin hands the endpoint an interface it
made, by name, over the control socket (``attach <ifname> <vni>``, ``detach
<ifname>``; :func:`control_commands`).  Such an interface needs no pattern: it is
attached at once and the request is answered only then (or with the reason it could
not be), and it is detached like the others when it goes away.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from sclp.endpoint.datapath import DataPath, VirtualNetwork, VmPort
from sclp.endpoint.provision import EndpointError
from sclp.io import netns as nsio
from sclp.io import nft
from sclp.io.attach import AttachedPort
from sclp.io.links import LinkEvent, LinkWatch, current_links

log = logging.getLogger("sclp")

SETTLE: Final = 0.05  # seconds a new interface must last before it is attached


def port_mtu(link: nsio.LinkInfo, vm_mtu: int) -> int:
    """The MTU to give an interface we attach.  A veth's host end takes its largest:
    the veth drops a plain frame above the *receiving* end's MTU before the endpoint
    could read it, and the endpoint must see a frame larger than the VM MTU to answer
    it with ICMP "fragmentation needed" (the container's end keeps its own MTU, which
    then limits what is delivered to it).  Anything else (a QEMU/libvirt TAP, whose
    frames from the guest no MTU check stops) gets the VM MTU (docs/vms.md)."""
    if link.kind == "veth" and link.max_mtu > vm_mtu:
        return link.max_mtu
    return vm_mtu


class PortHost(Protocol):
    """What :class:`AttachedPorts` needs from the runner: watch a descriptor, and
    serve or stop serving a port (:class:`~sclp.endpoint.runner.Runner` is one)."""

    def watch(self, fd: int, handler: Callable[[float], None], write: bool = False) -> None: ...

    def unwatch(self, fd: int) -> None: ...

    def on_tick(self, hook: Callable[[float], None]) -> None: ...

    def add_port(self, port: VmPort, reader: AttachedPort) -> None: ...

    def remove_port(self, port: VmPort) -> None: ...


@dataclass
class _Attached:
    port: VmPort
    sock: AttachedPort
    ifindex: int
    guarded: bool


class AttachedPorts:
    """The attached ports of one endpoint, following the interfaces that come and go."""

    def __init__(self, name: str, dp: DataPath, host: PortHost, *, guard: bool = True) -> None:
        self.name = name  # the endpoint's, for its nftables table
        self.dp = dp
        self.host = host
        self.guard = guard
        self.attached: dict[str, _Attached] = {}
        self._watch: LinkWatch | None = None
        self._guard_failed = False
        self._failed: dict[str, int] = {}  # name -> ifindex whose attach failed (no retry)
        self.requested: dict[str, int] = {}  # name -> vni, attached on request (CNI)
        self._new: dict[str, tuple[int, float]] = {}  # name -> (ifindex, seen at): settling

    def start(self) -> None:
        """Subscribe to link notifications, then attach what exists (in that order,
        so an interface created in between is not missed).  Raises OSError."""
        if self._watch is not None:
            return
        self._watch = LinkWatch.open()
        self.host.watch(self._watch.fileno(), self._on_events)
        self.host.on_tick(self._on_tick)
        self._resync()

    def close(self) -> None:
        """Detach every port (the interfaces stay: they are not ours) and unsubscribe."""
        for name in list(self.attached):
            self._detach(name, "endpoint stopping", quiet=True)
        if self._watch is not None:
            self.host.unwatch(self._watch.fileno())
            self._watch.close()
            self._watch = None
        if self.guard:
            with contextlib.suppress(OSError, ValueError, nft.NftError):
                nft.remove_port_guards(self.name)

    def rescan(self) -> None:
        """Attach what now matches (the networks changed: SIGHUP)."""
        self._failed.clear()
        self._resync()

    def detach_network(self, vni: int, why: str) -> None:
        """Detach every port of ``vni`` (the network is going away)."""
        for name, entry in list(self.attached.items()):
            if entry.port.vni == vni:
                self._detach(name, why)

    # -- events --------------------------------------------------------------------------

    def _on_events(self, now: float) -> None:
        assert self._watch is not None
        events, lost = self._watch.drain()
        for event in events:
            self._on_event(event, now)
        if lost:
            log.warning("link notifications were lost; re-reading the interface list")
            self._resync()

    def _on_event(self, event: LinkEvent, now: float) -> None:
        name, index, present = event
        # A known index under another name: renamed, so the old port is gone.
        for old, entry in list(self.attached.items()):
            if entry.ifindex == index and (old != name or not present):
                self._detach(old, "renamed" if present else "interface gone")
        for new, (new_index, _) in list(self._new.items()):
            if new_index == index and (new != name or not present):
                del self._new[new]
        appeared = present and name not in self.attached and name not in self._new
        if appeared and self.dp.network_for(name) is not None:
            self._new[name] = (index, now)
        if not present:
            self._failed.pop(name, None)

    def _on_tick(self, now: float) -> None:
        """Attach the new interfaces that have lasted :data:`SETTLE` seconds and are
        still there under the same name and index."""
        due = [name for name, (_, seen) in self._new.items() if now - seen >= SETTLE]
        if not due:
            return
        links = current_links()
        for name in due:
            index, _ = self._new.pop(name)
            if links.get(index) == name and name not in self.attached:
                self._consider(name, index)

    def _resync(self) -> None:
        links = current_links()
        for name, entry in list(self.attached.items()):
            if links.get(entry.ifindex) != name:
                self._detach(name, "interface gone")
        for index, name in sorted(links.items()):
            if name not in self.attached:
                self._new.pop(name, None)
                self._consider(name, index)

    def _consider(self, name: str, index: int) -> None:
        vni = self.requested.get(name)
        net = self.dp.networks.get(vni) if vni is not None else self.dp.network_for(name)
        if net is None or self._failed.get(name) == index:
            return
        if name in self.dp.ports:  # a TAP of ours, or a name taken by another port
            return
        try:
            self._attach(name, index, net)
        except (OSError, nsio.NetnsError, ValueError) as exc:
            if current_links().get(index) != name:
                # Gone before we got to it, which is no fault of its own: libvirt
                # deletes a stopped guest's TAP by creating it for an instant.
                log.debug("%s (ifindex %d) went away before it could be attached", name, index)
                return
            self._failed[name] = index
            log.warning(
                "cannot attach %s to vni %d: %s; fix it and re-create the interface",
                name,
                net.vni,
                exc,
            )

    # -- on request (the control socket) ------------------------------------------------

    def request(self, name: str, vni: int) -> dict[str, Any]:
        """Attach interface ``name`` to ``vni`` now, whatever the patterns say; the
        answer once it is attached, or ``{"error": ...}`` naming the fix."""
        net = self.dp.networks.get(vni)
        if net is None:
            configured = ", ".join(str(v) for v in sorted(self.dp.networks)) or "none"
            return {
                "error": f"vni {vni} is not configured on endpoint {self.name} "
                f"(configured: {configured}); add a [[network]] with vni = {vni} "
                "and run `sclp reload`"
            }
        entry = self.attached.get(name)
        if entry is not None:
            if entry.port.vni != vni:
                return {"error": f"{name} is already attached to vni {entry.port.vni}"}
            return self._attached_answer(name, entry, net)
        if name in self.dp.ports:
            return {"error": f"{name} is already a port of endpoint {self.name} (a TAP)"}
        index = {n: i for i, n in current_links().items()}.get(name)
        if index is None:
            return {
                "error": f"no interface {name} in the namespace of endpoint {self.name}; "
                "create it there (the host end of the veth) first"
            }
        self.requested[name] = vni
        self._failed.pop(name, None)
        try:
            self._attach(name, index, net)
        except (OSError, nsio.NetnsError, ValueError) as exc:
            self.requested.pop(name, None)
            return {"error": f"cannot attach {name} to vni {vni}: {exc}"}
        return self._attached_answer(name, self.attached[name], net)

    def release(self, name: str) -> dict[str, Any]:
        """Detach interface ``name`` (it stays: the caller removes it) and forget the
        request; no error if it was not attached."""
        self.requested.pop(name, None)
        self._failed.pop(name, None)
        entry = self.attached.get(name)
        if entry is None:
            return {"detached": False, "ifname": name}
        vni = entry.port.vni
        self._detach(name, "detach requested")
        return {"detached": True, "ifname": name, "vni": vni}

    @staticmethod
    def _attached_answer(name: str, entry: _Attached, net: VirtualNetwork) -> dict[str, Any]:
        return {
            "attached": name,
            "ifindex": entry.ifindex,
            "vni": net.vni,
            "protocol": str(net.protocol),
            "vm_mtu": net.vm_mtu,
        }

    # -- attach and detach ---------------------------------------------------------------

    def _attach(self, name: str, index: int, net: VirtualNetwork) -> None:
        with nsio.NetNS(None) as here:
            here.set_link(name, mtu=port_mtu(here.link_info(name), net.vm_mtu), up=True)
        sock = AttachedPort.open(name)
        try:
            guarded = self._install_guard(name, sock.ifindex)
            port = self.dp.add_port(name, net.vni)
            port.ifindex = sock.ifindex
        except BaseException:
            sock.close()
            raise
        self.host.add_port(port, sock)
        self.attached[name] = _Attached(port, sock, sock.ifindex, guarded)
        log.info(
            "attached %s (ifindex %d) to vni %d %s, mtu %d%s",
            name,
            sock.ifindex,
            net.vni,
            net.protocol,
            net.vm_mtu,
            "" if guarded else ", host stack not guarded",
        )

    def _install_guard(self, name: str, ifindex: int) -> bool:
        if not self.guard:
            return False
        try:
            nft.install_port_guard(self.name, name, ifindex)
        except (OSError, ValueError, nft.NftError) as exc:
            if not self._guard_failed:
                log.warning(
                    "attached ports: the host's stack also sees their frames "
                    "(no nftables ingress drop): %s",
                    exc,
                )
            self._guard_failed = True
            return False
        return True

    def _detach(self, name: str, why: str, *, quiet: bool = False) -> None:
        entry = self.attached.pop(name)
        if why in ("interface gone", "renamed"):  # kept when its network is re-created
            self.requested.pop(name, None)
        self.host.remove_port(entry.port)
        flushed = self.dp.remove_port(entry.port)
        entry.sock.close()
        if entry.guarded:
            try:
                nft.remove_port_guard(self.name, entry.ifindex)
            except (OSError, ValueError, nft.NftError) as exc:
                log.warning("removing the port guard of %s failed: %s", name, exc)
        if not quiet:
            log.info(
                "detached %s from vni %d: %s, %d FDB entr%s flushed",
                name,
                entry.port.vni,
                why,
                flushed,
                "y" if flushed == 1 else "ies",
            )


# -- the control socket's commands --------------------------------------------------------

IFNAME = re.compile(r"[A-Za-z0-9_.:@+-]{1,15}\Z")  # what the kernel accepts, minus oddities
MAX_VNI = (1 << 24) - 1


def _ifname(text: str) -> str | None:
    return text if IFNAME.match(text) and text not in (".", "..") else None


def _vni(text: str) -> int | None:
    if not text.isdigit() or len(text) > 8:
        return None
    value = int(text)
    return value if value <= MAX_VNI else None


def control_commands(ports: Callable[[], AttachedPorts]) -> dict[str, Callable[[list[str]], Any]]:
    """The control socket's ``attach <ifname> <vni>`` and ``detach <ifname>``, strictly
    validated; ``ports`` gives the endpoint's :class:`AttachedPorts` (started on
    first use)."""

    def attach(args: list[str]) -> dict[str, Any]:
        if len(args) != 2:
            return {"error": "usage: attach <ifname> <vni>"}
        name, vni = _ifname(args[0]), _vni(args[1])
        if name is None:
            return {"error": f"attach: {args[0][:32]!r} is not an interface name"}
        if vni is None:
            return {"error": f"attach: {args[1][:32]!r} is not a VNI (0..{MAX_VNI})"}
        try:
            return ports().request(name, vni)
        except (OSError, EndpointError) as exc:
            return {"error": f"attach: {exc}"}

    def detach(args: list[str]) -> dict[str, Any]:
        if len(args) != 1:
            return {"error": "usage: detach <ifname>"}
        name = _ifname(args[0])
        if name is None:
            return {"error": f"detach: {args[0][:32]!r} is not an interface name"}
        try:
            return ports().release(name)
        except (OSError, EndpointError) as exc:
            return {"error": f"detach: {exc}"}

    return {"attach": attach, "detach": detach}
