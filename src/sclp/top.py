"""``sclp top``: a live per-VNI view of a running endpoint, like iftop or ovs-appctl.

Every ``interval`` seconds the endpoint's control socket is asked for ``stats``; the
difference between two answers gives the rates.  "in" is what the endpoint delivered
to its VMs (``rx_*``: underlay → VM), "out" what it took from them into the tunnel
(``tx_*``: VM → underlay); Gbit/s counts the VMs' frames (inner bytes), the underlay
column counts the packets on the wire, both directions.

:func:`rates` and :func:`render` are pure (the unit tests check them with synthetic
answers); :func:`run_top` does the polling and the drawing.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeGuard

from rich.console import Console
from rich.live import Live
from rich.table import Table

from sclp.endpoint.control import ControlError, query, socket_path
from sclp.endpoint.stats import Counters, EndpointStats, VniStats

__all__ = ["TOTAL", "Row", "human_gbps", "human_rate", "rates", "render", "run_top"]

TOTAL = "TOTAL"
DROP_PREFIX = "drop_"


@dataclass(frozen=True)
class Row:
    """Rates of one VNI (or of the whole endpoint, ``vni == TOTAL``) over an interval."""

    vni: str
    protocol: str
    frames_in: float  # frames/s delivered to the VMs
    frames_out: float  # frames/s taken from the VMs
    gbps_in: float
    gbps_out: float
    packets_in: float  # underlay packets/s received
    packets_out: float  # underlay packets/s sent
    drops: float  # sum of the drop_* counters, per second
    top_drop: str | None  # the reason that grew most in the interval (without "drop_")
    fdb_entries: int

    @property
    def packets(self) -> float:
        """Underlay packets/s, both directions."""
        return self.packets_in + self.packets_out


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _deltas(prev: Mapping[str, object], cur: Mapping[str, object]) -> dict[str, int]:
    """The growth of every integer counter of ``cur``; one that went backwards (or is
    new) grows by 0."""
    out: dict[str, int] = {}
    for key, value in cur.items():
        now = _int(value)
        before = prev.get(key)
        out[key] = max(0, now - _int(before)) if before is not None else 0
    return out


def _row(
    vni: str,
    protocol: str,
    fdb_entries: int,
    delta: Mapping[str, int],
    seconds: float,
) -> Row:
    def per_s(key: str) -> float:
        return delta.get(key, 0) / seconds if seconds > 0 else 0.0

    drops = {k[len(DROP_PREFIX) :]: v for k, v in delta.items() if k.startswith(DROP_PREFIX)}
    top = max(sorted(drops), key=lambda k: drops[k], default=None)
    top_drop = top if top is not None and drops[top] > 0 else None
    return Row(
        vni=vni,
        protocol=protocol,
        frames_in=per_s("rx_frames"),
        frames_out=per_s("tx_frames"),
        gbps_in=per_s("rx_bytes") * 8 / 1e9,
        gbps_out=per_s("tx_bytes") * 8 / 1e9,
        packets_in=per_s("rx_packets"),
        packets_out=per_s("tx_packets"),
        drops=sum(drops.values()) / seconds if seconds > 0 else 0.0,
        top_drop=top_drop,
        fdb_entries=fdb_entries,
    )


def _vni_key(vni: str) -> tuple[int, str]:
    return (int(vni), vni) if vni.isdigit() else (1 << 32, vni)


def rates(prev: EndpointStats, cur: EndpointStats, seconds: float) -> list[Row]:
    """One row per VNI of ``cur`` (in VNI order) and a last :data:`TOTAL` row, the
    rates between two ``stats`` answers ``seconds`` apart.

    Counters that went backwards, and every counter when ``uptime_s`` went backwards
    (the endpoint restarted), give 0, never a negative rate; a VNI that ``prev`` did
    not have has no baseline and shows 0 too; one that ``cur`` no longer has is gone.
    The total comes from the endpoint's totals, which also hold what no VNI is
    charged for (e.g. packets from a stranger, underlay receive counts)."""
    before, now = prev.get("uptime_s"), cur.get("uptime_s")
    restarted = isinstance(before, int | float) and isinstance(now, int | float) and now < before
    prev_vnis: dict[str, VniStats] = {} if restarted else prev.get("vni") or {}
    cur_vnis: dict[str, VniStats] = cur.get("vni") or {}
    rows: list[Row] = []
    fdb_total = 0
    for vni in sorted(cur_vnis, key=_vni_key):
        entry = cur_vnis[vni]
        fdb = _int(entry.get("fdb_entries"))
        fdb_total += fdb
        delta = _deltas(prev_vnis.get(vni) or {}, entry) if vni in prev_vnis else {}
        rows.append(_row(vni, str(entry.get("protocol", "?")), fdb, delta, seconds))
    cur_totals: Counters = cur.get("counters") or {}
    prev_totals: Counters = {} if restarted else prev.get("counters") or {}
    delta = _deltas(prev_totals, cur_totals) if prev_totals else {}
    rows.append(_row(TOTAL, "", fdb_total, delta, seconds))
    return rows


# -- rendering --------------------------------------------------------------------------


def human_rate(value: float) -> str:
    """``0``, ``950``, ``12.3k``, ``1.50M``, ``2.00G``: three significant digits."""
    if value < 0.5:
        return "0"
    if value < 999.5:
        return f"{value:.0f}"
    for unit, scale in (("k", 1e3), ("M", 1e6)):
        if value / scale < 999.5:
            return _three(value / scale) + unit
    return _three(value / 1e9) + "G"


def _three(value: float) -> str:
    if value < 9.995:
        return f"{value:.2f}"
    if value < 99.95:
        return f"{value:.1f}"
    return f"{value:.0f}"


def human_gbps(value: float) -> str:
    """Gbit/s: ``0``, ``<0.001``, ``0.123``, ``7.30``, ``12.3``, ``123``."""
    if value <= 0:
        return "0"
    if value < 0.001:
        return "<0.001"
    if value < 1:
        return f"{value:.3f}"
    if value < 10:
        return f"{value:.2f}"
    if value < 100:
        return f"{value:.1f}"
    return f"{value:.0f}"


def human_duration(seconds: float) -> str:
    s = int(max(0.0, seconds))
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d{hours:02d}h{minutes:02d}m"
    if hours:
        return f"{hours}h{minutes:02d}m{s:02d}s"
    if minutes:
        return f"{minutes}m{s:02d}s"
    return f"{s}s"


def render(rows: list[Row], stats: EndpointStats, interval: float) -> Table:
    """The table of ``rows`` under a title naming the endpoint (name, local address,
    carrier, uptime) and the interval."""
    underlay = stats.get("underlay")
    uptime = stats.get("uptime_s")
    title = (
        f"sclp top: {stats.get('name', '?')}"
        f"  local {underlay.get('local', '?') if underlay else '?'}"
        f"  carrier {underlay.get('sclp_carrier', '?') if underlay else '?'}"
        f"  up {human_duration(float(uptime)) if isinstance(uptime, (int, float)) else '?'}"
        f"  every {interval:g} s"
    )
    table = Table(
        title=title,
        caption="in: underlay → VM, out: VM → underlay; Gbit/s of the VMs' frames",
        title_justify="left",
    )
    table.add_column("VNI", justify="right", style="bold")
    table.add_column("protocol")
    for header in ("frames/s in", "frames/s out", "Gbit/s in", "Gbit/s out", "underlay pkt/s"):
        table.add_column(header, justify="right")
    table.add_column("drops/s", justify="right")
    table.add_column("top drop")
    table.add_column("FDB", justify="right")
    for i, row in enumerate(rows):
        drops = human_rate(row.drops)
        table.add_row(
            row.vni,
            row.protocol,
            human_rate(row.frames_in),
            human_rate(row.frames_out),
            human_gbps(row.gbps_in),
            human_gbps(row.gbps_out),
            human_rate(row.packets),
            f"[red]{drops}[/]" if row.drops > 0 else drops,
            row.top_drop or "-",
            str(row.fdb_entries),
            end_section=i + 2 == len(rows) and rows[-1].vni == TOTAL,
            style="bold" if row.vni == TOTAL else None,
        )
    return table


def _waiting(stats: EndpointStats, interval: float) -> Table:
    rows = [
        Row(vni, str(v.get("protocol", "?")), 0, 0, 0, 0, 0, 0, 0, None, 0)
        for vni, v in sorted((stats.get("vni") or {}).items(), key=lambda kv: _vni_key(kv[0]))
    ]
    table = render(rows, stats, interval)
    table.caption = "measuring the first interval…"
    return table


# -- the loop ---------------------------------------------------------------------------


def endpoint_names(control_dir: str) -> list[str]:
    """The names of the control sockets in ``control_dir`` (sorted)."""
    try:
        return sorted(f[: -len(".sock")] for f in os.listdir(control_dir) if f.endswith(".sock"))
    except (FileNotFoundError, NotADirectoryError):
        return []


class _TopError(Exception):
    pass


def _is_stats(answer: object) -> TypeGuard[EndpointStats]:
    """The endpoint's ``stats`` answer is JSON of :class:`EndpointStats` (this module
    reads every key with a default, so an older endpoint's answer serves too)."""
    return isinstance(answer, dict) and "error" not in answer


