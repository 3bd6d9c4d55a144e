"""Two data paths back to back in memory, for every protocol and carrier.

The sans-I/O seam of the endpoint: host A's :meth:`DataPath.from_vm` produces the
sends its sockets would make; :func:`transfer` turns them into what host B's sockets
would read (one GRO buffer per UDP GSO send, or datagram by datagram; raw packets one
by one, with or without the batch's ones' complement sum) — lost, reordered or
duplicated on the way if asked — and feeds them to B's :meth:`DataPath.from_udp` /
:meth:`DataPath.from_ip`.  What B delivers must be the frame A's VM sent: one GSO
frame for the segmenting tunnels, MSS-sized frames for the classic ones.  No root, no
sockets, no clock.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sclp.endpoint.config import Protocol, parse_config
from sclp.endpoint.datapath import FRAME_BUF, HEADROOM, VNET, VNET_LEN, VNET_NONE, DataPath, Deliver
from sclp.endpoint.tunnels import Channel, Send
from sclp.wire import ipv4
from sclp.wire.checksum import internet_checksum, ones_sum
from sclp.wire.errors import DropReason

A, B, C = "10.9.0.1", "10.9.0.2", "10.9.0.3"
MAC_A, MAC_B = bytes.fromhex("020000000a01"), bytes.fromhex("020000000b01")
IP_A, IP_B = bytes([192, 168, 9, 1]), bytes([192, 168, 9, 2])
MSS = 1448
CASES = [
    (p.value, carrier) for p in Protocol for carrier in (("ip", "udp") if p.is_sclp else ("ip",))
]
SEGMENTING = {"vxlan-sclp", "geneve-sclp", "stt"}


def config(local: str, peers: list[str], protocol: str, carrier: str, extra: str = "") -> str:
    peer_list = ", ".join(f'"{p}"' for p in peers)
    return (
        f'name = "dp{local[-1]}"\n[underlay]\nlocal = "{local}"\nmtu = 1500\n'
        f'sclp_carrier = "{carrier}"\n{extra}'
        f'[[network]]\nvni = 42\nprotocol = "{protocol}"\ntap = "t42"\npeers = [{peer_list}]\n'
    )


def pair(protocol: str, carrier: str, extra: str = "") -> tuple[DataPath, DataPath]:
    a = DataPath(parse_config(config(A, [B], protocol, carrier, extra)), 1500)
    b = DataPath(parse_config(config(B, [A], protocol, carrier, extra)), 1500)
    return a, b


def tcp_frame(payload: bytes, *, partial: bool = False) -> bytes:
    """Ethernet + IPv4 + TCP from A's VM to B's VM.  The TCP checksum is complete, or
    only the pseudo-header sum (what a VM with TSO leaves for NEEDS_CSUM)."""
    tcp = bytearray(struct.pack("!HHIIBBHHH", 40000, 5201, 1000, 77, 5 << 4, 0x18, 501, 0, 0))
    tcp += payload
    pseudo = ipv4.pseudo_header_sum(IP_A, IP_B, 6, len(tcp))
    csum = pseudo if partial else internet_checksum(tcp, pseudo)
    struct.pack_into("!H", tcp, 16, csum)
    ip = ipv4.encode(ipv4.IPv4Header(IP_A, IP_B, 6, 20 + len(tcp)))
    return MAC_B + MAC_A + b"\x08\x00" + ip + bytes(tcp)


def vm_read(frame: bytes, gso_size: int = 0) -> tuple[bytearray, int]:
    """A read buffer as the runner fills it from a TAP: virtio header, then the frame."""
    buf = bytearray(FRAME_BUF)
    if gso_size:
        VNET.pack_into(buf, HEADROOM - VNET_LEN, 1, 1, 54, gso_size, 34, 16)
    buf[HEADROOM : HEADROOM + len(frame)] = frame
    return buf, VNET_LEN + len(frame)


def vm_mss(dp: DataPath) -> int:
    """The MSS the VM's TCP would choose for its MTU (at most :data:`MSS`)."""
    return min(MSS, dp.ports[42].vm_mtu - 40)


def packets_of(send: Send) -> list[bytes]:
    data = bytes(send.data)
    return [data[i : i + send.stride] for i in range(0, len(data), send.stride)]


