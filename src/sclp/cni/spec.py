"""The CNI specification's data, without I/O: the environment, the network
configuration, results and errors (CNI 1.0.0, and 0.4.0 for older runtimes).

A runtime runs a plugin with ``CNI_COMMAND`` (ADD, DEL, CHECK, VERSION) and the other
``CNI_*`` variables in the environment and the network configuration on stdin; the
plugin prints a result (ADD), nothing (DEL, CHECK) or an error object, and exits
non-zero on error.  Everything here turns those into typed values and back; the
plugins (:mod:`sclp.cni.plugin`, :mod:`sclp.cni.ipam`) do the I/O.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SPEC_VERSION = "1.0.0"
SUPPORTED_VERSIONS = ("0.4.0", "1.0.0")

# The spec's well-known error codes (1-99 are reserved to it).
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODING_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
# Ours (100 and above are the plugin's).
VNI_NOT_CONFIGURED = 100
ATTACH_FAILED = 101
IPAM_FAILURE = 102
ADDRESSES_EXHAUSTED = 103
CHECK_FAILED = 104

COMMANDS = ("ADD", "DEL", "CHECK", "VERSION")
IFNAME = re.compile(r"[A-Za-z0-9_.:@+-]{1,15}\Z")
ENDPOINT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")
MAX_VNI = (1 << 24) - 1


class CniError(Exception):
    """An error the plugin reports as the spec's error object."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, version: str = SPEC_VERSION) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


@dataclass(frozen=True)
class Environment:
    """The ``CNI_*`` variables of one invocation."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    path: tuple[str, ...] = ()
    args: str = ""

    @classmethod
    def parse(cls, env: Mapping[str, str]) -> Environment:
        command = env.get("CNI_COMMAND", "")
        if command not in COMMANDS:
            raise CniError(
                INVALID_ENVIRONMENT,
                f"CNI_COMMAND is {command!r}; it must be one of {', '.join(COMMANDS)}",
            )
        out = cls(
            command=command,
            container_id=env.get("CNI_CONTAINERID", ""),
            netns=env.get("CNI_NETNS", ""),
            ifname=env.get("CNI_IFNAME", ""),
            path=tuple(p for p in env.get("CNI_PATH", "").split(":") if p),
            args=env.get("CNI_ARGS", ""),
        )
        required = {
            "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
            "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
            "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
        }.get(command, ())
        missing = [name for name in required if not env.get(name)]
        if missing:
            raise CniError(
                INVALID_ENVIRONMENT, f"{command} needs {', '.join(missing)} in the environment"
            )
        if out.ifname and not IFNAME.match(out.ifname):
            raise CniError(INVALID_ENVIRONMENT, f"CNI_IFNAME {out.ifname!r} is no interface name")
        return out


def host_ifname(container_id: str, ifname: str) -> str:
    """The host end's name of the veth of (container, interface): the same for ADD,
    CHECK and DEL, 15 characters, unlikely to meet another's."""
    digest = hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()
    return "sclp" + digest[:11]


def decode_config(data: bytes) -> dict[str, Any]:
    """The network configuration from stdin, as a JSON object."""
    try:
        conf = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CniError(DECODING_FAILURE, f"the network configuration is not JSON: {exc}") from None
    if not isinstance(conf, dict):
        raise CniError(DECODING_FAILURE, "the network configuration is not a JSON object")
    return conf


def check_version(conf: Mapping[str, Any]) -> str:
    version = conf.get("cniVersion", "")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            INCOMPATIBLE_VERSION,
            f"cniVersion {version!r} is not supported; use one of {', '.join(SUPPORTED_VERSIONS)}",
        )
    return str(version)


