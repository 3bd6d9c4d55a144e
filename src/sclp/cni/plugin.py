"""``sclp-cni``: a CNI plugin that puts a container on an overlay network of a running
``sclp run`` endpoint (docs/containers.md).

ADD asks the endpoint (its control socket) for the network's VM MTU and the
namespace it forwards from, gets an address from the IPAM plugin named in ``ipam``,
creates a veth pair, the container's end in ``CNI_NETNS`` as ``CNI_IFNAME`` (that
MTU, the addresses, the routes) and the host end in the endpoint's namespace, and
asks the endpoint to attach the host end to the VNI (``attach <ifname> <vni>``).  It
returns only once the endpoint answered that the port is attached, so the container's
first frame is forwarded.  DEL undoes all of it and is idempotent; CHECK verifies the
veth, the addresses and the attachment.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Any

from sclp.cni import links
from sclp.cni.invoke import exec_plugin, serve
from sclp.cni.spec import (
    ATTACH_FAILED,
    CHECK_FAILED,
    IO_FAILURE,
    IPAM_FAILURE,
    TRY_AGAIN_LATER,
    UNKNOWN_CONTAINER,
    VNI_NOT_CONFIGURED,
    CniError,
    Environment,
    Interface,
    IpamResult,
    NetConf,
    build_result,
    host_ifname,
)
from sclp.endpoint.control import ControlError, query, socket_path


@dataclass(frozen=True)
class EndpointInfo:
    pid: int
    vm_mtu: int
    netns: str  # the namespace the endpoint forwards from: /proc/PID/ns/net


def _socket(conf: NetConf) -> str:
    return socket_path(conf.endpoint, conf.control_dir)


def _ask(conf: NetConf, request: str, timeout: float = 3.0) -> Any:
    path = _socket(conf)
    try:
        answer = query(path, request, timeout)
    except ControlError as exc:
        raise CniError(
            TRY_AGAIN_LATER,
            f"endpoint {conf.endpoint} is not running ({exc}); start it "
            f"(`sclp run` or `systemctl start sclp@{conf.endpoint}`)",
        ) from None
    except (OSError, ValueError) as exc:
        raise CniError(
            TRY_AGAIN_LATER, f"endpoint {conf.endpoint} did not answer {request!r}: {exc}"
        ) from None
    if not isinstance(answer, dict):
        raise CniError(IO_FAILURE, f"endpoint {conf.endpoint}: unexpected answer {answer!r}")
    return answer


def endpoint_info(conf: NetConf) -> EndpointInfo:
    """The endpoint's process and the network's VM MTU; errors name the fix."""
    stats = _ask(conf, "stats")
    vnis = stats.get("vni") or {}
    net = vnis.get(str(conf.vni))
    if not isinstance(net, dict):
        configured = ", ".join(sorted(vnis, key=int)) or "none"
        raise CniError(
            VNI_NOT_CONFIGURED,
            f"vni {conf.vni} is not configured on endpoint {conf.endpoint} "
            f"(configured: {configured}); add a [[network]] with vni = {conf.vni} to its "
            "configuration and run `sclp reload`",
        )
    pid = int(stats["pid"])
    return EndpointInfo(pid, int(net["vm_mtu"]), f"/proc/{pid}/ns/net")


def _ipam(env: Environment, conf: NetConf, raw: dict[str, Any], command: str) -> Any:
    return exec_plugin(conf.ipam["type"], env, raw, command)


def cmd_add(env: Environment, raw: dict[str, Any]) -> dict[str, Any]:
    conf = NetConf.parse(raw)
    if not os.path.exists(env.netns):
        raise CniError(UNKNOWN_CONTAINER, f"CNI_NETNS {env.netns} does not exist")
    info = endpoint_info(conf)
    answer = _ipam(env, conf, raw, "ADD")
    if not isinstance(answer, dict):
        raise CniError(IPAM_FAILURE, f"IPAM plugin {conf.ipam['type']} returned no result")
    ipam = IpamResult.parse(answer)
    host = host_ifname(env.container_id, env.ifname)
    try:
        links.create_veth(host, info.netns, env.ifname, env.netns, info.vm_mtu)
        routes = []
        for route in ipam.routes:
            gw = ipam.route_gateway(route)
            words = [str(route.dst)] + (["via", str(gw)] if gw else [])
            routes.append([*words, "dev", env.ifname])
        links.configure(env.netns, env.ifname, [str(ip.address) for ip in ipam.ips], routes)
        attached = _ask(conf, f"attach {host} {conf.vni}", conf.attach_timeout)
        if "error" in attached:
            code = VNI_NOT_CONFIGURED if "not configured" in attached["error"] else ATTACH_FAILED
            raise CniError(code, f"endpoint {conf.endpoint}: {attached['error']}")
        container = links.link(env.netns, env.ifname)
        host_link = links.link(info.netns, host)
        if container is None or host_link is None:
            raise CniError(IO_FAILURE, f"the veth {host} <-> {env.ifname} vanished during ADD")
    except BaseException as exc:
        _undo(env, conf, raw, info.netns, host)
        if isinstance(exc, links.LinkError):
            raise CniError(IO_FAILURE, f"creating the veth {host}: {exc}") from None
        raise
    return build_result(
        conf.version,
        [
            Interface(host, str(host_link.get("address", ""))),
            Interface(env.ifname, str(container.get("address", "")), env.netns),
        ],
        ipam,
        1,
    )


def _undo(
    env: Environment, conf: NetConf, raw: dict[str, Any], netns: str | None, host: str
) -> None:
    """Best effort, after a failed ADD: the port, the veth, the address."""
    for step in (
        lambda: _ask(conf, f"detach {host}"),
        lambda: links.delete(netns, host),
        lambda: links.delete(env.netns, env.ifname),
        lambda: _ipam(env, conf, raw, "DEL"),
    ):
        with contextlib.suppress(CniError, OSError):
            step()


def cmd_del(env: Environment, raw: dict[str, Any]) -> None:
    """Idempotent: a missing endpoint, namespace, veth or lease is not an error."""
    conf = NetConf.parse(raw)
    host = host_ifname(env.container_id, env.ifname)
    try:
        info: EndpointInfo | None = endpoint_info(conf)
    except CniError:
        info = None
    try:
        if info is not None:
            _ask(conf, f"detach {host}")
            links.delete(info.netns, host)
        if env.netns and os.path.exists(env.netns):
            links.delete(env.netns, env.ifname)
        links.delete(None, host)  # an ADD that stopped half-way
    except (links.LinkError, CniError) as exc:
        raise CniError(IO_FAILURE, f"removing the veth {host}: {exc}") from None
    _ipam(env, conf, raw, "DEL")


def cmd_check(env: Environment, raw: dict[str, Any]) -> None:
    conf = NetConf.parse(raw)
    host = host_ifname(env.container_id, env.ifname)
    info = endpoint_info(conf)
    container = links.link(env.netns, env.ifname)
    if container is None:
        raise CniError(CHECK_FAILED, f"no interface {env.ifname} in {env.netns}")
    if int(container.get("mtu", 0)) != info.vm_mtu:
        raise CniError(
            CHECK_FAILED,
            f"{env.ifname} has mtu {container.get('mtu')}, the network's VM MTU is "
            f"{info.vm_mtu}; re-create the container",
        )
    prev = conf.prev_result or {}
    want = {
        str(ip.get("address"))
        for ip in prev.get("ips") or []
        if isinstance(ip, dict) and ip.get("interface", 1) == 1
    }
    missing = want - links.addresses(container)
    if missing:
        raise CniError(CHECK_FAILED, f"{env.ifname} lacks {', '.join(sorted(missing))}")
    if links.link(info.netns, host) is None:
        raise CniError(CHECK_FAILED, f"the host end {host} of the veth is gone")
    ports = _ask(conf, "show ports")
    rows = ports.get("rows") or []  # [vni, port, kind, ifindex, mtu, ...]
    if not any(isinstance(r, list) and r[:2] == [conf.vni, host] for r in rows):
        raise CniError(
            CHECK_FAILED,
            f"endpoint {conf.endpoint} has no port {host} on vni {conf.vni}; "
            "re-create the container",
        )
    _ipam(env, conf, raw, "CHECK")


def main() -> None:
    sys.exit(serve({"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check}, "sclp-cni"))


if __name__ == "__main__":
    main()
