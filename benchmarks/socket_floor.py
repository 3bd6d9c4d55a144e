"""What the kernel's half of the UDP carrier costs: 64 KB UDP GSO sends and GRO
receives across a veth between two namespaces, CPU seconds per GB.

``sclp bench`` reports every endpoint's CPU per GB as a multiple of four 64 KiB
``memcpy`` copies (:mod:`sclp.lab.bench.floor`).  An endpoint also pays the kernel for
the socket send and receive around two of those copies: segmentation into MTU-sized
skbs, the veth, GRO, system calls.  This script measures exactly that part with no
tunnel code at all: a sender process sending 46 × 1,400-byte segments per
``send`` (``UDP_SEGMENT``) in one namespace and a receiver process reading the
coalesced datagrams (``UDP_GRO``, ``recvmsg_into`` a 64 KiB buffer) in the other,
each reporting its own CPU time (user + system, what ``sclp bench`` reads for the
endpoints) per GB.  Kernel work done in softirq context is charged to whichever
process was running, as it is for the endpoints.  Figures for scale on the machine at
hand, never thresholds.  Needs root (namespaces).

The same send is also measured with ``MSG_ZEROCOPY`` (``SO_ZEROCOPY``, completions
reaped from the error queue), an option one might expect to help the UDP
carrier: the completions say whether the kernel copied after all
(``SO_EE_CODE_ZEROCOPY_COPIED``), which it does for every packet that is delivered to a
local socket, veth peers in other namespaces included.

    sudo python benchmarks/socket_floor.py            # a table
    sudo python benchmarks/socket_floor.py --json     # machine-readable
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
from typing import Any

from sclp.lab.bench.floor import measure_copy_floor

SEGMENT = 1400
SEGMENTS = 46  # 64,400 B per send, what a 64 KB TSO frame becomes
PORT = 9000
ADDRESSES = ("10.98.0.1", "10.98.0.2")

# Each side runs for SECONDS and prints "bytes cpu_seconds".
_RECEIVER = """
import socket, sys, time
seconds = float(sys.argv[1])
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.setsockopt(socket.IPPROTO_UDP, 104, 1)  # UDP_GRO
rx.setsockopt(socket.SOL_SOCKET, 33, 32 << 20)  # SO_RCVBUFFORCE
rx.bind((sys.argv[2], int(sys.argv[3])))
rx.settimeout(10)
buf = memoryview(bytearray(65536))
print("ready", flush=True)
rx.recvmsg_into([buf], 64)  # the first datagram starts the clock
n, cpu, end = 0, time.process_time(), time.monotonic() + seconds
while time.monotonic() < end:
    n += rx.recvmsg_into([buf], 64)[0]
print(n, time.process_time() - cpu, flush=True)
"""
_SENDER = """
import socket, struct, sys, time
seconds, segment, segments = float(sys.argv[1]), int(sys.argv[4]), int(sys.argv[5])
zerocopy = sys.argv[6] == "1"
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
tx.setsockopt(socket.IPPROTO_UDP, 103, segment)  # UDP_SEGMENT
tx.setsockopt(socket.SOL_SOCKET, 32, 8 << 20)  # SO_SNDBUFFORCE
flags = 0
if zerocopy:
    tx.setsockopt(socket.SOL_SOCKET, 60, 1)  # SO_ZEROCOPY
    flags = 0x4000000  # MSG_ZEROCOPY
tx.connect((sys.argv[2], int(sys.argv[3])))
payload = bytes(segment * segments)
done = copied = 0