def transfer(
    src: str,
    dst: DataPath,
    sends: list[Send],
    *,
    gro: bool = True,
    sums: bool = True,
    mangle: Callable[[list[bytes]], list[bytes]] = lambda p: p,
    now: float = 0.0,
) -> list[Deliver]:
    """What ``dst`` delivers of ``sends`` made by the host at ``src``."""
    udp = dst.underlay.carrier.value == "udp"
    out: list[Deliver] = []
    for send in sends:
        assert send.packets == len(packets_of(send))
        packets = mangle(packets_of(send))
        on_udp = send.channel in (Channel.VXLAN, Channel.GENEVE) or (
            send.channel is Channel.SCLP and udp
        )
        if on_udp and gro and packets == packets_of(send):
            out += dst.from_udp(send.channel, src, memoryview(bytes(send.data)), send.stride, now)
            continue
        for packet in packets:
            view = memoryview(bytearray(packet))
            if on_udp:
                out += dst.from_udp(send.channel, src, view, len(packet), now)
            else:
                l4_sum = ones_sum(packet) if sums else None
                out += dst.from_ip(send.channel, src, view, now, l4_sum)
    return out


def tcp_payload(frame: bytes) -> bytes:
    ihl = (frame[14] & 0x0F) * 4
    doff = (frame[14 + ihl + 12] >> 4) * 4
    return frame[14 + ihl + doff :]


@pytest.mark.parametrize(("protocol", "carrier"), CASES)
@pytest.mark.parametrize("gro", [True, False], ids=["gro", "one-by-one"])
def test_a_plain_frame_arrives_whole_and_the_source_is_learned(
    protocol: str, carrier: str, gro: bool
) -> None:
    a, b = pair(protocol, carrier)
    frame = tcp_frame(b"x" * 300)
    sends = a.from_vm(a.ports[42], *vm_read(frame), now=0.0)
    assert [s.peer for s in sends] == [B]
    out = transfer(A, b, sends, gro=gro)
    assert [(d.port.vni, d.vnet, bytes(d.frame)) for d in out] == [(42, VNET_NONE, frame)]
    assert b.ports[42].fdb.lookup(MAC_A, 0.0).peers == (A,)
    assert a.ports[42].counters["tx_frames"] == 1
    assert b.stats()["counters"]["rx_packets"] == sends[0].packets