def _query(path: str) -> EndpointStats:
    try:
        answer = query(path, "stats")
    except ControlError:
        raise
    except (OSError, ValueError) as exc:
        raise _TopError(f"{path}: no usable answer ({exc}); is the endpoint healthy?") from None
    if _is_stats(answer):
        return answer
    if isinstance(answer, dict):
        raise _TopError(f"{path}: {answer['error']}")
    raise _TopError(f"{path}: unexpected answer {answer!r}")


def run_top(
    name: str | None,
    control_dir: str = "/run/sclp",
    interval: float = 1.0,
    iterations: int | None = None,
    console: Console | None = None,
) -> int:
    """Show the rates of endpoint ``name`` (default: the only one in ``control_dir``)
    every ``interval`` seconds until Ctrl-C, or ``iterations`` times.

    On a terminal (and without ``iterations``) one live table is redrawn in place;
    otherwise one table is printed per interval.  Returns 0, or 1 after one
    ``sclp: error: ...`` line (on ``console``, or standard error without one) when
    the endpoint is not running, goes away or there is no single endpoint to pick."""
    out = console if console is not None else Console()
    err = console if console is not None else Console(stderr=True)

    def fail(message: str) -> int:
        err.print(f"sclp: error: {message}", markup=False, highlight=False, soft_wrap=True)
        return 1

    if interval <= 0:
        return fail(f"the interval must be positive (got {interval:g})")
    control_dir = os.fspath(control_dir)
    if name is None:
        names = endpoint_names(control_dir)
        if len(names) != 1:
            found = ", ".join(names) if names else "none running"
            return fail(f"say which endpoint with --name NAME (found: {found})")
        name = names[0]
    path = socket_path(name, control_dir)
    live = iterations is None and out.is_terminal
    try:
        prev = _query(path)
        prev_t = time.monotonic()
        done = 0
        view = Live(_waiting(prev, interval), console=out, auto_refresh=False) if live else None
        with view if view is not None else contextlib.nullcontext():
            deadline = prev_t
            while iterations is None or done < iterations:
                deadline += interval
                time.sleep(max(0.0, deadline - time.monotonic()))
                cur = _query(path)
                cur_t = time.monotonic()
                seconds = _seconds(prev, cur, cur_t - prev_t)
                table = render(rates(prev, cur, seconds), cur, interval)
                if view is None:
                    out.print(table)
                else:
                    view.update(table, refresh=True)
                prev, prev_t = cur, cur_t
                done += 1
                if deadline < cur_t - interval:  # fell behind (suspended?): start afresh
                    deadline = cur_t
    except KeyboardInterrupt:
        return 0
    except (ControlError, _TopError) as exc:
        return fail(str(exc))
    return 0


def _seconds(prev: EndpointStats, cur: EndpointStats, measured: float) -> float:
    """The time between two answers: the endpoint's own clock (``uptime_s``, taken
    with the counters) when it moved forward, else what this side measured."""
    a, b = prev.get("uptime_s"), cur.get("uptime_s")
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > a:
        return float(b - a)
    return measured
