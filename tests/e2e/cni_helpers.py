"""Helpers of the CNI tests: two hosts with endpoints that have no ``attach`` pattern,
the plugins as executables in a plugin directory, and a runtime's invocation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sclp.lab.testbed import UNDERLAY

from .helpers import Endpoint, Topology

SRC = Path(__file__).resolve().parents[2] / "src"
HOST_LOCAL_DIR = "/usr/lib/cni"
VNI = 42
SUBNET = "192.168.83.0/24"


def write_plugins(directory: Path) -> Path:
    """``sclp-cni`` and ``sclp-ipam`` in ``directory``, running this tree's code (what
    the console scripts of an installed package are)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, module in (("sclp-cni", "sclp.cni.plugin"), ("sclp-ipam", "sclp.cni.ipam")):
        path = directory / name
        path.write_text(f'#!/bin/sh\nPYTHONPATH={SRC} exec {sys.executable} -m {module} "$@"\n')
        path.chmod(0o755)
    return directory


def endpoint_config(
    name: str, host_ns: str, i: int, protocol: str, extra: str = "", peers: bool = True
) -> str:
    """An endpoint on host ``i`` with VNI 42 and no ``attach`` pattern; ``extra`` goes
    before ``[underlay]`` (a ``[cluster]`` table); ``peers=False``: none in the file."""
    peer_list = f'"{UNDERLAY[1 - i]}"' if peers else ""
    return (
        f'name = "{name}"\n'
        f"{extra}"
        "[underlay]\n"
        f'local = "{UNDERLAY[i]}"\n'
        f'namespace = "{host_ns}"\n'
        "[[network]]\n"
        f"vni = {VNI}\n"
        f'protocol = "{protocol}"\n'
        "attach = []\n"  # no pattern: sclp-cni hands the ports over
        f"peers = [{peer_list}]\n"
    )


@dataclass
class TwoHosts:
    topo: Topology
    hosts: list[str]
    endpoints: list[Endpoint]
    plugins: Path

    @classmethod
    def start(
        cls,
        topo: Topology,
        protocol: str = "vxlan-sclp",
        extra: str = "",
        *,
        hosts: list[str] | None = None,
        peers: bool = True,
    ) -> TwoHosts:
        hosts = hosts or topo.underlay_hosts("ch1", "ch2")
        endpoints = []
        for i in range(2):
            name = topo.endpoint_name(f"c{i + 1}")
            text = endpoint_config(name, hosts[i], i, protocol, extra, peers)
            endpoints.append(topo.start_endpoint(name, text))
        return cls(topo, hosts, endpoints, write_plugins(topo.workdir / "plugins"))

    def cni_path(self) -> str:
        return f"{self.plugins}:{HOST_LOCAL_DIR}"

    def network(self, i: int, ipam: dict[str, Any] | None = None) -> dict[str, Any]:
        """The network configuration for host ``i`` (host-local addresses, a range
        per host so the two never meet)."""
        if ipam is None:
            ipam = {
                "type": "host-local",
                "dataDir": str(self.topo.workdir / f"host-local{i}"),
                "ranges": [
                    [
                        {
                            "subnet": SUBNET,
                            "rangeStart": f"192.168.83.{10 + 100 * i}",
                            "rangeEnd": f"192.168.83.{99 + 100 * i}",
                        }
                    ]
                ],
            }
        return {
            "cniVersion": "1.0.0",
            "name": "overlay42",
            "type": "sclp-cni",
            "endpoint": self.endpoints[i].name,
            "vni": VNI,
            "ipam": ipam,
        }


def invoke(
    plugin: Path,
    command: str,
    conf: dict[str, Any] | bytes,
    *,
    container: str = "",
    netns: str = "",
    ifname: str = "eth0",
    path: str = "",
    env_extra: dict[str, str] | None = None,
    prefix: list[str] | None = None,
) -> tuple[int, dict[str, Any] | None]:
    """Run ``plugin`` as a runtime does: ``CNI_*`` in the environment, the
    configuration on stdin; (exit status, decoded stdout or None)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env.update(
        {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container,
            "CNI_NETNS": netns,
            "CNI_IFNAME": ifname,
            "CNI_PATH": path,
        }
    )
    env.update(env_extra or {})
    data = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    proc = subprocess.run(
        [*(prefix or []), str(plugin)],
        input=data,
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    out = proc.stdout.strip()
    return proc.returncode, (json.loads(out) if out else None)
