"""nftables rules for STT and native SCLP: keep the kernel's IP (and, for STT, TCP)
from seeing or answering the segments the endpoint reads with packet sockets.

Why: STT (draft-davie-stt) looks like TCP to port 7471 but no TCP socket listens
there; native SCLP (IP protocol 234) is served by no kernel protocol, and its raw
socket would get each segment only after IP input (route lookup, netfilter).  Two
rules, each in its own per-endpoint table:

* ``netdev sclp_<name>`` (:func:`install_ingress_drop`, one chain per protocol and
  device, so STT and SCLP share the table): drops the incoming segments at the
  device's ingress hook, before IP and TCP spend any work on them; the endpoint reads
  them with a packet socket, whose ``ETH_P_ALL`` tap runs before that hook
  (:mod:`sclp.io.packet`).
* ``inet sclp_<name>`` (:func:`install_stt_rst_guard`): drops the RST the kernel's
  TCP sends for a segment that did reach it (no socket on 7471) — the whole story
  when the endpoint falls back to reading a raw TCP socket, which gets its copy only
  after the input hook (an input filter would blind it), and belt and braces
  otherwise (a segment on a device without the ingress rule).

One table per endpoint and family, so several endpoints in one namespace never touch
each other's rules; install and removal are each one atomic ``nft -f`` transaction
(``add table`` + ``delete table`` + definition) and both are idempotent.  ``nft`` is
run as a subprocess (nftables' netlink API is not in pyroute2's stable surface); for
a namespace the subprocess is started from a thread switched into it, which the
child inherits.

The same module keeps strangers out of user space: ``inet sclp_<name>_peers``
(:func:`install_peer_filter`) drops, for the endpoint's own underlay ports and
protocols only, packets whose source is not in its peer sets, at the input hook
(before any socket gets them; after IP reassembly) and, for STT read by packet
taps, at the ingress hook of those devices (before the STT ingress drop, which would
otherwise take the strangers' segments uncounted).  One named counter,
``not_peer``, counts them (:func:`peer_filter_drops`); :func:`update_peer_set`
replaces the sets' elements in one transaction.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from typing import Final

from sclp.io.linux import IPPROTO_TCP
from sclp.io.netns import run_in_netns
from sclp.wire.stt import STT_PORT

__all__ = [
    "NftError",
    "ingress_chain_prefix",
    "ingress_drops",
    "install_ingress_drop",
    "install_peer_filter",
    "install_stt_ingress_drop",
    "install_stt_rst_guard",
    "peer_filter_drops",
    "peer_filter_table",
    "peer_set",
    "remove_ingress_drop",
    "remove_peer_filter",
    "remove_stt_ingress_drop",
    "remove_stt_rst_guard",
    "stt_guard_table",
    "stt_ingress_drops",
    "stt_rst_guard_drops",
    "update_peer_set",
]

_NAME_OK = re.compile(r"^[A-Za-z0-9_]{1,40}$")
_IFNAME_OK = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")
_TIMEOUT_S: Final = 10.0


class NftError(RuntimeError):
    """``nft`` is missing or refused a command; the message has its stderr."""


def stt_guard_table(name: str) -> str:
    """The table name for endpoint ``name``: ``sclp_<name>`` (letters, digits and
    ``_``; other characters become ``_``)."""
    cleaned = re.sub(r"[^A-Za-z0-9_]", "_", name)
    if not _NAME_OK.match(cleaned):
        raise ValueError(f"endpoint name {name!r} must have 1-40 characters")
    return f"sclp_{cleaned}"


def _nft(args: list[str], script: str | None, netns: str | None) -> str:
    binary = shutil.which("nft")
    if binary is None:
        raise NftError("the nft command is not installed (Debian package nftables)")
    with run_in_netns(netns):
        result = subprocess.run(
            [binary, *args],
            input=script,
            capture_output=True,
            text=True,
            timeout=_TIMEOUT_S,
            check=False,
        )
    if result.returncode != 0:
        where = "" if netns is None else f" in network namespace {netns!r}"
        raise NftError(f"nft {' '.join(args)} failed{where}: {result.stderr.strip()}")
    return result.stdout


def install_stt_rst_guard(port: int, name: str = "default", *, netns: str | None = None) -> str:
    """Drop the TCP RSTs this namespace would send from local port ``port`` (the STT
    destination port, 7471 by default in the endpoint), counting them.  Replaces an
    earlier guard of the same ``name``.  Returns the table name.  Raises
    :class:`NftError` if ``nft`` is missing or fails."""
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    table = stt_guard_table(name)
    script = (
        f"add table inet {table}\n"
        f"delete table inet {table}\n"
        f"table inet {table} {{\n"
        "  chain output {\n"
        "    type filter hook output priority 0; policy accept;\n"
        f"    tcp sport {port} tcp flags & rst == rst counter drop comment "
        '"sclp: no RST for STT segments"\n'
        "  }\n"
        "}\n"
    )
    _nft(["-f", "-"], script, netns)
    return table


def remove_stt_rst_guard(name: str = "default", *, netns: str | None = None) -> None:
    """Remove the guard of endpoint ``name``; nothing happens if there is none."""
    table = stt_guard_table(name)
    _nft(["-f", "-"], f"add table inet {table}\ndelete table inet {table}\n", netns)


def stt_rst_guard_drops(name: str = "default", *, netns: str | None = None) -> int:
    """How many RSTs the guard of endpoint ``name`` has dropped (0 if no guard)."""
    return _table_counter("inet", stt_guard_table(name), netns)


def ingress_chain_prefix(protocol: int, port: int | None = None) -> str:
    """The name prefix of the ingress-drop chains for IP ``protocol`` (and destination
    ``port``): ``ip<protocol>[_<port>]_in_``, one chain ``<prefix><i>`` per device."""
    return f"ip{protocol}_in_" if port is None else f"ip{protocol}_{port}_in_"


def install_ingress_drop(
    devices: list[str],
    local: str,
    protocol: int,
    port: int | None = None,
    name: str = "default",
    *,
    netns: str | None = None,
) -> str:
    """Drop the IPv4 non-fragments of IP ``protocol`` (TCP or UDP: to destination
    ``port``; None: any) to ``local`` arriving on ``devices`` at the ``netdev``
    ingress hook, before IP sees them; a packet socket bound to ``ETH_P_ALL`` still
    gets them (:mod:`sclp.io.packet`).  Table ``netdev sclp_<name>``, shared by the
    endpoint's protocols: one chain per device (:func:`ingress_chain_prefix`), and an
    install replaces only the chains of the same protocol and port, in one
    transaction.  Returns the table name.  Raises :class:`NftError` if ``nft`` is
    missing or the kernel lacks the netdev family."""
    if not 0 <= protocol < 256:
        raise ValueError(f"IP protocol {protocol} out of range")
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    if not devices:
        raise ValueError("no device to hook")
    for dev in devices:
        if not _IFNAME_OK.match(dev):
            raise ValueError(f"bad interface name {dev!r}")
    address = str(ipaddress.IPv4Address(local))
    table = stt_guard_table(name)
    prefix = ingress_chain_prefix(protocol, port)
    match = f"ip daddr {address} ip protocol {protocol} ip frag-off & 0x3fff == 0"
    if port is not None:
        match += f" th dport {port}"
    chains = "".join(
        f"  chain {prefix}{i} {{\n"
        f'    type filter hook ingress device "{dev}" priority 0; policy accept;\n'
        f'    {match} counter drop comment "sclp: read by a packet socket"\n'
        "  }\n"
        for i, dev in enumerate(devices)
    )
    script = _delete_chains(table, prefix, netns) + f"table netdev {table} {{\n{chains}}}\n"
    _nft(["-f", "-"], script, netns)
    return table


def remove_ingress_drop(
    protocol: int, port: int | None = None, name: str = "default", *, netns: str | None = None
) -> None:
    """Remove endpoint ``name``'s ingress drop of ``protocol`` (and ``port``), and the
    table with it when no other protocol's chain is left; nothing happens if there is
    none."""
    table = stt_guard_table(name)
    prefix = ingress_chain_prefix(protocol, port)
    others = [c for c in _ingress_chains(table, netns) if not c.startswith(prefix)]
    if others:
        script = _delete_chains(table, prefix, netns)
    else:
        script = f"add table netdev {table}\ndelete table netdev {table}\n"
    _nft(["-f", "-"], script, netns)


def ingress_drops(
    protocol: int, port: int | None = None, name: str = "default", *, netns: str | None = None
) -> int:
    """How many packets endpoint ``name``'s ingress drop of ``protocol`` (and
    ``port``) took (0 if there is none)."""
    prefix = ingress_chain_prefix(protocol, port)
    return _table_counter("netdev", stt_guard_table(name), netns, chain_prefix=prefix)


def _ingress_chains(table: str, netns: str | None) -> list[str]:
    """The names of the chains in ``netdev`` ``table`` (none if it is absent)."""
    listing = json.loads(_nft(["-j", "list", "chains", "netdev"], None, netns))
    return [
        str(item["chain"]["name"])
        for item in listing.get("nftables", [])
        if "chain" in item and item["chain"].get("table") == table
    ]


def _delete_chains(table: str, prefix: str, netns: str | None) -> str:
    """A script making sure ``netdev`` ``table`` exists and deleting its chains whose
    names start with ``prefix``."""
    script = f"add table netdev {table}\n"
    for chain in _ingress_chains(table, netns):
        if chain.startswith(prefix):
            script += f"delete chain netdev {table} {chain}\n"
    return script


def install_stt_ingress_drop(
    devices: list[str], local: str, port: int, name: str = "default", *, netns: str | None = None
) -> str:
    """:func:`install_ingress_drop` of the STT segments (IPv4 TCP non-fragments to
    ``local``, destination port ``port``): before IP and TCP see them."""
    return install_ingress_drop(devices, local, IPPROTO_TCP, port, name, netns=netns)


def remove_stt_ingress_drop(
    name: str = "default", port: int = STT_PORT, *, netns: str | None = None
) -> None:
    """Remove the STT ingress drop of endpoint ``name``; nothing happens if there is none."""
    remove_ingress_drop(IPPROTO_TCP, port, name, netns=netns)


def stt_ingress_drops(
    name: str = "default", port: int = STT_PORT, *, netns: str | None = None
) -> int:
    """How many segments the STT ingress drop of endpoint ``name`` took (0 if none)."""
    return ingress_drops(IPPROTO_TCP, port, name, netns=netns)


def _table_counter(family: str, table: str, netns: str | None, *, chain_prefix: str = "") -> int:
    """Sum of the packet counters in ``family`` table ``table`` (0 if it is absent),
    in the chains whose names start with ``chain_prefix``."""
    listing = json.loads(_nft(["-j", "list", "tables"], None, netns))
    names = {
        item["table"]["name"]
        for item in listing.get("nftables", [])
        if "table" in item and item["table"].get("family") == family
    }
    if table not in names:
        return 0
    rules = json.loads(_nft(["-j", "list", "table", family, table], None, netns))
    drops = 0
    for item in rules.get("nftables", []):
        rule = item.get("rule", {})
        if not str(rule.get("chain", "")).startswith(chain_prefix):
            continue
        for expr in rule.get("expr", []):
            counter = expr.get("counter") if isinstance(expr, dict) else None
            if isinstance(counter, dict):
                drops += int(counter.get("packets", 0))
    return drops


# -- the peer filter ----------------------------------------------------------------------

PEER_COUNTER: Final = "not_peer"
PEER_PRIORITY: Final = -10  # before the filter tables at 0, the STT ingress drop among them


def peer_filter_table(name: str) -> str:
    """The peer filter's table for endpoint ``name``: ``sclp_<name>_peers``."""
    return f"{stt_guard_table(name)}_peers"


