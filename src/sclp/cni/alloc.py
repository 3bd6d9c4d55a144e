"""The address allocator of ``sclp-ipam``, without I/O (docs/containers.md).

A network's subnet is cut into blocks (``blockSize``, a prefix length: /28 = 16
addresses).  A host leases whole blocks; it hands out addresses only from its own
blocks, and takes a new free block when they are full.  Which block and which address
to try next are decided here from one read of the store; the store's transactions
(:mod:`sclp.cni.ipam`) make the choice stick only if nobody took it in between:

- a block is created only if its key does not exist yet;
- an address is created only if its key does not exist yet *and* its block is still
  held under this host's lease.

So two hosts never hand out the same address: an address lies in exactly one block,
a block has at most one holder at a time, and only its holder creates addresses in it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_BLOCKS = 1 << 16  # a subnet cut into more blocks than this is refused


class PoolError(ValueError):
    """A pool that cannot be used (bad subnet, block size, range)."""


@dataclass(frozen=True)
class Pool:
    """A subnet, its block size and the addresses never handed out: the subnet's
    first and last (network and broadcast for IPv4), the gateway and ``reserved``."""

    subnet: IPNetwork
    block_prefix: int
    gateway: IPAddress | None = None
    reserved: frozenset[IPAddress] = frozenset()

    @classmethod
    def make(
        cls,
        subnet: str,
        block_prefix: int,
        gateway: str | None = None,
        reserved: Iterable[str] = (),
    ) -> Pool:
        try:
            net = ipaddress.ip_network(subnet, strict=True)
            gw = ipaddress.ip_address(gateway) if gateway else None
            res = frozenset(ipaddress.ip_address(r) for r in reserved)
        except ValueError as exc:
            raise PoolError(str(exc)) from None
        bits = net.max_prefixlen
        if not net.prefixlen <= block_prefix <= bits - 2:
            raise PoolError(
                f"blockSize /{block_prefix} does not fit subnet {net}: it must be between "
                f"/{net.prefixlen} and /{bits - 2}"
            )
        if 1 << (block_prefix - net.prefixlen) > MAX_BLOCKS:
            raise PoolError(f"subnet {net} in /{block_prefix} blocks is more than {MAX_BLOCKS}")
        if gw is not None and gw not in net:
            raise PoolError(f"gateway {gw} is not in subnet {net}")
        return cls(net, block_prefix, gw, res)

    def blocks(self) -> Iterator[IPNetwork]:
        return self.subnet.subnets(new_prefix=self.block_prefix)

    def block_of(self, address: IPAddress) -> IPNetwork:
        return ipaddress.ip_network(f"{address}/{self.block_prefix}", strict=False)

    def usable(self, address: IPAddress) -> bool:
        return (
            address in self.subnet
            and address != self.subnet.network_address
            and address != self.subnet.broadcast_address
            and address != self.gateway
            and address not in self.reserved
        )

    def interface(self, address: IPAddress) -> str:
        """The address with the subnet's prefix length (what the container gets)."""
        return f"{address}/{self.subnet.prefixlen}"


def block_key(block: IPNetwork) -> str:
    """A block as a key component: ``10.42.0.16-28``."""
    return f"{block.network_address}-{block.prefixlen}"


def parse_block_key(text: str) -> IPNetwork | None:
    address, _, prefix = text.partition("-")
    try:
        return ipaddress.ip_network(f"{address}/{int(prefix)}", strict=True)
    except ValueError:
        return None


def free_address(
    pool: Pool, mine: Iterable[IPNetwork], used: Collection[IPAddress]
) -> IPAddress | None:
    """The lowest usable address of this host's blocks (in order) nobody uses."""
    for block in sorted(mine, key=lambda b: int(b.network_address)):
        for address in block:
            if address not in used and pool.usable(address):
                return address
    return None


def free_block(pool: Pool, taken: Collection[IPNetwork], start: int = 0) -> IPNetwork | None:
    """A block nobody holds that has a usable address, searching from index
    ``start`` (a host-dependent offset keeps hosts from racing for the same one)."""
    blocks = list(pool.blocks())
    for i in range(len(blocks)):
        block = blocks[(start + i) % len(blocks)]
        if block not in taken and any(pool.usable(a) for a in block):
            return block
    return None


def start_index(member: str, pool: Pool) -> int:
    """The block index where ``member`` starts looking (stable, spread by name)."""
    count = 1 << (pool.block_prefix - pool.subnet.prefixlen)
    return sum((i + 1) * b for i, b in enumerate(member.encode())) % count
