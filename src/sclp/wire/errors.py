"""The one exception the wire codecs raise, and the reasons packets are dropped.

Every decoder in :mod:`sclp.wire` raises :class:`MalformedPacket` and nothing else
on bad input; the data path catches it per packet, counts ``exc.reason`` and goes on
with the batch.  The engines (reassembler, FDB) count the same :class:`DropReason`
values, so one enum names every way a packet can be lost.
"""

from __future__ import annotations

import enum


class DropReason(enum.Enum):
    """Why a packet or a partially reassembled payload was discarded.

    The value is the counter name (``drop_<value>``) used in stats output.
    """

    MALFORMED = "malformed"  # generic decode failure (bad field value)
    TOO_SHORT = "too_short"  # truncated header or payload
    BAD_CHECKSUM = "bad_checksum"
    BAD_VERSION = "bad_version"  # unknown IP version / tunnel version
    BAD_TUNNEL_HEADER = "bad_tunnel_header"  # VXLAN/Geneve/GRE/STT header invalid
    UNKNOWN_PORT = "unknown_port"  # SCLP/UDP destination port with no tunnel
    OVERSIZE = "oversize"  # payload larger than the protocol allows
    TIMEOUT = "timeout"  # reassembly not completed in time
    OVERLAP = "overlap"  # overlapping segments with conflicting bytes
    INCONSISTENT_TOTAL = "inconsistent_total"  # segments disagree on the total length
    PAST_END = "past_end"  # a segment runs past the payload's total length
    EVICTED = "evicted"  # reassembly entry evicted to respect the memory caps
    NOT_PEER = "not_peer"  # outer source address is not a configured peer
    UNKNOWN_VNI = "unknown_vni"  # tunnel header names a VNI we do not serve
    NO_ROUTE = "no_route"  # nowhere to send the frame
    TOO_BIG = "too_big"  # a VM frame larger than its network carries (ICMP sent back)
    # What only the I/O layer sees, counted by the endpoint's runner:
    TX_BUSY = "tx_busy"  # underlay socket buffer full (EAGAIN): packets not sent
    TX_ERROR = "tx_error"  # underlay send failed otherwise (e.g. EMSGSIZE)
    TX_NEIGH = "tx_neigh"  # ENOBUFS: no neighbour entry could be made (table full)
    TX_UNREACHABLE = "tx_unreachable"  # the kernel refused: no route, host unreachable
    TAP_BUSY = "tap_busy"  # the VM's queue full (EAGAIN): frame not delivered
    TAP_ERROR = "tap_error"  # the VM's port refused the frame (e.g. EINVAL, EIO)

    @property
    def counter(self) -> str:
        return f"drop_{self.value}"


class MalformedPacket(Exception):  # noqa: N818 - the name states what was received
    """A packet could not be decoded; ``reason`` says why (for the drop counters)."""

    def __init__(self, reason: DropReason, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail
