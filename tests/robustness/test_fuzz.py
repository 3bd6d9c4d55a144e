"""Fuzz targets for everything that reads bytes from the network (Hypothesis, bounded).

The per-module tests already feed each decoder random bytes.  Here every parser is
driven by one shared target that is *found*, not listed: each ``decode`` of every
``sclp.wire`` module (a new codec is fuzzed the day it lands), plus the other entry
points of the receive path (VXLAN's fast VNI read, the frame parser, the SCLP
checksum check, the tunnel decapsulators, the TCP frame layout and segmenter).
Inputs are random bytes and, to get past the first checks, valid packets of every
kind with bytes overwritten, cut short or extended, as ``bytes``, ``bytearray`` or
``memoryview``.  Invariant: the parser returns, or raises ``MalformedPacket`` with a
``DropReason``; nothing else ever escapes.

The reassemblers get the property that matters against an attacker: with two
senders of *conflicting* data for one packet ID (different bytes, different cuts,
different lengths), interleaved, duplicated and partly lost, a delivered payload
agrees with every segment fed while it was put together, so conflicting bytes are
never spliced in; and the byte and entry caps hold after every segment.

The endpoint's own receive steps are fuzzed at the data path's seam and through the
runner's receive handlers (UDP reads with and without GRO, raw and packet-socket
batches, SCLP segments and payloads, GRE packets, STT segments, delivery to a VM),
with stand-ins for the socket adapters; they must never raise.  So is the transmit
step, with the production shapes (software TSO into one GSO buffer, SCLP and STT
segments in one buffer), for frames a VM hands to its TAP.  These targets reproduce
the three crashes fixed with tests/robustness/test_regressions.py (an inner frame
whose headers are longer than the VM's MTU; an empty UDP datagram; an STT GSO frame
with its L4 header past byte 255) within their example budgets.
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
import random
import socket
import struct
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sclp.wire as wire_package
from sclp.endpoint import tunnels
from sclp.endpoint.config import parse_config
from sclp.endpoint.datapath import FRAME_BUF, HEADROOM, MAX_VM_FRAME, DataPath, Deliver
from sclp.endpoint.runner import Runner, UnderlaySender
from sclp.endpoint.tunnels import Channel
from sclp.engine.reassembler import Reassembler
from sclp.engine.segmenter import Segmenter
from sclp.engine.stt import SttReassembler, SttSegmenter, pseudo_sum_for
from sclp.engine.tso import parse_tcp_frame, segment_tcp_frame
from sclp.io.packet import ipv4_payload_bounds
from sclp.io.rawip import source_key
from sclp.wire import geneve, ipv4, nvgre, sclp, stt, vxlan
from sclp.wire.checksum import internet_checksum, ones_sum
from sclp.wire.errors import DropReason, MalformedPacket
from sclp.wire.frame import parse_frame
from sclp.wire.sclp import SCLP_HLEN, Carrier, SclpHeader
from sclp.wire.virtio_net import VNET_HDR, VNET_HDR_LEN

# -- the targets ----------------------------------------------------------------------


def _wire_decoders() -> dict[str, Callable[[Any], object]]:
    found: dict[str, Callable[[Any], object]] = {}
    for info in pkgutil.iter_modules(wire_package.__path__):
        module = importlib.import_module(f"sclp.wire.{info.name}")
        decode = getattr(module, "decode", None)
        if callable(decode):
            found[f"{info.name}.decode"] = decode
    return found


WIRE_DECODERS = _wire_decoders()
TARGETS: dict[str, Callable[[Any], object]] = {
    **WIRE_DECODERS,
    "ipv4.decode(no checksum)": lambda b: ipv4.decode(b, verify_checksum=False),
    "vxlan.vni_of": vxlan.vni_of,
    "frame.parse_frame": parse_frame,
    "sclp.verify_checksum(ip)": lambda b: sclp.verify_checksum(b, Carrier.IP),
    "sclp.verify_checksum(udp)": lambda b: sclp.verify_checksum(b, Carrier.UDP),
    **{
        f"tunnels.decapsulate({p})": (lambda b, p=p: tunnels.decapsulate(p, b))
        for p in ("vxlan", "geneve", "nvgre", "stt")
    },
    "tso.parse_tcp_frame": parse_tcp_frame,
    "packet.ipv4_payload_bounds": lambda b: _checked_bounds(b),
    "tso.segment_tcp_frame": lambda b: segment_tcp_frame(b, 100),
}


def _checked_bounds(packet: Any) -> tuple[int, int]:
    """The STT packet socket's IPv4 check; what it returns must lie in the packet."""
    start, end = ipv4_payload_bounds(packet, len(packet))
    assert 20 <= start <= end <= len(packet), (start, end)
    return start, end


