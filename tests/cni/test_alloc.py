"""The address allocator of ``sclp-ipam`` against an in-memory store with etcd's
transaction semantics, with other hosts racing in between a host's read and its
write, and hosts dying (their lease's keys vanish): no address is ever held twice,
each lies in a block its holder holds, none is the subnet's first, last or gateway,
and a host reports exhaustion only when it truly has nowhere to go."""

from __future__ import annotations

import contextlib
import ipaddress
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sclp.cluster.etcd import EtcdError, KeyValue, LeaseNotFoundError
from sclp.cluster.model import member_key
from sclp.cni import alloc
from sclp.cni.ipam import IpamConf, Leases, allocate, release
from sclp.cni.spec import CniError


@dataclass
class FakeEtcd:
    """Keys with leases; ``create`` is etcd's compare-and-put; ``before_write`` runs
    just before each write (another host's move, a lease expiring)."""

    kv: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    live: set[int] = field(default_factory=set)
    before_write: Callable[[], None] = lambda: None

    def get(self, key: str) -> KeyValue | None:
        if key not in self.kv:
            return None
        value, lease = self.kv[key]
        return KeyValue(key, value, 1, 1, lease)

    def range_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        return [
            KeyValue(k, v, 1, 1, lease) for k, (v, lease) in sorted(self.kv.items())
            if k.startswith(prefix)
        ], 1  # fmt: skip

    def create(
        self, key: str, value: bytes, lease: int = 0, *, held: tuple[str, int] | None = None
    ) -> bool:
        self.before_write()
        if lease and lease not in self.live:  # etcd refuses the whole transaction
            raise LeaseNotFoundError(f"lease {lease:x} not found")
        if key in self.kv:
            return False
        if held is not None and self.kv.get(held[0], (b"", 0))[1] != held[1]:
            return False
        self.kv[key] = (value, lease)
        return True

    def move_lease(self, key: str, value: bytes, old: int, new: int) -> bool:
        if self.kv.get(key) != (value, old):
            return False
        self.kv[key] = (value, new)
        return True

    def delete_if(self, key: str, value: bytes) -> bool:
        if self.kv.get(key, (None, 0))[0] != value:
            return False
        del self.kv[key]
        return True

    def expire(self, lease: int) -> None:
        self.live.discard(lease)
        for key in [k for k, (_, held) in self.kv.items() if held == lease]:
            del self.kv[key]


def _conf(member: str, subnet: str = "10.42.0.0/26", block: int = 29) -> IpamConf:
    return IpamConf.parse(
        {
            "cniVersion": "1.0.0",
            "name": "net1",
            "endpoint": member,
            "ipam": {
                "type": "sclp-ipam",
                "subnet": subnet,
                "blockSize": block,
                "gateway": subnet.rsplit(".", 1)[0] + ".1",
                "etcd": ["http://127.0.0.1:2379"],
            },
        }
    )


HOSTS = ("h1", "h2", "h3")


def _register(store: FakeEtcd, leases: dict[str, int], host: str) -> None:
    lease = max(leases.values(), default=100) + 1
    leases[host] = lease
    store.live.add(lease)
    store.kv[member_key("/sclp", host)] = (b"{}", lease)


