"""``sclp-ipam``: a CNI IPAM plugin whose address leases live in the cluster's etcd
(docs/containers.md).

Keys, under the cluster's prefix (``/sclp``) and the network's name::

    /sclp/ipam/NET/blocks/10.42.0.16-28   -> the member holding the block
    /sclp/ipam/NET/addrs/10.42.0.17       -> {"member", "container", "ifname"}

Both are written under the member lease of the host's endpoint (its
``/sclp/members/NAME`` key, kept alive by ``sclp run`` with ``[cluster]``): when a
host dies and its lease expires, etcd deletes its blocks and addresses, and other
hosts may take them.  The choices are :mod:`sclp.cni.alloc`'s; each is made to stick
by one transaction (created only if absent; an address only while its block is held
under this lease).

The host also keeps its own record of what it handed out (``dataDir``, one file per
address, as ``host-local`` does): an endpoint that restarts gets a new lease (a clean
stop revokes the old one at once), so at every ADD, CHECK and DEL the plugin first
puts this host's keys back under the current lease, from etcd's keys still under the
old lease and from its own record; an address somebody else took meanwhile is a
conflict CHECK reports.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sclp.cluster.etcd import Etcd, EtcdError, KeyValue
from sclp.cluster.model import base, member_key
from sclp.cni import alloc
from sclp.cni.invoke import serve
from sclp.cni.spec import (
    ADDRESSES_EXHAUSTED,
    ENDPOINT_NAME,
    INVALID_CONFIG,
    IPAM_FAILURE,
    TRY_AGAIN_LATER,
    CniError,
    Environment,
    check_version,
)

ATTEMPTS = 64  # transactions lost to other hosts before giving up
DATA_DIR = "/var/lib/cni/sclp-ipam"  # this host's own record of its addresses


@dataclass(frozen=True)
class IpamConf:
    network: str
    version: str
    member: str
    pool: alloc.Pool
    etcd: tuple[str, ...]
    prefix: str = "/sclp"
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    routes: tuple[dict[str, Any], ...] = ()
    dns: dict[str, Any] = field(default_factory=dict)
    data_dir: str = DATA_DIR

    @classmethod
    def parse(cls, conf: Mapping[str, Any]) -> IpamConf:
        version = check_version(conf)
        network = conf.get("name")
        if not isinstance(network, str) or not ENDPOINT_NAME.match(network):
            raise CniError(INVALID_CONFIG, f"network name {network!r}: letters, digits, _.- only")
        ipam = conf.get("ipam")
        if not isinstance(ipam, dict):
            raise CniError(INVALID_CONFIG, f'network {network}: no "ipam" object')

        def fail(what: str) -> CniError:
            return CniError(INVALID_CONFIG, f"network {network}: ipam {what}")

        member = ipam.get("member", conf.get("endpoint"))
        if not isinstance(member, str) or not ENDPOINT_NAME.match(member):
            raise fail('needs "member" (or the network\'s "endpoint"): this host\'s endpoint')
        urls = ipam.get("etcd")
        if isinstance(urls, str):
            urls = [urls]
        if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
            raise fail('"etcd" must list the cluster\'s etcd URLs, as in [cluster] etcd')
        block = ipam.get("blockSize", 28)
        if not isinstance(block, int) or isinstance(block, bool):
            raise fail('"blockSize" must be a prefix length such as 28')
        subnet = ipam.get("subnet")
        if not isinstance(subnet, str):
            raise fail('needs "subnet", e.g. "10.42.0.0/24"')
        try:
            pool = alloc.Pool.make(
                subnet, block, ipam.get("gateway"), [str(r) for r in ipam.get("reserved", [])]
            )
        except (alloc.PoolError, TypeError) as exc:
            raise fail(str(exc)) from None
        routes = ipam.get("routes", [])
        if not isinstance(routes, list) or not all(
            isinstance(r, dict) and isinstance(r.get("dst"), str) for r in routes
        ):
            raise fail('"routes" must be a list of {"dst": ..., "gw": ...}')
        prefix = ipam.get("prefix", "/sclp")
        if not isinstance(prefix, str) or not prefix.startswith("/"):
            raise fail('"prefix" must start with / (the cluster\'s prefix)')
        tls = {k: ipam.get(k) for k in ("ca", "cert", "key")}
        if any(v is not None and not isinstance(v, str) for v in tls.values()):
            raise fail('"ca", "cert" and "key" are file names')
        dns = conf.get("dns", ipam.get("dns", {}))
        data_dir = ipam.get("dataDir", DATA_DIR)
        if not isinstance(data_dir, str) or not data_dir.startswith("/"):
            raise fail('"dataDir" must be an absolute directory')
        return cls(
            network=network,
            version=version,
            member=member,
            pool=pool,
            etcd=tuple(urls),
            prefix=prefix,
            ca=tls["ca"],
            cert=tls["cert"],
            key=tls["key"],
            routes=tuple(routes),
            dns=dict(dns) if isinstance(dns, dict) else {},
            data_dir=data_dir,
        )

    def root(self) -> str:
        return f"{base(self.prefix)}/ipam/{self.network}"

    def block_key(self, block: alloc.IPNetwork) -> str:
        return f"{self.root()}/blocks/{alloc.block_key(block)}"

    def addr_key(self, address: alloc.IPAddress) -> str:
        return f"{self.root()}/addrs/{address}"


@dataclass
class Leases:
    """One read of a network's keys: who holds which block, which addresses exist."""

    blocks: dict[alloc.IPNetwork, tuple[str, int]]  # block -> (member, lease)
    addrs: dict[alloc.IPAddress, tuple[dict[str, Any], bytes]]  # address -> (record, raw)

    @classmethod
    def read(cls, etcd: Etcd, conf: IpamConf) -> Leases:
        kvs, _revision = etcd.range_prefix(conf.root() + "/")
        return cls.parse(conf, kvs)

    @classmethod
    def parse(cls, conf: IpamConf, kvs: list[KeyValue]) -> Leases:
        blocks: dict[alloc.IPNetwork, tuple[str, int]] = {}
        addrs: dict[alloc.IPAddress, tuple[dict[str, Any], bytes]] = {}
        blocks_at, addrs_at = conf.root() + "/blocks/", conf.root() + "/addrs/"
        for kv in kvs:
            if kv.key.startswith(blocks_at):
                block = alloc.parse_block_key(kv.key[len(blocks_at) :])
                if block is not None:
                    blocks[block] = (kv.value.decode(errors="replace"), kv.lease)
            elif kv.key.startswith(addrs_at):
                try:
                    address = ipaddress.ip_address(kv.key[len(addrs_at) :])
                    record = json.loads(kv.value)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    addrs[address] = (record, kv.value)
        return cls(blocks, addrs)

    def owned_by(self, container: str, ifname: str) -> list[alloc.IPAddress]:
        return sorted(
            a
            for a, (r, _) in self.addrs.items()
            if r.get("container") == container and r.get("ifname") == ifname
        )