def _split_peers(peers: Iterable[str]) -> tuple[list[str], list[str]]:
    """Sorted IPv4 and IPv6 addresses of ``peers``; ValueError for anything else."""
    v4: set[str] = set()
    v6: set[str] = set()
    for peer in peers:
        addr = ipaddress.ip_address(peer)
        (v4 if addr.version == 4 else v6).add(str(addr))
    return sorted(v4, key=ipaddress.IPv4Address), sorted(v6, key=ipaddress.IPv6Address)


def _elements(addresses: list[str]) -> str:
    return f"elements = {{ {', '.join(addresses)} }}; " if addresses else ""


def install_peer_filter(
    name: str,
    local: str,
    peers: Iterable[str],
    *,
    udp_ports: Sequence[int] = (),
    protocols: Sequence[int] = (),
    tcp_ports: Sequence[int] = (),
    ingress_devices: Sequence[str] = (),
    ingress_protocols: Sequence[int] = (),
    netns: str | None = None,
) -> str:
    """Drop packets to ``local`` on ``udp_ports`` (UDP destination ports),
    ``protocols`` (IP protocol numbers) and ``tcp_ports`` (TCP destination ports)
    whose source is not one of ``peers``, counting them in the table's ``not_peer``
    counter.  Table ``inet sclp_<name>_peers`` with the sets ``peers4`` and ``peers6``
    and a chain on the input hook (priority -10); for each of ``ingress_devices`` also
    a chain on its ingress hook with the ``tcp_ports`` rule and a rule for
    ``ingress_protocols`` (STT and native SCLP read by packet taps never reach the
    input hook).  Replaces an earlier filter of the same ``name``,
    in one transaction.  Returns the table name.  Raises :class:`NftError` if ``nft``
    is missing or fails."""
    for port in (*udp_ports, *tcp_ports):
        if not 0 < port < 65536:
            raise ValueError(f"port {port} out of range")
    for proto in (*protocols, *ingress_protocols):
        if not 0 <= proto < 256:
            raise ValueError(f"IP protocol {proto} out of range")
    for dev in ingress_devices:
        if not _IFNAME_OK.match(dev):
            raise ValueError(f"bad interface name {dev!r}")
    if not (udp_ports or protocols or tcp_ports):
        raise ValueError("no port or protocol to filter")
    address = ipaddress.ip_address(local)
    ip, peer_set = ("ip", "@peers4") if address.version == 4 else ("ip6", "@peers6")
    v4, v6 = _split_peers(peers)
    table = peer_filter_table(name)
    drop = f'{ip} saddr != {peer_set} counter name "{PEER_COUNTER}" drop comment "sclp: not a peer"'

    def rule(match: str) -> str:
        return f"    {ip} daddr {address} {match} {drop}\n"

    def numbers(values: Sequence[int]) -> str:
        return f"{{ {', '.join(str(v) for v in sorted(set(values)))} }}"

    tcp = rule(f"tcp dport {numbers(tcp_ports)}") if tcp_ports else ""
    rules = (
        (rule(f"udp dport {numbers(udp_ports)}") if udp_ports else "")
        + (rule(f"meta l4proto {numbers(protocols)}") if protocols else "")
        + tcp
    )
    at_ingress = tcp + (
        rule(f"meta l4proto {numbers(ingress_protocols)}") if ingress_protocols else ""
    )
    ingress = "".join(
        f"  chain ingress_{i} {{\n"
        f'    type filter hook ingress device "{dev}" priority {PEER_PRIORITY}; '
        "policy accept;\n"
        f"{at_ingress}"
        "  }\n"
        for i, dev in enumerate(ingress_devices)
        if at_ingress
    )
    script = (
        f"add table inet {table}\n"
        f"delete table inet {table}\n"
        f"table inet {table} {{\n"
        f"  set peers4 {{ type ipv4_addr; {_elements(v4)}}}\n"
        f"  set peers6 {{ type ipv6_addr; {_elements(v6)}}}\n"
        f'  counter {PEER_COUNTER} {{ comment "sclp: packets from non-peers"; }}\n'
        "  chain input {\n"
        f"    type filter hook input priority {PEER_PRIORITY}; policy accept;\n"
        f"{rules}"
        "  }\n"
        f"{ingress}"
        "}\n"
    )
    _nft(["-f", "-"], script, netns)
    return table