def test_every_wire_codec_is_a_target() -> None:
    expected = {"ethernet", "geneve", "ipv4", "ipv6", "nvgre", "sclp", "stt", "tcp", "udp"}
    expected |= {"virtio_net", "vxlan"}
    assert {name.split(".")[0] for name in WIRE_DECODERS} >= expected


# -- seeds: one valid packet of every kind ----------------------------------------------

MAC1, MAC2 = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
SRC4, DST4 = bytes([10, 77, 0, 2]), bytes([10, 77, 0, 1])


def _tcp_header(options: bytes = b"") -> bytes:
    doff = (20 + len(options)) // 4
    return struct.pack("!HHIIBBHHH", 40000, 5201, 1, 2, doff << 4, 0x18, 512, 0, 0) + options


def _ipv4_tcp(data: bytes, options: bytes = b"") -> bytes:
    tcp = _tcp_header(b"\x01\x01\x08\x0a" + bytes(8)) + data
    hdr = ipv4.IPv4Header(SRC4, DST4, 6, 20 + len(options) + len(tcp), options=options)
    return ipv4.encode(hdr) + tcp


def _ipv6_udp(data: bytes, ext: bytes = b"") -> bytes:
    udp = struct.pack("!HHHH", 4000, 53, 8 + len(data), 0) + data
    nh = 0 if ext else 17
    return struct.pack(
        "!IHBB16s16s", 0x60000000, len(ext) + len(udp), nh, 64, SRC4 * 4, DST4 * 4
    ) + (ext + udp)


ETH_V4_TCP = MAC1 + MAC2 + b"\x08\x00" + _ipv4_tcp(bytes(range(200)), b"\x01\x01\x01\x00")
ETH_VLAN_V6_UDP = (
    MAC2 + MAC1 + b"\x81\x00\x00\x05\x86\xdd" + _ipv6_udp(b"q" * 60, bytes([17, 0]) + bytes(6))
)
GENEVE_OPTS = (
    bytes([(4 + 2) & 0x3F, 0x40])
    + b"\x65\x58"
    + (42 << 8).to_bytes(4, "big")
    + geneve.header(42, 1400)[8:]  # the MSS option (2 words)
    + b"\x01\x02\x81\x03"
    + bytes(12)  # a critical option with 3 words of data
)
SCLP_SEGMENTS = [
    bytes(s)
    for s in Segmenter(ident_start=5)
    .segment_payload(vxlan.header(42) + ETH_V4_TCP, 50000, 4789, 100)
    .segments()[:3]
]
STT_SEGMENTS = [
    bytes(s)
    for s in SttSegmenter(ident_start=9)
    .segment_frame(
        stt.encode(stt.SttHeader(context_id=42, mss=1400)) + ETH_V4_TCP, 1, 100, SRC4, DST4
    )
    .segments()[:2]
]
SEEDS = [
    ETH_V4_TCP,
    ETH_VLAN_V6_UDP,
    ETH_V4_TCP[14:],
    ETH_VLAN_V6_UDP[18:],
    vxlan.header(42) + ETH_V4_TCP,
    geneve.header(42) + ETH_V4_TCP,
    GENEVE_OPTS + ETH_VLAN_V6_UDP,
    nvgre.header(42, 7) + ETH_V4_TCP,
    stt.encode(
        stt.SttHeader(context_id=42, flags=stt.SttFlags.CSUM_PARTIAL, mss=1400, l4_offset=34)
    )
    + ETH_V4_TCP,
    *SCLP_SEGMENTS,
    *STT_SEGMENTS,
    struct.pack("<BBHHHHH", 1, 1, 66, 1448, 34, 16, 1) + ETH_V4_TCP,  # virtio_net_hdr (12)
    struct.pack("!HHHH", 4000, 4789, 30, 0) + bytes(22),  # UDP
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A seed with a few bytes overwritten, maybe cut short, maybe extended."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    data += draw(st.binary(max_size=12))
    return bytes(data)


packets = st.one_of(st.binary(max_size=200), mutated())
as_buffer = st.sampled_from([bytes, bytearray, memoryview])


@pytest.mark.parametrize("name", sorted(TARGETS))
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=packets, kind=as_buffer)
def test_parser_returns_or_raises_malformed(name: str, data: bytes, kind: type) -> None:
    try:
        TARGETS[name](kind(data))
    except MalformedPacket as exc:
        assert isinstance(exc.reason, DropReason)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_valid_seed_of_its_kind_parses(name: str) -> None:
    """The seeds really are valid packets: every target accepts at least one, so
    the mutations above start from packets that reach its deeper checks."""
    accepted = 0
    for seed in SEEDS:
        try:
            TARGETS[name](seed)
        except MalformedPacket:
            continue
        accepted += 1
    assert accepted, name