def member_lease(etcd: Etcd, conf: IpamConf) -> int:
    kv = etcd.get(member_key(conf.prefix, conf.member))
    if kv is None or not kv.lease:
        raise CniError(
            TRY_AGAIN_LATER,
            f"endpoint {conf.member} is not registered in the cluster "
            f"({member_key(conf.prefix, conf.member)} is missing): start `sclp run` with "
            '[cluster] on this host, or check ipam "member" and "prefix"',
        )
    return kv.lease


def _record(conf: IpamConf, container: str, ifname: str) -> bytes:
    return json.dumps(
        {"member": conf.member, "container": container, "ifname": ifname},
        separators=(",", ":"),
        sort_keys=True,
    ).encode()


def allocate(
    etcd: Etcd,
    conf: IpamConf,
    container: str,
    ifname: str,
    keep: frozenset[alloc.IPAddress] = frozenset(),
) -> alloc.IPAddress:
    """The address of (container, ifname): the one it has, else a new one from this
    host's blocks, else from a new block; never one of ``keep`` (this host's own
    record of addresses in use)."""
    lease = member_lease(etcd, conf)
    record = _record(conf, container, ifname)
    start = alloc.start_index(conf.member, conf.pool)
    for _ in range(ATTEMPTS):
        state = Leases.read(etcd, conf)
        have = state.owned_by(container, ifname)
        if have:
            return have[0]
        mine = [b for b, (_m, held) in state.blocks.items() if held == lease]
        address = alloc.free_address(conf.pool, mine, state.addrs.keys() | keep)
        if address is not None:
            held = (conf.block_key(conf.pool.block_of(address)), lease)
            if etcd.create(conf.addr_key(address), record, lease, held=held):
                return address
            continue
        block = alloc.free_block(conf.pool, state.blocks.keys(), start)
        if block is None:
            raise CniError(
                ADDRESSES_EXHAUSTED,
                f"network {conf.network}: every /{conf.pool.block_prefix} block of "
                f"{conf.pool.subnet} is held and this host's are full; use a larger subnet "
                "or a smaller blockSize",
            )
        etcd.create(conf.block_key(block), conf.member.encode(), lease)
    raise CniError(
        TRY_AGAIN_LATER, f"network {conf.network}: lost {ATTEMPTS} races for an address; try again"
    )