@pytest.mark.parametrize(("protocol", "carrier"), CASES)
@pytest.mark.parametrize("sums", [True, False], ids=["batch-sums", "verify-here"])
def test_a_tso_frame_crosses_as_one_gso_frame_or_as_mss_frames(
    protocol: str, carrier: str, sums: bool
) -> None:
    a, b = pair(protocol, carrier)
    data = random.Random(1).randbytes(60_000)
    frame = tcp_frame(data, partial=True)
    mss = vm_mss(a)
    sends = a.from_vm(a.ports[42], *vm_read(frame, mss), now=0.0)
    out = transfer(A, b, sends, sums=sums)
    if protocol in SEGMENTING:
        assert len(out) == 1
        flags, gso_type, hdr_len, gso_size, csum_start, csum_off = VNET.unpack(out[0].vnet)
        assert (flags, gso_type, hdr_len, csum_start, csum_off) == (1, 1, 54, 34, 16)
        # STT and Geneve carry the sender's MSS; VXLAN over SCLP uses the VM's MTU.
        assert gso_size == (1460 if protocol == "vxlan-sclp" else MSS)
        assert bytes(out[0].frame) == frame
    else:
        assert len(out) == -(-len(data) // mss)
        assert all(d.vnet == VNET_NONE for d in out)
        assert b"".join(tcp_payload(bytes(d.frame)) for d in out) == data
        for d in out:  # complete checksums, made by the sender's software TSO
            seg = bytes(d.frame)
            l4 = seg[34:]
            assert internet_checksum(l4, ipv4.pseudo_header_sum(IP_A, IP_B, 6, len(l4))) == 0


@pytest.mark.parametrize(("protocol", "carrier"), CASES)
def test_reordered_and_duplicated_segments_deliver_once(protocol: str, carrier: str) -> None:
    a, b = pair(protocol, carrier)
    frame = tcp_frame(bytes(range(256)) * 100, partial=True)
    sends = a.from_vm(a.ports[42], *vm_read(frame, vm_mss(a)), now=0.0)
    rng = random.Random(7)

    def shuffle_and_double(packets: list[bytes]) -> list[bytes]:
        doubled = packets + packets
        rng.shuffle(doubled)
        return doubled

    out = transfer(A, b, sends, mangle=shuffle_and_double)
    if protocol in SEGMENTING:
        assert [bytes(d.frame) for d in out] == [frame]
    else:  # datagrams: every copy is a frame of its own, as on a real network
        assert len(out) == 2 * sum(s.packets for s in sends)


@pytest.mark.parametrize(("protocol", "carrier"), CASES)
def test_a_lost_segment_times_out_and_frees_the_entry(protocol: str, carrier: str) -> None:
    a, b = pair(protocol, carrier)
    frame = tcp_frame(bytes(30_000), partial=True)
    sends = a.from_vm(a.ports[42], *vm_read(frame, vm_mss(a)), now=0.0)
    out = transfer(A, b, sends, mangle=lambda p: p[:3] + p[4:], now=0.0)
    if protocol not in SEGMENTING:
        assert len(out) == sum(s.packets for s in sends) - 1
        assert b.next_deadline() is None
        return
    assert out == []
    deadline = b.next_deadline()
    assert deadline is not None and deadline > 0.0
    b.expire(deadline + 0.01)
    counters = b.stats()["counters"]
    assert counters["drop_timeout"] == 1
    assert counters["reasm_bytes_held"] == 0
    for _ in range(3):  # remembered keys of the discarded payload may be forgotten later
        later = b.next_deadline()
        if later is None:
            break
        b.expire(later + 0.01)
    assert b.next_deadline() is None


@pytest.mark.parametrize(("protocol", "carrier"), CASES)
def test_strangers_and_unknown_vnis_are_counted_not_delivered(protocol: str, carrier: str) -> None:
    a, b = pair(protocol, carrier)
    frame = tcp_frame(b"y" * 100)
    sends = a.from_vm(a.ports[42], *vm_read(frame), now=0.0)
    assert transfer(C, b, sends) == []
    assert b.stats()["counters"]["drop_not_peer"] == sends[0].packets
    other = DataPath(parse_config(config(B, [A], protocol, carrier).replace("42", "43")), 1500)
    assert transfer(A, other, sends) == []
    assert other.stats()["counters"]["drop_unknown_vni"] == 1


@pytest.mark.parametrize(("protocol", "carrier"), CASES)
def test_unknown_destinations_flood_to_every_peer(protocol: str, carrier: str) -> None:
    dp = DataPath(parse_config(config(A, [B, C], protocol, carrier)), 1500)
    sends = dp.from_vm(dp.ports[42], *vm_read(tcp_frame(b"z" * 64)), now=0.0)
    assert sorted(str(s.peer) for s in sends) == [B, C]
    assert dp.ports[42].counters["tx_flooded"] == 1


def test_a_frame_over_the_largest_is_dropped_as_oversize() -> None:
    a, _ = pair("vxlan-sclp", "ip")
    buf = bytearray(FRAME_BUF + 100)
    assert a.from_vm(a.ports[42], buf, VNET_LEN + 65_600, 0.0) == []
    assert a.ports[42].counters["drop_oversize"] == 1
    assert a.from_vm(a.ports[42], buf, VNET_LEN + 10, 0.0) == []
    assert a.ports[42].counters["drop_too_short"] == 1


@pytest.mark.parametrize("protocol", ["vxlan-sclp", "stt"])
def test_level_two_off_delivers_mss_frames(protocol: str) -> None:
    a = DataPath(parse_config(config(A, [B], protocol, "udp")), 1500)
    b = DataPath(
        parse_config(config(B, [A], protocol, "udp") + "[tuning]\ndeliver_gso = false\n"), 1500
    )
    data = bytes(range(200)) * 100
    sends = a.from_vm(a.ports[42], *vm_read(tcp_frame(data, partial=True), MSS), now=0.0)
    out = transfer(A, b, sends)
    assert len(out) > 1 and all(d.vnet == VNET_NONE for d in out)
    assert b"".join(tcp_payload(bytes(d.frame)) for d in out) == data


def test_empty_or_impossible_reads_are_counted() -> None:
    _, b = pair("vxlan-sclp", "udp")
    assert b.from_udp(Channel.SCLP, A, memoryview(b""), 0, 0.0) == []
    b.count_rx_drop(DropReason.TOO_SHORT)
    counters = b.stats()["counters"]
    assert counters["drop_too_short"] == 2 and counters["rx_packets"] == 2


@settings(max_examples=60, deadline=None)
@given(
    case=st.sampled_from(CASES),
    size=st.integers(1, 64_000),
    mss=st.integers(536, 9000),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_tso_frame_in_any_order_arrives_exactly_once(
    case: tuple[str, str], size: int, mss: int, seed: int
) -> None:
    protocol, carrier = case
    a, b = pair(protocol, carrier)
    data = random.Random(seed).randbytes(size)
    frame = tcp_frame(data, partial=True)
    mss = min(mss, a.ports[42].vm_mtu - 40)
    gso = mss if len(frame) > 1514 else 0
    if not gso:
        frame = tcp_frame(data)
    sends = a.from_vm(a.ports[42], *vm_read(frame, gso), now=0.0)
    rng = random.Random(seed)
    out = transfer(A, b, sends, mangle=lambda p: rng.sample(p, len(p)))
    if protocol in SEGMENTING or not gso:
        assert [bytes(d.frame) for d in out] == [frame]
    else:
        got = sorted(bytes(d.frame) for d in out)
        assert b"".join(tcp_payload(f) for f in sorted(got, key=lambda f: f[38:42])) == data