def reap():
    # Completions: struct sock_extended_err {u32 errno; u8 origin, type, code, pad;
    # u32 info, data}; origin 5 = zerocopy, [info, data] the sends done, code 1 = the
    # kernel copied after all.
    global done, copied
    while True:
        try:
            _, anc, _, _ = tx.recvmsg(0, 256, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        for _, _, data in anc:
            _, origin, _, code, _, lo, hi = struct.unpack_from("=IBBBBII", data)
            if origin == 5:
                done += hi - lo + 1
                copied += (hi - lo + 1) if code & 1 else 0


# One second longer than the receiver, which starts its clock at the first datagram.
n, calls, cpu, end = 0, 0, time.process_time(), time.monotonic() + seconds + 1
while time.monotonic() < end:
    try:
        n += tx.send(payload, flags)
        calls += 1
    except OSError:
        pass
    if zerocopy and calls % 16 == 0:
        reap()
if zerocopy:
    reap()
print(n, time.process_time() - cpu, calls, done, copied, flush=True)
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def measure(seconds: float, zerocopy: bool = False) -> dict[str, Any]:
    tag = secrets.token_hex(3)
    names = (f"sclp-floor-{tag}-a", f"sclp-floor-{tag}-b")
    procs: list[subprocess.Popen[str]] = []
    created: list[str] = []
    try:
        for name in names:
            _ip("netns", "add", name)
            created.append(name)
        link = ["link", "add", "v0", "netns", names[0], "type", "veth", "peer", "name", "v0"]
        _ip(*link, "netns", names[1])
        for name, address in zip(names, ADDRESSES, strict=True):
            _ip("-n", name, "address", "add", f"{address}/24", "dev", "v0")
            _ip("-n", name, "link", "set", "v0", "up")
        common = [str(seconds), ADDRESSES[1], str(PORT)]
        receiver = subprocess.Popen(
            ["ip", "netns", "exec", names[1], sys.executable, "-c", _RECEIVER, *common],
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(receiver)
        assert receiver.stdout is not None
        receiver.stdout.readline()  # "ready"
        # Resolve the neighbour first: a 64 KB send to an unresolved address is queued.
        subprocess.run(
            ["ip", "netns", "exec", names[0], "ping", "-c", "1", "-W", "2", ADDRESSES[1]],
            capture_output=True,
            timeout=10,
            check=False,
        )
        shape = [str(SEGMENT), str(SEGMENTS), "1" if zerocopy else "0"]
        sender = subprocess.Popen(
            ["ip", "netns", "exec", names[0], sys.executable, "-c", _SENDER, *common, *shape],
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(sender)
        sent_out, _ = sender.communicate(timeout=seconds + 30)
        received_out, _ = receiver.communicate(timeout=seconds + 30)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for name in created:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    sent, sender_cpu, calls, completed, copied = sent_out.split()
    received, receiver_cpu = received_out.split()
    sent_gb, received_gb = int(sent) / 1e9, int(received) / 1e9
    return {
        "seconds": seconds,
        "send_bytes": SEGMENT * SEGMENTS,
        "sent_gbps": sent_gb * 8 / seconds,
        "received_gbps": received_gb * 8 / seconds,
        "sender_cpu_s_per_gb_sent": float(sender_cpu) / sent_gb,
        "receiver_cpu_s_per_gb": float(receiver_cpu) / received_gb,
        "both_cpu_s_per_gb": float(sender_cpu) / sent_gb + float(receiver_cpu) / received_gb,
        "zerocopy": zerocopy,
        "sends": int(calls),
        "zerocopy_completed": int(completed),
        "zerocopy_copied": int(copied),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("socket_floor.py builds network namespaces: run it as root", file=sys.stderr)
        return 1
    floor = measure_copy_floor()
    result = {
        "copy_floor": floor.as_json(),
        "udp_gso_gro_over_veth": measure(args.seconds),
        "udp_gso_gro_over_veth_zerocopy": measure(args.seconds, zerocopy=True),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    udp = result["udp_gso_gro_over_veth"]
    zc = result["udp_gso_gro_over_veth_zerocopy"]
    rows = (
        ("copy floor (4 x 64 KiB memcpy)", floor.floor_s_per_gb),
        ("  one 64 KiB memcpy", floor.one_copy_s_per_gb),
        ("UDP GSO send (sender, per GB sent)", udp["sender_cpu_s_per_gb_sent"]),
        ("UDP GRO receive (receiver)", udp["receiver_cpu_s_per_gb"]),
        ("send + receive", udp["both_cpu_s_per_gb"]),
        ("UDP GSO send with MSG_ZEROCOPY (sender)", zc["sender_cpu_s_per_gb_sent"]),
        ("  its send + receive", zc["both_cpu_s_per_gb"]),
    )
    for what, value in rows:
        print(f"{what:40s} {value:.3f} CPU s/GB")
    print(f"({udp['sent_gbps']:.1f} Gbit/s sent, {udp['received_gbps']:.1f} received)")
    print(
        f"MSG_ZEROCOPY: {zc['zerocopy_completed']:,} of {zc['sends']:,} sends completed, "
        f"{zc['zerocopy_copied']:,} of them copied by the kernel after all"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