def release(etcd: Etcd, conf: IpamConf, container: str, ifname: str) -> list[alloc.IPAddress]:
    """Delete the addresses of (container, ifname); the ones deleted (none is fine)."""
    state = Leases.read(etcd, conf)
    gone = []
    for address in state.owned_by(container, ifname):
        if etcd.delete_if(conf.addr_key(address), state.addrs[address][1]):
            gone.append(address)
    return gone


# -- this host's own record, and putting its keys back after a restart ----------------


def _local_dir(conf: IpamConf) -> str:
    return os.path.join(conf.data_dir, conf.network)


def local_records(conf: IpamConf) -> dict[alloc.IPAddress, tuple[str, str]]:
    """Address -> (container, ifname), as this host recorded them."""
    out: dict[alloc.IPAddress, tuple[str, str]] = {}
    try:
        names = os.listdir(_local_dir(conf))
    except FileNotFoundError:
        return out
    for name in names:
        try:
            address = ipaddress.ip_address(name)
            with open(os.path.join(_local_dir(conf), name)) as f:
                container, ifname = f.read().split("\n")[:2]
        except (ValueError, OSError):
            continue
        out[address] = (container, ifname)
    return out


def remember(conf: IpamConf, address: alloc.IPAddress, container: str, ifname: str) -> None:
    os.makedirs(_local_dir(conf), mode=0o755, exist_ok=True)
    path = os.path.join(_local_dir(conf), str(address))
    with open(path + ".tmp", "w") as f:
        f.write(f"{container}\n{ifname}\n")
    os.replace(path + ".tmp", path)


def forget(conf: IpamConf, container: str, ifname: str) -> None:
    for address, owner in local_records(conf).items():
        if owner == (container, ifname):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(_local_dir(conf), str(address)))


