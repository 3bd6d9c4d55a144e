import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sclp.switch.fdb import Destination, Fdb, FdbEntry, LearnResult, Origin

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
    assert all(e.place in PEERS for e in fdb.entries(now=0.0))


C = bytes.fromhex("020000000003")
PORT = object()  # a local port: any hashable the caller chooses


def test_entries_name_their_origin_and_the_age_of_learned_ones() -> None:
    fdb = Fdb(PEERS, aging=300.0)
    fdb.add_port(PORT)
    fdb.add_static(A, "10.0.0.9")
    fdb.learn(B, "10.0.0.2", now=10.0)
    fdb.learn(C, PORT, now=25.0)
    fdb.set_remote({bytes.fromhex("020000000004"): "10.0.0.3"})
    assert fdb.entries(now=30.0) == [
        FdbEntry(A, "10.0.0.9", Origin.STATIC, None),
        FdbEntry(B, "10.0.0.2", Origin.LEARNED, 20.0),
        FdbEntry(C, PORT, Origin.LEARNED, 5.0),
        FdbEntry(bytes.fromhex("020000000004"), "10.0.0.3", Origin.CLUSTER, None),
    ]
    fdb.learn(B, "10.0.0.2", now=40.0)  # refreshed: age counts from the last sighting
    ages = {e.mac: e.age for e in fdb.entries(now=41.5)}
    assert ages[B] == 1.5 and ages[A] is None


def test_entries_leave_out_what_lookup_would_not_use() -> None:
    fdb = Fdb(PEERS, aging=10.0)
    fdb.learn(A, "10.0.0.2", now=0.0)
    fdb.learn(B, "10.0.0.3", now=5.0)
    # The cluster announces A, B and C elsewhere: shadowed by the learned entries while
    # they live, and by the static one for good.
    fdb.add_static(C, "10.0.0.2")
    fdb.set_remote({A: "10.0.0.3", B: "10.0.0.2", C: "10.0.0.3"})
    assert [(e.mac, e.origin) for e in fdb.entries(now=8.0)] == [
        (C, Origin.STATIC),
        (A, Origin.LEARNED),
        (B, Origin.LEARNED),
    ]
    # A aged out (not yet expired): its cluster entry is what lookup uses now, and shows.
    assert fdb.lookup(A, now=12.0) == Destination(("10.0.0.3",), flooded=False)
    listed = {e.mac: (e.place, e.origin) for e in fdb.entries(now=12.0)}
    assert listed[A] == ("10.0.0.3", Origin.CLUSTER)
    assert listed[B] == ("10.0.0.3", Origin.LEARNED)
    assert len(listed) == 3


def test_an_entry_record_is_frozen_and_rows_are_the_same_facts() -> None:
    fdb = Fdb(PEERS)
    fdb.learn(A, "10.0.0.2", now=1.0)
    (entry,) = fdb.entries(now=3.0)
    with pytest.raises(AttributeError):
        entry.age = 0.0  # type: ignore[misc]
    assert fdb.rows(now=3.0) == [(A, "10.0.0.2", Origin.LEARNED, 2.0)]
    assert {o.value for o in Origin} == {"learned", "static", "cluster", "evpn"}


def test_evpn_and_cluster_entries_keep_their_origin_and_evpn_wins_a_mac_both_name() -> None:
    fdb = Fdb(PEERS)
    fdb.set_remote({A: "10.0.0.2"}, Origin.CLUSTER)
    fdb.set_remote({A: "10.0.0.3", B: "10.0.0.3", C: "10.9.9.9"}, Origin.EVPN)
    assert sorted(fdb.rows(now=0.0)) == [
        (A, "10.0.0.3", Origin.EVPN, None),
        (B, "10.0.0.3", Origin.EVPN, None),
    ]
    assert fdb.lookup(A, 0.0).peers == ("10.0.0.3",)
    # Replacing one origin's MACs leaves the other's; learning from another peer
    # shadows the announcement in lookups but does not overwrite it.
    fdb.set_remote({}, Origin.EVPN)
    assert fdb.rows(now=0.0) == [(A, "10.0.0.2", Origin.CLUSTER, None)]
    fdb.set_remote({B: "10.0.0.3"}, Origin.EVPN)
    fdb.learn(B, "10.0.0.2", now=1.0)
    assert fdb.lookup(B, 1.0).peers == ("10.0.0.2",)
    fdb.expire(now=1000.0)
    assert fdb.lookup(B, 1000.0).peers == ("10.0.0.3",)
    # A peer that leaves takes its announced MACs with it.
    fdb.set_peers(["10.0.0.2"])
    assert fdb.rows(now=1000.0) == [(A, "10.0.0.2", Origin.CLUSTER, None)]