def update_peer_set(name: str, peers: Iterable[str], netns: str | None = None) -> None:
    """Make ``peers`` the peer sets of endpoint ``name``'s filter (peers found at run
    time): both sets are emptied and refilled in one transaction, so no packet sees a
    half-updated set.  Raises :class:`NftError` if there is no such filter."""
    v4, v6 = _split_peers(peers)
    table = peer_filter_table(name)
    script = f"flush set inet {table} peers4\nflush set inet {table} peers6\n"
    for set_name, addresses in (("peers4", v4), ("peers6", v6)):
        if addresses:
            script += f"add element inet {table} {set_name} {{ {', '.join(addresses)} }}\n"
    _nft(["-f", "-"], script, netns)


def remove_peer_filter(name: str, *, netns: str | None = None) -> None:
    """Remove the peer filter of endpoint ``name``; nothing happens if there is none."""
    table = peer_filter_table(name)
    _nft(["-f", "-"], f"add table inet {table}\ndelete table inet {table}\n", netns)


def peer_filter_drops(name: str, *, netns: str | None = None) -> int:
    """How many packets the peer filter of endpoint ``name`` dropped: one ``nft`` call
    (a few ms).  Raises :class:`NftError` if there is no such filter."""
    table = peer_filter_table(name)
    listing = json.loads(_nft(["-j", "list", "counter", "inet", table, PEER_COUNTER], None, netns))
    for item in listing.get("nftables", []):
        counter = item.get("counter")
        if isinstance(counter, dict):
            return int(counter.get("packets", 0))
    return 0