# -- reassemblers: conflicting versions are never spliced -------------------------------

A, B = b"\x0a\x4d\x00\x02", b"\x0a\x4d\x00\x01"


def _sclp_segments(payload: bytes, seg_size: int, ident: int) -> list[bytes]:
    batch = Segmenter(ident_start=ident).segment_payload(payload, 50000, 4789, seg_size)
    return [bytes(s) for s in batch.segments()]


@st.composite
def conflicting_versions(draw: st.DrawFn) -> tuple[bytes, bytes, int, int]:
    n = draw(st.integers(2, 5000))
    rng = random.Random(draw(st.integers(0, 2**32)))
    a = rng.randbytes(n)
    if draw(st.booleans()):  # same length, some bytes differ
        b = bytearray(a)
        for _ in range(draw(st.integers(1, 3))):
            b[rng.randrange(n)] ^= rng.randrange(1, 256)
        b = bytes(b)
    else:  # another length altogether
        b = rng.randbytes(draw(st.integers(1, 5000)))
    return a, b, draw(st.integers(1, 1500)), draw(st.integers(1, 1500))


def _sclp_agrees(payload: bytes, segment: bytes) -> bool:
    """``segment`` lies inside ``payload`` (tail coordinates: Remaining counts from
    the end), carries the same bytes there, and if it is a first segment, states
    the same total."""
    hdr = sclp.decode(segment)
    data = segment[SCLP_HLEN:]
    n, lo, hi = len(payload), hdr.remaining, hdr.remaining + len(data)
    if hi > n or (hdr.first and hi != n):
        return False
    return payload[n - hi : n - lo] == data


def _stt_agrees(frame: bytes, segment: bytes) -> bool:
    seq = struct.unpack_from("!I", segment, 4)[0]
    data = segment[20:]
    total, offset = seq >> 16, seq & 0xFFFF
    return total == len(frame) and frame[offset : offset + len(data)] == data


class Lifetimes:
    """Follows the one key of a test through the table: the segments fed while its
    entry lived (or the one segment that was a whole payload), so that a completed
    payload can be checked against every one of them."""

    def __init__(self) -> None:
        self.current: list[bytes] = []

    def fed(self, segment: bytes, entries_before: int, entries_after: int, done: bool) -> None:
        if entries_before == 0 and (entries_after or done):
            self.current = [segment]  # an entry was created, or a whole payload came
        elif entries_before:
            self.current.append(segment)


@settings(max_examples=150, deadline=None)
@given(
    versions=conflicting_versions(),
    order=st.randoms(use_true_random=False),
    loss=st.floats(0, 0.3),
    max_bytes=st.sampled_from([6000, 70000, 1 << 20]),
)
def test_sclp_reassembler_never_splices_conflicting_bytes(
    versions: tuple[bytes, bytes, int, int], order: random.Random, loss: float, max_bytes: int
) -> None:
    """Two versions of one payload (same ID), cut differently, mixed, duplicated and
    partly lost.  A delivered payload may combine pieces of both where they do not
    overlap (nothing can tell them apart: that is what the inner checksums are
    for), but it agrees with *every* segment fed while it was being put together: a
    segment with conflicting bytes always discards the payload."""
    a, b, seg_a, seg_b = versions
    segments = _sclp_segments(a, seg_a, 77) + _sclp_segments(b, seg_b, 77)
    segments += [s for s in segments if order.random() < 0.2]  # duplicates
    segments = [s for s in segments if order.random() >= loss]
    order.shuffle(segments)
    r = Reassembler(Carrier.IP, timeout=5.0, max_bytes=max_bytes, max_entries=4)
    life = Lifetimes()
    now = 0.0
    for segment in segments:
        now += 0.001
        before = r.entries
        done = r.add_segment(A, B, segment, now)
        life.fed(segment, before, r.entries, done is not None)
        if done is not None:
            payload = bytes(done.payload)
            assert all(_sclp_agrees(payload, s) for s in life.current)
        assert 0 <= r.bytes_held <= max_bytes and r.entries <= 4
    r.expire(now + 10.0)
    assert r.bytes_held == 0 and r.entries == 0


