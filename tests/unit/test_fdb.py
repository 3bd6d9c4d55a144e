from hypothesis import given, settings
from hypothesis import strategies as st

from sclp.switch.fdb import Destination, Fdb, LearnResult

A = bytes.fromhex("020000000001")
B = bytes.fromhex("020000000002")
BCAST = b"\xff" * 6
MCAST = bytes.fromhex("01005e000001")
PEERS = ("10.0.0.2", "10.0.0.3")


def test_unknown_unicast_floods_to_all_peers() -> None:
    fdb = Fdb(PEERS)
    assert fdb.lookup(A, now=0.0) == Destination(PEERS, flooded=True)


def test_broadcast_and_multicast_always_flood() -> None:
    fdb = Fdb(PEERS)
    fdb.learn(A, "10.0.0.2", now=0.0)
    assert fdb.lookup(BCAST, 0.0).flooded
    assert fdb.lookup(MCAST, 0.0).peers == PEERS


def test_learned_unicast_goes_to_one_peer() -> None:
    fdb = Fdb(PEERS)
    assert fdb.learn(A, "10.0.0.3", now=1.0) is LearnResult.NEW
    assert fdb.lookup(A, now=2.0) == Destination(("10.0.0.3",), flooded=False)
    assert fdb.learn(A, "10.0.0.3", now=3.0) is LearnResult.REFRESHED
    assert fdb.learn(A, "10.0.0.2", now=4.0) is LearnResult.MOVED
    assert fdb.lookup(A, now=4.0).peers == ("10.0.0.2",)


def test_non_peer_cannot_poison_the_table() -> None:
    fdb = Fdb(PEERS)
    fdb.learn(A, "10.0.0.2", now=0.0)
    assert fdb.learn(A, "192.0.2.66", now=1.0) is LearnResult.NOT_PEER
    assert fdb.lookup(A, 1.0).peers == ("10.0.0.2",)
    assert len(fdb) == 1


def test_multicast_source_is_not_learned() -> None:
    fdb = Fdb(PEERS)
    assert fdb.learn(MCAST, "10.0.0.2", 0.0) is LearnResult.MULTICAST_SOURCE
    assert len(fdb) == 0


def test_aging_on_lookup_and_expire() -> None:
    fdb = Fdb(PEERS, aging=300.0)
    fdb.learn(A, "10.0.0.2", now=0.0)
    fdb.learn(B, "10.0.0.3", now=200.0)
    assert not fdb.lookup(A, now=300.0).flooded
    assert fdb.lookup(A, now=300.5).flooded  # aged out on lookup
    assert fdb.expire(now=400.0) == 0  # B refreshed at 200
    assert fdb.expire(now=500.1) == 1
    assert len(fdb) == 0


def test_refresh_postpones_expiry() -> None:
    fdb = Fdb(PEERS, aging=10.0)
    fdb.learn(A, "10.0.0.2", now=0.0)
    fdb.learn(B, "10.0.0.2", now=5.0)
    fdb.learn(A, "10.0.0.2", now=9.0)
    assert fdb.expire(now=15.5) == 1  # B (5.0) goes, A (9.0) stays
    assert not fdb.lookup(A, now=15.5).flooded


def test_static_entries_win_and_never_age() -> None:
    fdb = Fdb(PEERS, aging=1.0)
    fdb.add_static(A, "10.0.0.9")
    assert fdb.learn(A, "10.0.0.2", now=0.0) is LearnResult.STATIC
    assert fdb.lookup(A, now=1e6) == Destination(("10.0.0.9",), flooded=False)
    assert fdb.expire(now=1e6) == 0


def test_entry_cap_evicts_least_recently_refreshed() -> None:
    fdb = Fdb(PEERS, max_entries=3)
    macs = [bytes([2, 0, 0, 0, 0, i]) for i in range(4)]
    for i, mac in enumerate(macs[:3]):
        fdb.learn(mac, "10.0.0.2", now=float(i))
    fdb.learn(macs[0], "10.0.0.2", now=5.0)  # refresh the oldest
    assert fdb.learn(macs[3], "10.0.0.2", now=6.0) is LearnResult.EVICTED_OLDEST
    assert len(fdb) == 3
    assert fdb.lookup(macs[1], 6.0).flooded  # macs[1] was the least recently refreshed
    assert not fdb.lookup(macs[0], 6.0).flooded


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.binary(min_size=6, max_size=6),
            st.sampled_from([*PEERS, "198.51.100.1"]),
            st.floats(0, 1000),
        ),
        max_size=50,
    )
)
def test_table_bounded_and_only_peers_learned(ops: list[tuple[bytes, str, float]]) -> None:
    fdb = Fdb(PEERS, max_entries=8)
    for mac, peer, now in ops:
        fdb.learn(mac, peer, now)
        assert len(fdb) <= 8
    assert all(peer in PEERS for _, peer, _ in fdb.entries())
