"""The Linux kernel ABI numbers the I/O adapters use, in one place.

Python's :mod:`socket` lacks most of these (or has them only on some builds), so they
are written out here, grouped by the uapi header that defines them; every module in
:mod:`sclp.io` imports them from here and none defines its own.  Values are for
x86-64 / arm64 Linux (``asm-generic`` numbering); the ioctl numbers were checked
against ``_IOW('T', n, int)`` compiled with the system headers.
"""

from __future__ import annotations

from typing import Final

# -- IP protocol numbers (include/uapi/linux/in.h; IANA): defined once, in the wire layer
from sclp.wire.ipproto import IPPROTO_GRE as IPPROTO_GRE
from sclp.wire.ipproto import IPPROTO_SCLP as IPPROTO_SCLP
from sclp.wire.ipproto import IPPROTO_TCP as IPPROTO_TCP
from sclp.wire.ipproto import IPPROTO_UDP as IPPROTO_UDP

# -- include/uapi/linux/in.h: IPv4 socket options ----------------------------------------
IP_MTU_DISCOVER: Final = 10
IP_PMTUDISC_DONT: Final = 0  # never set DF: the kernel may fragment
IP_PMTUDISC_DO: Final = 2  # always set DF: too big for the path MTU = EMSGSIZE

# -- include/uapi/linux/in6.h: IPv6 socket options ---------------------------------------
IPV6_MTU_DISCOVER: Final = 23
IPV6_PMTUDISC_DONT: Final = 0
IPV6_PMTUDISC_DO: Final = 2

# -- include/uapi/asm-generic/socket.h: SOL_SOCKET options -------------------------------
SO_NO_CHECK: Final = 11
SO_ATTACH_FILTER: Final = 26
SO_SNDBUFFORCE: Final = 32  # like SO_SNDBUF, past net.core.wmem_max (CAP_NET_ADMIN)
SO_RCVBUFFORCE: Final = 33

# -- include/linux/socket.h (glibc bits/socket.h): levels and message flags --------------
SOL_UDP: Final = 17
SOL_PACKET: Final = 263
MSG_TRUNC: Final = 0x20
MSG_DONTWAIT: Final = 0x40

# -- include/uapi/linux/udp.h: UDP socket options (level SOL_UDP) ------------------------
UDP_SEGMENT: Final = 103  # GSO: cmsg or option with the segment size (Linux 4.18)
UDP_GRO: Final = 104  # receive coalescing; a cmsg gives the segment size (Linux 5.0)

# -- include/uapi/linux/if_ether.h: Ethernet protocol ids --------------------------------
ETH_P_ALL: Final = 0x0003

# -- include/uapi/linux/if_packet.h: packet socket options (level SOL_PACKET) ------------
PACKET_RX_RING: Final = 5  # struct tpacket_req: a receive ring mmapped by the reader
PACKET_STATISTICS: Final = 6  # struct tpacket_stats {tp_packets, tp_drops}; reading resets
PACKET_VERSION: Final = 10
PACKET_VNET_HDR: Final = 15  # a virtio_net_hdr before each frame read and written
PACKET_IGNORE_OUTGOING: Final = 23  # Linux 4.20
TPACKET_V2: Final = 1  # enum tpacket_versions: fixed-size frames, struct tpacket2_hdr
TPACKET_ALIGNMENT: Final = 16
TP_STATUS_KERNEL: Final = 0  # rx ring frame status: the kernel's to fill
TP_STATUS_USER: Final = 1 << 0  # filled, the reader's until it writes TP_STATUS_KERNEL
TP_STATUS_COPY: Final = 1 << 1  # larger than the frame: truncated to it
TP_STATUS_LOSING: Final = 1 << 2  # the ring was full for some packets (tp_drops)
PACKET_TX_RING: Final = 13  # struct tpacket_req: a transmit ring mmapped by the sender
PACKET_LOSS: Final = 14  # tx ring: skip a malformed frame instead of stopping at it
PACKET_QDISC_BYPASS: Final = 20  # tx: straight to the driver's xmit, no qdisc (Linux 3.14)
TPACKET2_HDRLEN: Final = 52  # TPACKET_ALIGN(sizeof(struct tpacket2_hdr)) + sockaddr_ll
SOCKADDR_LL_LEN: Final = 20  # sizeof(struct sockaddr_ll)
TP_STATUS_AVAILABLE: Final = 0  # tx ring frame status: the sender's to fill
TP_STATUS_SEND_REQUEST: Final = 1 << 0  # filled: the kernel sends it at the next send()
TP_STATUS_SENDING: Final = 1 << 1  # handed to the driver, not yet freed
TP_STATUS_WRONG_FORMAT: Final = 1 << 2  # refused (without PACKET_LOSS the ring stops there)
ARPHRD_ETHER: Final = 1  # include/uapi/linux/if_arp.h: Ethernet device type
ETH_P_IP: Final = 0x0800

# -- include/uapi/linux/filter.h, bpf_common.h: classic BPF opcodes ----------------------
BPF_LD_B_ABS: Final = 0x30  # A = byte at [k]
BPF_LD_H_ABS: Final = 0x28  # A = half-word at [k]
BPF_LD_W_ABS: Final = 0x20  # A = word at [k]
BPF_LDX_B_MSH: Final = 0xB1  # X = 4 * ([k] & 0xF)
BPF_LD_H_IND: Final = 0x48  # A = half-word at [X + k]
BPF_ALU_AND_K: Final = 0x54  # A &= k
BPF_JMP_JEQ_K: Final = 0x15  # if A == k goto +jt else +jf
BPF_JMP_JSET_K: Final = 0x45  # if A & k goto +jt else +jf
BPF_RET_K: Final = 0x06  # accept k bytes (0: drop)
BPF_MAXINSNS: Final = 4096

# -- include/uapi/linux/if_tun.h: TUN/TAP ioctls, ifr_flags, offloads --------------------
# ioctl numbers: _IOW('T', nr, int) = (1 << 30) | (4 << 16) | (ord('T') << 8) | nr.
TUNSETIFF: Final = 0x400454CA  # _IOW('T', 202, int)
TUNSETOFFLOAD: Final = 0x400454D0  # _IOW('T', 208, unsigned int)
TUNGETIFF: Final = 0x800454D2  # _IOR('T', 210, unsigned int)
TUNSETVNETHDRSZ: Final = 0x400454D8  # _IOW('T', 216, int)
IFF_TUN: Final = 0x0001
IFF_TAP: Final = 0x0002
IFF_MULTI_QUEUE: Final = 0x0100
IFF_NO_PI: Final = 0x1000
IFF_VNET_HDR: Final = 0x4000
TUN_F_CSUM: Final = 0x01
TUN_F_TSO4: Final = 0x02
TUN_F_TSO6: Final = 0x04
TUN_F_TSO_ECN: Final = 0x08
TUN_F_UFO: Final = 0x10
TUN_F_USO4: Final = 0x20
TUN_F_USO6: Final = 0x40

# -- include/uapi/linux/if.h -------------------------------------------------------------
IFNAMSIZ: Final = 16  # including the terminating NUL: names have at most 15 bytes

# -- include/uapi/linux/sched.h ----------------------------------------------------------
CLONE_NEWNET: Final = 0x40000000

# -- include/uapi/linux/neighbour.h ------------------------------------------------------
NUD_PERMANENT: Final = 0x80