@settings(max_examples=100, deadline=None)
@given(versions=conflicting_versions(), order=st.randoms(use_true_random=False))
def test_stt_reassembler_never_splices_conflicting_bytes(
    versions: tuple[bytes, bytes, int, int], order: random.Random
) -> None:
    a, b, mss_a, mss_b = versions
    head = stt.encode(stt.SttHeader(context_id=42))
    segments = []
    for frame, mss in ((head + a, mss_a), (head + b, mss_b)):
        batch = SttSegmenter().segment_frame(frame, 1, mss, A, B, ident=99)
        segments += [bytes(s) for s in batch.segments()]
    segments += [s for s in segments if order.random() < 0.2]
    order.shuffle(segments)
    r = SttReassembler(timeout=5.0, max_bytes=300000, max_entries=4)
    life = Lifetimes()
    for i, segment in enumerate(segments):
        before = r.entries
        frame = r.add_segment(A, B, segment, i * 0.001)
        life.fed(segment, before, r.entries, frame is not None)
        if frame is not None:
            assert all(_stt_agrees(frame, s) for s in life.current)
        assert 0 <= r.bytes_held <= 300000 and r.entries <= 4
    r.expire(100.0)
    assert r.bytes_held == 0 and r.entries == 0


def _with_sclp_checksum(segment: bytes) -> bytes:
    """``segment`` with a correct SCLP checksum, whatever its fields say."""
    if len(segment) < SCLP_HLEN:
        return segment
    hdr = sclp.decode(segment)
    hdr = replace(hdr, checksum=sclp.compute_checksum(hdr, segment[SCLP_HLEN:]))
    return sclp.encode(hdr) + segment[SCLP_HLEN:]


@st.composite
def hostile_sclp(draw: st.DrawFn) -> bytes:
    """Valid-checksum segments with arbitrary IDs, flags, Remaining and lengths."""
    hdr = SclpHeader(
        draw(st.integers(0, 0xFFFF)),
        draw(st.sampled_from([4789, 6081, 1])),
        draw(st.integers(0, 3)),
        draw(st.booleans()),
        draw(st.one_of(st.integers(0, 0xFFFF), st.sampled_from([0, 1, 0xFFFF, 65000]))),
    )
    data = draw(st.one_of(st.binary(max_size=3), st.sampled_from([b"", b"\0" * 1400])))
    return _with_sclp_checksum(sclp.encode(hdr) + data)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(hostile_sclp(), st.floats(0, 0.5)), max_size=60))
def test_sclp_reassembler_caps_hold_under_hostile_segments(
    inputs: list[tuple[bytes, float]],
) -> None:
    r = Reassembler(Carrier.IP, timeout=1.0, max_bytes=200000, max_entries=3)
    now = 0.0
    for segment, dt in inputs:
        now += dt
        r.add_segment(A, B, segment, now)
        assert 0 <= r.bytes_held <= 200000 and r.entries <= 3
    r.expire(now + 2.0)
    assert r.bytes_held == 0 and r.entries == 0


# -- the endpoint's receive steps --------------------------------------------------------

PEER = "10.77.0.2"
PROTOCOLS = ("vxlan", "geneve", "nvgre", "stt", "vxlan-sclp", "geneve-sclp")


@pytest.fixture(scope="module")
def dp() -> DataPath:
    """One data path serving one VNI of every protocol (VNI 1..6), peer ``PEER``."""
    text = 'name = "fuzz"\n[underlay]\nlocal = "10.77.0.1"\n[limits]\nreasm_max_bytes = 300000\n'
    for vni, protocol in enumerate(PROTOCOLS, 1):
        text += f'[[network]]\nvni = {vni}\nprotocol = "{protocol}"\ntap = "t{vni}"\n'
        text += f'mtu = 576\npeers = ["{PEER}"]\n'
    return DataPath(parse_config(text), 1500)


class _OneBatch:
    """A receive adapter stand-in (UdpSocket, RawIpSocket or PacketTap) that returns
    one batch of one packet, then nothing: the runner's handlers read it as in
    production."""

    def __init__(self, batch: tuple[Any, ...]) -> None:
        self.batch: tuple[Any, ...] | None = batch

    def recv_batch(self) -> tuple[Any, ...]:
        batch, self.batch = self.batch, None
        assert batch is not None, "a short batch means the queue is empty: no second read"
        return batch


