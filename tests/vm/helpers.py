"""Shared pieces of the guest tests: a SHA-256-checked TCP transfer between two
guests (busybox ``nc`` and ``sha256sum`` inside them), the guest NIC's counters and
offloads."""

from __future__ import annotations

import re

from sclp.lab.guest import Guest

TRANSFER_PORT = 9000


def offloads(guest: Guest) -> dict[str, str]:
    """``ethtool -k eth0`` inside the guest: feature name -> "on"/"off"."""
    shown = guest.run("ethtool -k eth0", timeout=10).output
    return dict(re.findall(r"^([a-z-]+): (on|off)", shown, re.M))


def rx_counters(guest: Guest) -> tuple[int, int]:
    """(rx_packets, rx_bytes) of the guest's ``eth0``: the virtio-net driver counts
    each buffer chain the host hands it as one packet, before the guest's GRO, so
    one GSO frame from the host is one packet of up to 64 KB here."""
    out = guest.run(
        "cat /sys/class/net/eth0/statistics/rx_packets /sys/class/net/eth0/statistics/rx_bytes",
        timeout=10,
    ).output.split()
    return int(out[0]), int(out[1])


def transfer(src: Guest, dst: Guest, dst_addr: str, size: int, timeout: float = 60.0) -> None:
    """Send ``size`` random bytes over one TCP connection from ``src`` to ``dst`` and
    assert that what arrived has the same SHA-256 (and length) as what was sent."""
    # dd with 64 KiB blocks: busybox head reads /dev/urandom in small pieces, about
    # six times slower under emulation.
    blocks, rest = divmod(size, 65536)
    assert rest == 0, "size must be a multiple of 64 KiB"
    src.run(f"dd if=/dev/urandom of=/tmp/tx bs=65536 count={blocks} 2>/dev/null", timeout=60)
    sent = src.run("sha256sum < /tmp/tx", timeout=60).output.split()[0]
    # The receiver: busybox nc ends at the end of its stdin too, so its stdin is a
    # FIFO held open by a sleep that outlives the transfer; nc ends when the sender
    # closes, and /tmp/rx.done tells the waiting command below.
    dst.run(
        "rm -f /tmp/rx /tmp/rx.done /tmp/rx.hold; mkfifo /tmp/rx.hold; "
        f"(sleep {int(timeout) + 30} > /tmp/rx.hold &) ; "
        f"(nc -l -p {TRANSFER_PORT} < /tmp/rx.hold > /tmp/rx; "
        "echo $? > /tmp/rx.done) >/dev/null 2>&1 &",
        timeout=10,
    )
    dst.run(
        f"i=0; until netstat -ltn | grep -q ':{TRANSFER_PORT} '; do "
        "i=$((i+1)); [ $i -gt 100 ] && exit 1; usleep 50000; done",
        timeout=10,
    )
    src.run(f"nc -w 10 {dst_addr} {TRANSFER_PORT} < /tmp/tx", timeout=timeout)
    dst.run("until [ -e /tmp/rx.done ]; do usleep 50000; done; killall sleep", timeout=20)
    received = dst.run("wc -c < /tmp/rx; sha256sum < /tmp/rx", timeout=60).output.split()
    assert int(received[0]) == size, f"received {received[0]} of {size} bytes"
    assert received[1] == sent, "the received data's SHA-256 differs from the sent data's"


def tcp_in_csum_errors(guest: Guest) -> int:
    """TCP segments the guest's stack dropped for a bad checksum (``InCsumErrors``
    of ``Tcp:`` in ``/proc/net/snmp``)."""
    lines = [
        line.split()
        for line in guest.run("cat /proc/net/snmp", timeout=10).output.splitlines()
        if line.startswith("Tcp:")
    ]
    names, values = lines[0], lines[1]
    return int(values[names.index("InCsumErrors")])