def version_result(conf: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The answer to VERSION."""
    version = SPEC_VERSION
    if conf is not None and conf.get("cniVersion") in SUPPORTED_VERSIONS:
        version = str(conf["cniVersion"])
    return {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}


@dataclass(frozen=True)
class NetConf:
    """The configuration of an ``sclp-cni`` network."""

    version: str
    name: str
    endpoint: str  # the name of the `sclp run` endpoint that takes the ports
    vni: int
    ipam: dict[str, Any] = field(default_factory=dict)
    control_dir: str = "/run/sclp"
    attach_timeout: float = 10.0
    prev_result: dict[str, Any] | None = None

    @classmethod
    def parse(cls, conf: Mapping[str, Any]) -> NetConf:
        version = check_version(conf)
        name = conf.get("name")
        if not isinstance(name, str) or not name:
            raise CniError(INVALID_CONFIG, 'the network configuration needs a "name"')
        endpoint = conf.get("endpoint")
        if not isinstance(endpoint, str) or not ENDPOINT_NAME.match(endpoint):
            raise CniError(
                INVALID_CONFIG,
                f'network {name}: "endpoint" must name the sclp endpoint (its `name` '
                f"in the endpoint's configuration), not {endpoint!r}",
            )
        vni = conf.get("vni")
        if not isinstance(vni, int) or isinstance(vni, bool) or not 0 <= vni <= MAX_VNI:
            raise CniError(INVALID_CONFIG, f'network {name}: "vni" must be an integer 0..{MAX_VNI}')
        ipam = conf.get("ipam")
        if not isinstance(ipam, dict) or not isinstance(ipam.get("type"), str):
            raise CniError(
                INVALID_CONFIG,
                f'network {name}: "ipam" must be an object with a "type" '
                "(host-local, or sclp-ipam with [cluster])",
            )
        if "/" in ipam["type"] or not ipam["type"]:
            raise CniError(INVALID_CONFIG, f"network {name}: bad ipam type {ipam['type']!r}")
        control_dir = conf.get("controlDir", "/run/sclp")
        if not isinstance(control_dir, str) or not control_dir.startswith("/"):
            raise CniError(INVALID_CONFIG, f'network {name}: "controlDir" must be absolute')
        timeout = conf.get("attachTimeout", 10.0)
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
            raise CniError(INVALID_CONFIG, f'network {name}: "attachTimeout" must be > 0')
        prev = conf.get("prevResult")
        return cls(
            version=version,
            name=name,
            endpoint=endpoint,
            vni=vni,
            ipam=dict(ipam),
            control_dir=control_dir,
            attach_timeout=float(timeout),
            prev_result=prev if isinstance(prev, dict) else None,
        )


@dataclass(frozen=True)
class IpConfig:
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None


@dataclass(frozen=True)
class Route:
    dst: ipaddress.IPv4Network | ipaddress.IPv6Network
    gw: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None


@dataclass(frozen=True)
class IpamResult:
    """What an IPAM plugin returned: addresses, routes and DNS (kept as given)."""

    ips: tuple[IpConfig, ...]
    routes: tuple[Route, ...] = ()
    dns: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, result: Mapping[str, Any]) -> IpamResult:
        try:
            ips = tuple(
                IpConfig(
                    ipaddress.ip_interface(ip["address"]),
                    ipaddress.ip_address(ip["gateway"]) if ip.get("gateway") else None,
                )
                for ip in result.get("ips") or []
            )
            routes = tuple(
                Route(
                    ipaddress.ip_network(r["dst"], strict=False),
                    ipaddress.ip_address(r["gw"]) if r.get("gw") else None,
                )
                for r in result.get("routes") or []
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CniError(IPAM_FAILURE, f"the IPAM plugin's result is malformed: {exc}") from None
        if not ips:
            raise CniError(IPAM_FAILURE, "the IPAM plugin returned no address")
        dns = result.get("dns")
        return cls(ips, routes, dict(dns) if isinstance(dns, dict) else {})

    def route_gateway(self, route: Route) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The route's gateway, else the first gateway of an address of its family."""
        if route.gw is not None:
            return route.gw
        for ip in self.ips:
            if ip.gateway is not None and ip.gateway.version == route.dst.version:
                return ip.gateway
        return None


@dataclass(frozen=True)
class Interface:
    name: str
    mac: str
    sandbox: str | None = None


def build_result(
    version: str, interfaces: list[Interface], ipam: IpamResult, container_index: int
) -> dict[str, Any]:
    """The ADD result: the interfaces, each address on the container's interface
    (``container_index`` in ``interfaces``), the routes and the DNS settings."""
    ifaces = []
    for iface in interfaces:
        item: dict[str, Any] = {"name": iface.name, "mac": iface.mac}
        if iface.sandbox is not None:
            item["sandbox"] = iface.sandbox
        ifaces.append(item)
    ips = []
    for ip in ipam.ips:
        entry: dict[str, Any] = {"address": str(ip.address), "interface": container_index}
        if version == "0.4.0":
            entry["version"] = str(ip.address.version)
        if ip.gateway is not None:
            entry["gateway"] = str(ip.gateway)
        ips.append(entry)
    routes = []
    for route in ipam.routes:
        r: dict[str, Any] = {"dst": str(route.dst)}
        if route.gw is not None:
            r["gw"] = str(route.gw)
        routes.append(r)
    return {
        "cniVersion": version,
        "interfaces": ifaces,
        "ips": ips,
        "routes": routes,
        "dns": dict(ipam.dns),
    }