def peer_set(name: str, *, netns: str | None = None) -> list[str]:
    """The addresses in the peer sets of endpoint ``name``'s filter (IPv4 first)."""
    table = peer_filter_table(name)
    out: list[str] = []
    for set_name in ("peers4", "peers6"):
        listing = json.loads(_nft(["-j", "list", "set", "inet", table, set_name], None, netns))
        for item in listing.get("nftables", []):
            for elem in item.get("set", {}).get("elem", []):
                if isinstance(elem, str):
                    out.append(elem)
    return out


# -- the guard of attached ports ------------------------------------------------------------


def port_guard_table(name: str) -> str:
    """The table of endpoint ``name``'s attached ports: ``netdev sclp_<name>_ports``."""
    return f"{stt_guard_table(name)}_ports"


def install_port_guard(name: str, ifname: str, ifindex: int, *, netns: str | None = None) -> str:
    """Drop every frame arriving on the attached port ``ifname`` at its ``netdev``
    ingress hook, so the host's own stack never answers or routes a VM's traffic (ARP
    for the host's addresses, IPv6 neighbour discovery, packets to the underlay); the
    endpoint's packet socket took its copy before the hook (:mod:`sclp.io.attach`).
    One chain per port (``port_<ifindex>``) in :func:`port_guard_table`, created with
    the table when needed.  Returns the chain's name.  Raises :class:`NftError`."""
    if not _IFNAME_OK.match(ifname):
        raise ValueError(f"bad interface name {ifname!r}")
    table, chain, script = _port_chain_removal(name, ifindex)
    script += (
        f"table netdev {table} {{\n"
        f"  chain {chain} {{\n"
        f'    type filter hook ingress device "{ifname}" priority 0; policy accept;\n'
        f'    counter drop comment "sclp: the VM port {ifname} is switched by a packet socket"\n'
        "  }\n"
        "}\n"
    )
    _nft(["-f", "-"], script, netns)
    return chain


def remove_port_guard(name: str, ifindex: int, *, netns: str | None = None) -> None:
    """Remove the chain of one port (the interface may be gone already)."""
    _nft(["-f", "-"], _port_chain_removal(name, ifindex)[2], netns)


def _port_chain_removal(name: str, ifindex: int) -> tuple[str, str, str]:
    """(table, chain, a script deleting the chain whether or not it exists): an add
    first, so the delete never fails."""
    table = port_guard_table(name)
    chain = f"port_{int(ifindex)}"
    script = (
        f"add table netdev {table}\n"
        f"add chain netdev {table} {chain}\n"
        f"delete chain netdev {table} {chain}\n"
    )
    return table, chain, script


def remove_port_guards(name: str, *, netns: str | None = None) -> None:
    """Remove the whole table of endpoint ``name``'s port guards, if any."""
    table = port_guard_table(name)
    _nft(["-f", "-"], f"add table netdev {table}\ndelete table netdev {table}\n", netns)