def _check(store: FakeEtcd, conf: IpamConf) -> None:
    state = Leases.parse(conf, store.range_prefix(conf.root() + "/")[0])
    for address, (record, _) in state.addrs.items():
        block = conf.pool.block_of(address)
        assert block in state.blocks, f"{address} outside any held block"
        holder, lease = state.blocks[block]
        assert record["member"] == holder, f"{address} of {record['member']} in {holder}'s block"
        addr_lease = store.kv[conf.addr_key(address)][1]
        assert addr_lease == lease, "an address outlives its block's lease"
        assert conf.pool.usable(address)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["add", "del", "die"]),
            st.sampled_from(HOSTS),
            st.integers(0, 30),  # container
            # who races in before this host's writes: another ADD, or a host dying
            st.lists(
                st.tuples(st.sampled_from(["add", "die"]), st.sampled_from(HOSTS)), max_size=3
            ),
        ),
        max_size=60,
    )
)
def test_no_address_is_ever_held_twice(steps: list) -> None:
    store = FakeEtcd()
    leases: dict[str, int] = {}
    for host in HOSTS:
        _register(store, leases, host)
    counter = [0]

    for action, host, container, racers in steps:
        conf = _conf(host)
        queue = list(racers)

        def race(queue: list[str] = queue) -> None:
            while queue:
                kind, other = queue.pop(0)
                counter[0] += 1
                if kind == "die":
                    store.expire(leases[other])
                    _register(store, leases, other)
                else:
                    with_store(other, f"r{counter[0]}")

        def with_store(other: str, cid: str) -> None:
            with contextlib.suppress(CniError, EtcdError):
                allocate(store, _conf(other), cid, "eth0")  # type: ignore[arg-type]

        if action == "add":
            store.before_write = race
            try:
                address = allocate(store, conf, f"c{container}", "eth0")  # type: ignore[arg-type]
            except LeaseNotFoundError:
                assert any(kind == "die" for kind, _ in racers)  # it died meanwhile
            except CniError as exc:
                state = Leases.parse(conf, store.range_prefix(conf.root() + "/")[0])
                assert exc.code == 103, exc.msg
                mine = [b for b, (_, lease) in state.blocks.items() if lease == leases[host]]
                assert alloc.free_address(conf.pool, mine, state.addrs.keys()) is None
                assert alloc.free_block(conf.pool, state.blocks.keys()) is None
            else:
                again = allocate(store, conf, f"c{container}", "eth0")  # type: ignore[arg-type]
                assert again == address  # ADD twice: the same address
            store.before_write = lambda: None
        elif action == "del":
            release(store, conf, f"c{container}", "eth0")  # type: ignore[arg-type]
            assert not Leases.parse(conf, store.range_prefix(conf.root() + "/")[0]).owned_by(
                f"c{container}", "eth0"
            )
        else:  # the host dies: its lease expires, it registers again with a new one
            store.expire(leases[host])
            _register(store, leases, host)
        _check(store, conf)
        # Every address still in the store is held by exactly one (host, container).
        state = Leases.parse(conf, store.range_prefix(conf.root() + "/")[0])
        owners = [json.dumps(r, sort_keys=True) for r, _ in state.addrs.values()]
        assert len(owners) == len(set(owners))


def test_pool_refuses_what_cannot_work() -> None:
    with pytest.raises(alloc.PoolError, match="blockSize"):
        alloc.Pool.make("10.0.0.0/24", 23)
    with pytest.raises(alloc.PoolError, match="blockSize"):
        alloc.Pool.make("10.0.0.0/24", 31)
    with pytest.raises(alloc.PoolError, match="gateway"):
        alloc.Pool.make("10.0.0.0/24", 28, "10.0.1.1")
    with pytest.raises(alloc.PoolError):
        alloc.Pool.make("10.0.0.1/24", 28)  # host bits set
    with pytest.raises(alloc.PoolError, match="more than"):
        alloc.Pool.make("10.0.0.0/8", 30)


def test_first_block_skips_network_and_gateway() -> None:
    pool = alloc.Pool.make("10.0.0.0/24", 28, "10.0.0.1")
    first = next(pool.blocks())
    assert str(alloc.free_address(pool, [first], set())) == "10.0.0.2"
    last = list(pool.blocks())[-1]
    used = {ipaddress.ip_address(f"10.0.0.{n}") for n in range(240, 255)}
    assert alloc.free_address(pool, [last], used) is None  # .255 is the broadcast
    assert alloc.parse_block_key(alloc.block_key(last)) == last
    assert alloc.parse_block_key("nonsense") is None
    assert pool.interface(ipaddress.ip_address("10.0.0.7")) == "10.0.0.7/24"


def test_hosts_start_looking_at_different_blocks() -> None:
    pool = alloc.Pool.make("10.0.0.0/24", 28)
    starts = {alloc.start_index(h, pool) for h in ("host1", "host2", "host3", "host4")}
    assert len(starts) >= 3
    assert alloc.free_block(pool, set(), 15) == list(pool.blocks())[15]
    assert alloc.free_block(pool, set(pool.blocks())) is None