@contextlib.contextmanager
def _runner(dp: DataPath) -> Iterator[Runner]:
    """A runner whose VM ports are datagram socket pairs (what it writes, a frame per
    ``writev``, is read back and checked: a 10-byte virtio header, then the frame)."""
    runner = Runner(dp, UnderlaySender({}, {}, Counter()), lambda: 0.0)
    pairs = {name: socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for name in dp.ports}
    try:
        for name, (mine, _) in pairs.items():
            mine.setblocking(False)
            dp.ports[name].fd = mine.fileno()
        yield runner
        for _, theirs in pairs.values():
            theirs.setblocking(False)
            while True:
                try:
                    written = theirs.recv(1 << 17)
                except BlockingIOError:
                    break
                assert len(written) >= VNET_HDR_LEN + 14
    finally:
        runner.close()
        for mine, theirs in pairs.values():
            mine.close()
            theirs.close()


def _with_tcp_checksum(segment: bytes) -> bytes:
    if len(segment) < 20:
        return segment
    seg = bytearray(segment)
    seg[16:18] = b"\0\0"
    csum = internet_checksum(
        seg, pseudo_sum_for(ipv4_packed(PEER), ipv4_packed("10.77.0.1"), len(seg))
    )
    seg[16:18] = csum.to_bytes(2, "big")
    return bytes(seg)


def ipv4_packed(address: str) -> bytes:
    return socket.inet_aton(address)


@st.composite
def inner_frames(draw: st.DrawFn) -> bytes:
    """Ethernet frames built field by field: VLAN tags, IPv4 with options or IPv6 with
    extension headers of any length, TCP/UDP/other with any data offset, any size."""
    frame = MAC1 + MAC2 + b"\x81\x00\x00\x05" * draw(st.integers(0, 2))
    proto = draw(st.sampled_from([6, 6, 17, 1]))
    if draw(st.booleans()):
        ihl = draw(st.integers(5, 15))
        frag = draw(st.sampled_from([0, 0, 0x2000, 0x0010]))
        ip = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 0, 1, frag, 64, proto, 0, SRC4, DST4)
        frame += b"\x08\x00" + ip + bytes(4 * ihl - 20)
    else:
        exts = b""
        nh = proto
        for length in draw(st.lists(st.integers(0, 255), max_size=3)):
            exts = bytes([nh, length]) + bytes((length + 1) * 8 - 2) + exts
            nh = 0
        ip6 = struct.pack("!IHBB16s16s", 0x60000000, 0, nh, 64, SRC4 * 4, DST4 * 4)
        frame += b"\x86\xdd" + ip6 + exts
    if proto == 6:
        doff = draw(st.integers(5, 15))
        frame += struct.pack("!HHIIBBHHH", 1, 2, 3, 4, doff << 4, 0x10, 9, 0, 0)
        frame += bytes(4 * doff - 20)
    return frame + bytes(draw(st.integers(0, 4000)))


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    step=st.sampled_from(
        ["udp_sclp", "udp_vxlan", "udp_geneve", "sclp_segment", "sclp_payload", "gre", "stt"]
        + ["stt_ip", "raw_ip"]
        + ["deliver"] * 3
    ),
    data=st.one_of(packets, inner_frames()),
    big=st.sampled_from([0, 0, 100, 3000]),
    vni=st.integers(0, 8),
    mss=st.one_of(st.just(0), st.integers(1, 0xFFFF)),
)
def test_endpoint_receive_steps_never_raise(
    dp: DataPath,
    step: str,
    data: bytes,
    big: int,
    vni: int,
    mss: int,
) -> None:
    """Every receive shape of the runner and the data path, with what a socket could
    hand them: the data path counts, it never raises."""
    with _runner(dp) as runner:
        now = 0.0
        view = memoryview(data + bytes(big))  # large enough for the GSO delivery path too
        if step.startswith("udp_"):
            # A UDP read: one datagram, or a GRO buffer cut every ``big % 1500`` bytes.
            channel = {"sclp": Channel.SCLP, "vxlan": Channel.VXLAN, "geneve": Channel.GENEVE}
            size = len(data)
            seg = (big % 1500 or size) if size else 0
            sock = _OneBatch(([view[:size]], [size], [(PEER, 40000)], [seg]))
            runner._on_udp(channel[step[4:]], sock, 64, now)  # type: ignore[arg-type]
        elif step in ("stt_ip", "raw_ip"):
            # A packet-socket slot the fast path could not vouch for (offset -1), or a
            # raw socket's IPv4 packet with the header length it claims.
            packet = bytearray(view)
            if len(packet) >= 24:  # make it reach the STT step often
                packet[22:24] = stt.STT_PORT.to_bytes(2, "big")
            offset = -1 if step == "stt_ip" or not packet else (packet[0] & 0x0F) * 4
            if offset > len(packet):
                offset = -1
            key = source_key(PEER)
            sock = _OneBatch((1, [memoryview(packet)], [len(packet)], [key], [offset], [0xFFFF]))
            runner._on_raw(Channel.STT if step == "stt_ip" else Channel.SCLP, sock, 64, now)  # type: ignore[arg-type]
        elif step == "sclp_segment":
            segment = memoryview(_with_sclp_checksum(bytes(view)))
            runner._deliver(dp.from_ip(Channel.SCLP, PEER, segment, now, None))
        elif step == "sclp_payload":  # a whole payload in one segment, to any SCLP port
            dport = (4789, 6081, 99)[vni % 3]
            batch = Segmenter().segment_payload(view, 50000, dport, 65000)
            for segment in batch.segments():
                runner._deliver(dp.from_ip(Channel.SCLP, PEER, segment, now, ones_sum(segment)))
        elif step == "gre":
            runner._deliver(dp.from_ip(Channel.GRE, PEER, view, now, None))
        elif step == "stt":
            segment = bytearray(_with_tcp_checksum(bytes(view)))
            if len(segment) >= 4:
                segment[2:4] = stt.STT_PORT.to_bytes(2, "big")
                segment = bytearray(_with_tcp_checksum(bytes(segment)))
            runner._deliver(dp.from_ip(Channel.STT, PEER, memoryview(segment), now, None))
        else:
            net = dp.networks.get(vni)
            if net is not None:
                out: list[Deliver] = []
                dp._deliver_net(net, PEER, view, mss, now, out)
                runner._deliver(out)
    assert dp.reassembler.bytes_held <= 300000
    assert dp.stt_reassembler.bytes_held <= 300000


