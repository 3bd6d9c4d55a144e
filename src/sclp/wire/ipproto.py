"""IP protocol numbers (IPv4 ``protocol`` / IPv6 ``next header``) the tunnels use.

Values from the IANA "Assigned Internet Protocol Numbers" registry; SCLP's 234 is not
IANA-assigned, it is what the original SCLP implementation uses (sclp-spec §1).
"""

from __future__ import annotations

from typing import Final

IPPROTO_HOPOPTS: Final = 0  # IPv6 Hop-by-Hop Options (RFC 8200 §4.3)
IPPROTO_ICMP: Final = 1
IPPROTO_TCP: Final = 6
IPPROTO_UDP: Final = 17
IPPROTO_ROUTING: Final = 43  # IPv6 Routing header (RFC 8200 §4.4)
IPPROTO_FRAGMENT: Final = 44  # IPv6 Fragment header (RFC 8200 §4.5)
IPPROTO_GRE: Final = 47
IPPROTO_ICMPV6: Final = 58
IPPROTO_NONE: Final = 59  # IPv6 No Next Header
IPPROTO_DSTOPTS: Final = 60  # IPv6 Destination Options (RFC 8200 §4.6)
IPPROTO_SCLP: Final = 234