def reassert(etcd: Etcd, conf: IpamConf) -> dict[alloc.IPAddress, str]:
    """Put this host's blocks and addresses back under its current member lease (keys
    still under an old lease of this member, and addresses in the local record that
    etcd lost); the addresses somebody else holds now, each with who."""
    lease = member_lease(etcd, conf)
    state = Leases.read(etcd, conf)
    for block, (holder, held) in state.blocks.items():
        if holder == conf.member and held != lease:
            etcd.move_lease(conf.block_key(block), conf.member.encode(), held, lease)
    for address, (record, raw) in state.addrs.items():
        if record.get("member") == conf.member:
            key = conf.addr_key(address)
            kv = etcd.get(key)
            if kv is not None and kv.lease != lease:
                etcd.move_lease(key, raw, kv.lease, lease)
    conflicts: dict[alloc.IPAddress, str] = {}
    local = local_records(conf)
    if not local:
        return conflicts
    state = Leases.read(etcd, conf)
    for address, (container, ifname) in sorted(local.items()):
        have = state.addrs.get(address)
        if have is not None:
            if (have[0].get("container"), have[0].get("ifname")) != (container, ifname):
                conflicts[address] = str(have[0].get("member", "?"))
            continue
        block = conf.pool.block_of(address)
        owner = state.blocks.get(block)
        if owner is None:
            etcd.create(conf.block_key(block), conf.member.encode(), lease)
        elif owner[1] != lease:
            conflicts[address] = owner[0]
            continue
        value = _record(conf, container, ifname)
        if not etcd.create(
            conf.addr_key(address), value, lease, held=(conf.block_key(block), lease)
        ):
            conflicts[address] = "another host"
    return conflicts


def _result(conf: IpamConf, address: alloc.IPAddress) -> dict[str, Any]:
    ip: dict[str, Any] = {"address": conf.pool.interface(address)}
    if conf.version == "0.4.0":
        ip["version"] = str(address.version)
    if conf.pool.gateway is not None:
        ip["gateway"] = str(conf.pool.gateway)
    return {
        "cniVersion": conf.version,
        "ips": [ip],
        "routes": [dict(r) for r in conf.routes],
        "dns": dict(conf.dns),
    }


def _client(conf: IpamConf) -> Etcd:
    return Etcd(conf.etcd, ca=conf.ca, cert=conf.cert, key=conf.key)


def _etcd_failure(conf: IpamConf, exc: EtcdError) -> CniError:
    return CniError(
        TRY_AGAIN_LATER,
        f"network {conf.network}: etcd ({', '.join(conf.etcd)}) failed: {exc}; "
        'check ipam "etcd" and that the cluster is up',
    )


def cmd_add(env: Environment, raw: dict[str, Any]) -> dict[str, Any]:
    conf = IpamConf.parse(raw)
    etcd = _client(conf)
    try:
        reassert(etcd, conf)
        keep = frozenset(local_records(conf))
        address = allocate(etcd, conf, env.container_id, env.ifname, keep)
        remember(conf, address, env.container_id, env.ifname)
    except EtcdError as exc:
        raise _etcd_failure(conf, exc) from None
    finally:
        etcd.close()
    return _result(conf, address)


def cmd_del(env: Environment, raw: dict[str, Any]) -> None:
    conf = IpamConf.parse(raw)
    etcd = _client(conf)
    try:
        with contextlib.suppress(CniError):  # not registered: nothing to move back
            reassert(etcd, conf)
        release(etcd, conf, env.container_id, env.ifname)
        forget(conf, env.container_id, env.ifname)
    except EtcdError as exc:
        raise _etcd_failure(conf, exc) from None
    finally:
        etcd.close()


def cmd_check(env: Environment, raw: dict[str, Any]) -> None:
    conf = IpamConf.parse(raw)
    etcd = _client(conf)
    try:
        conflicts = reassert(etcd, conf)
        have = Leases.read(etcd, conf).owned_by(env.container_id, env.ifname)
    except EtcdError as exc:
        raise _etcd_failure(conf, exc) from None
    finally:
        etcd.close()
    for address, (container, ifname) in local_records(conf).items():
        if (container, ifname) == (env.container_id, env.ifname) and address in conflicts:
            raise CniError(
                IPAM_FAILURE,
                f"network {conf.network}: address {address} of container "
                f"{env.container_id[:12]} is now held by {conflicts[address]} (this host's "
                "lease was gone meanwhile); re-create the container",
            )
    if not have:
        raise CniError(
            IPAM_FAILURE,
            f"network {conf.network}: no address lease for container {env.container_id[:12]} "
            f"{env.ifname} (its host's lease expired?); re-create the container",
        )


def main() -> None:
    sys.exit(serve({"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check}, "sclp-ipam"))


if __name__ == "__main__":
    main()