# -- the endpoint's transmit step, with the virtio header a kernel would write -----------


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(frame=inner_frames(), vni=st.integers(1, 6), gso=st.booleans(), mss=st.integers(1, 9000))
def test_endpoint_transmit_step_counts_and_shapes_every_frame(
    dp: DataPath, frame: bytes, vni: int, gso: bool, mss: int
) -> None:
    """A frame read from a TAP with the virtio header the kernel writes for it (the
    checksum start at the L4 header, GSO only for TCP), through the production
    transmit shapes (software TSO + one GSO buffer, SCLP segments in one buffer,
    STT segments per peer): ``from_vm`` never raises, and every send it returns is
    whole packets at a stride that fits the underlay MTU."""
    frame = frame[:MAX_VM_FRAME]
    try:
        info = parse_frame(frame)
    except MalformedPacket:
        return
    if info.l4_offset < 0 or info.ip_protocol not in (6, 17):
        return
    tcp = info.ip_protocol == 6
    gso_type = (1 if info.ip_version == 4 else 4) if tcp and gso else 0
    l4_len = info.tcp_header_len or 8
    csum_field = 16 if tcp else 6
    if info.l4_offset + csum_field + 2 > len(frame):
        return
    buf = bytearray(FRAME_BUF)
    VNET_HDR.pack_into(
        buf,
        HEADROOM - VNET_HDR_LEN,
        1,
        gso_type,
        info.l4_offset + l4_len,
        mss if gso_type else 0,
        info.l4_offset,
        csum_field,
    )
    buf[HEADROOM : HEADROOM + len(frame)] = frame
    net = dp.networks[vni]
    before = sum(net.counters.values())
    sends = dp.from_vm(net.ports[0], buf, VNET_HDR_LEN + len(frame), 0.0)
    assert sum(net.counters.values()) > before  # counted as sent or as dropped
    for s in sends:
        if isinstance(s, Deliver):  # too big for the VM MTU: ICMP back to the sender
            assert s.port is net.ports[0]
            reply = parse_frame(bytes(s.frame))
            assert (reply.ip_version, reply.ip_protocol) in ((4, 1), (6, 58))
            continue
        assert s.packets == -(-len(s.data) // s.stride)
        # Every packet fits the path: the endpoint never sends outer fragments.
        udp = 8 if s.channel in (Channel.VXLAN, Channel.GENEVE) else 0  # SCLP: IP carrier
        assert s.stride + 20 + udp <= 1500
