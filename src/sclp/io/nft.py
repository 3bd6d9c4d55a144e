"""nftables rule that keeps the kernel from answering STT segments with TCP RSTs.

Why: STT (draft-davie-stt) looks like TCP to port 7471 but no TCP socket listens
there; the endpoint reads the segments from a raw socket, while the kernel's own TCP
finds no socket and sends a RST for every segment.  Dropping those RSTs on the way
*out* is the one place that works: raw sockets get their copy after the input hook,
so filtering the STT segments on input would blind the endpoint too.

One table per endpoint (``inet sclp_<name>``), so several endpoints in one namespace
never touch each other's rules; install and removal are each one atomic ``nft -f``
transaction (``add table`` + ``delete table`` + definition) and both are idempotent.
``nft`` is run as a subprocess (nftables' netlink API is not in pyroute2's stable
surface); for a namespace the subprocess is started from a thread switched into it,
which the child inherits.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Final

from sclp.io.netns import run_in_netns

__all__ = [
    "NftError",
    "install_stt_rst_guard",
    "remove_stt_rst_guard",
    "stt_guard_table",
    "stt_rst_guard_drops",
]

_NAME_OK = re.compile(r"^[A-Za-z0-9_]{1,40}$")
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
    table = stt_guard_table(name)
    listing = json.loads(_nft(["-j", "list", "tables"], None, netns))
    names = {
        item["table"]["name"]
        for item in listing.get("nftables", [])
        if "table" in item and item["table"].get("family") == "inet"
    }
    if table not in names:
        return 0
    rules = json.loads(_nft(["-j", "list", "table", "inet", table], None, netns))
    drops = 0
    for item in rules.get("nftables", []):
        for expr in item.get("rule", {}).get("expr", []):
            counter = expr.get("counter") if isinstance(expr, dict) else None
            if isinstance(counter, dict):
                drops += int(counter.get("packets", 0))
    return drops
