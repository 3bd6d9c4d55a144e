"""A flood of first segments, each of a new payload: run as a script in the hostile
namespace (``python flood.py MODE SRC DST SECONDS``), it prints one JSON line with
what it sent.

Every packet opens a new reassembly entry if the endpoint lets it: a first segment
(SCLP: F=1; STT: offset 0) of a distinct packet ID announcing a payload of ~64 KB
of which it carries 64 bytes.  Checksums are correct (updated incrementally for the
changing ID), so the packets get past every check before the table.

MODE: ``sclp-ip`` (IP protocol 234), ``sclp-udp`` (UDP to port 7234, SCLP checksum
0 as the carrier allows) or ``stt`` (TCP to port 7471).  Standard library only, so
that it starts fast and costs as little CPU as a Python sender can.
"""

from __future__ import annotations

import json
import random
import socket
import struct
import sys
import time

DATA = bytes(range(64))
SCLP_TOTAL = 65_464  # data + Remaining: a ~64 KB payload
STT_TOTAL = 65_000


def ones_sum(data: bytes, start: int = 0) -> int:
    if len(data) % 2:
        data += b"\0"
    total = start + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def fold(value: int) -> int:
    while value >> 16:
        value = (value & 0xFFFF) + (value >> 16)
    return value


def main() -> None:
    mode, src, dst, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    ident = random.getrandbits(30)
    if mode == "stt":
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
        addr: tuple[str, int] = (dst, 0)
        packet = bytearray(
            struct.pack("!HHIIBBHHH", 50000, 7471, STT_TOTAL << 16, 0, 5 << 4, 0x10, 65535, 0, 0)
            + DATA
        )
        pseudo = socket.inet_aton(src) + socket.inet_aton(dst)
        pseudo += struct.pack("!BBH", 0, 6, len(packet))
        base = ones_sum(pseudo + bytes(packet))  # ack (the ID) = 0, checksum = 0
        id_at, csum_at = 8, 16
    else:
        remaining = SCLP_TOTAL - len(DATA)
        packet = bytearray(struct.pack("!HHIHH", 50000, 4789, 1, remaining, 0) + DATA)
        base = ones_sum(bytes(packet)) - 1  # word (ID << 1 | F) = 0, checksum = 0
        id_at, csum_at = 4, 10
        if mode == "sclp-udp":
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            addr = (dst, 7234)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, 234)
            addr = (dst, 0)
    sock.bind((src, 0))
    sent = errors = 0
    pack_id = struct.Struct("!I").pack_into
    pack_csum = struct.Struct("!H").pack_into
    started = time.monotonic()
    deadline = started + seconds
    while True:
        for _ in range(256):
            ident = (ident + 1) & 0x3FFFFFFF
            word = ident if mode == "stt" else (ident << 1) | 1
            pack_id(packet, id_at, word)
            if mode == "sclp-udp":
                pack_csum(packet, csum_at, 0)
            else:
                csum = ~fold(base + (word >> 16) + (word & 0xFFFF)) & 0xFFFF
                pack_csum(packet, csum_at, csum or (0 if mode == "stt" else 0xFFFF))
            try:
                sock.sendto(packet, addr)
                sent += 1
            except OSError:
                errors += 1
        if time.monotonic() >= deadline:
            break
    elapsed = time.monotonic() - started
    print(json.dumps({"sent": sent, "errors": errors, "seconds": round(elapsed, 3)}), flush=True)


if __name__ == "__main__":
    main()
