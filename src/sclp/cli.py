"""The ``sclp`` command: run an endpoint, read its stats, run the demo or a self-check.

Every user-facing failure ends as one ``sclp: error: ...`` line naming the problem
and the fix, with a non-zero exit status; tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from sclp import __version__, native

if TYPE_CHECKING:  # the commands import what they run when they run it
    from sclp.endpoint.stats import EndpointStats

EXIT_ERROR = 1
EXIT_USAGE = 2
CONFIG_DIR = "/etc/sclp"  # `sclp run NAME` reads CONFIG_DIR/NAME.toml
# The rule of the file's `name` (the control socket's and the unit instance's).
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
_CONTROL_DIR_HELP = "directory of the control sockets (default /run/sclp)"


def _fail(message: str, code: int = EXIT_ERROR) -> int:
    print(f"sclp: error: {message}", file=sys.stderr)
    return code


class ConfigChoiceError(Exception):
    """``NAME`` / ``--config`` do not name one readable file; ``code`` is the exit status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def config_file(name: str | None, config: str | None, directory: str = CONFIG_DIR) -> str:
    """The configuration a command reads: ``--config FILE`` as given, or
    ``DIRECTORY/NAME.toml`` (like ``wg-quick up wg0``), which must exist.  Raises
    :class:`ConfigChoiceError` (a usage error for a bad choice, exit 1 for a missing
    file)."""
    if name is not None and config is not None:
        raise ConfigChoiceError(
            f"give NAME ({directory}/NAME.toml) or --config FILE, not both", EXIT_USAGE
        )
    if config is not None:
        return config
    if name is None:
        raise ConfigChoiceError(
            f"say which configuration: NAME (reads {directory}/NAME.toml) or --config FILE",
            EXIT_USAGE,
        )
    if not _NAME_RE.match(name):
        raise ConfigChoiceError(
            f"{name!r} is not an endpoint name (1-32 letters, digits, '.', '_' or '-'); "
            "for a file elsewhere give --config FILE",
            EXIT_USAGE,
        )
    path = Path(directory) / f"{name}.toml"
    if not path.is_file():
        raise ConfigChoiceError(
            f"{path} does not exist; write it (examples in contrib/examples/, keys in "
            "docs/config.md) or give --config FILE",
            EXIT_ERROR,
        )
    return str(path)


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors as one ``sclp: error:`` line (the usage is one
    ``--help`` away), like every other error of the command."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"sclp: error: {message}; see {self.prog} --help\n")


def _number(kind: type[int] | type[float], low: float, high: float, unit: str = "") -> Any:
    """An argparse ``type`` taking ``kind`` values in ``low..high`` (finite)."""

    def convert(text: str) -> int | float:
        try:
            value = kind(text)
        except (ValueError, OverflowError):
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(
                f"{text} is not a finite number; use {low:g}..{high:g}{unit}"
            )
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is out of range; use {low:g}..{high:g}{unit}")
        return value

    convert.__name__ = kind.__name__
    return convert


def _endpoint_name_arg(text: str) -> str:
    from sclp.endpoint.config import NAME_RE

    if not NAME_RE.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an endpoint name (1-32 letters, digits, '.', '_' or '-')"
        )
    return text


def _directory_arg(text: str) -> str:
    """A directory that may not exist yet (nothing is running), but is not a file."""
    if not text:
        raise argparse.ArgumentTypeError("empty; give a directory")
    existing = os.path.abspath(text)
    while not os.path.exists(existing):  # the nearest part of the path that exists
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise argparse.ArgumentTypeError(f"{existing} is not a directory")
    return text


def _output_file_problem(path: str) -> str | None:
    """Why ``path`` cannot be written as a new or replaced file, or None."""
    if not path:
        return "empty; give a file name"
    if os.path.isdir(path):
        return f"{path} is a directory; give a file name"
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.exists(parent) and not os.path.isdir(parent):
        return f"{parent} is not a directory"
    if not os.path.isdir(parent):
        return f"{parent} does not exist; create it first"
    if not os.access(parent, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        return f"{path} is not writable"
    return None


def cmd_run(args: argparse.Namespace) -> int:
    from sclp import logs
    from sclp.endpoint.config import ConfigError, load_config
    from sclp.endpoint.control import ControlError
    from sclp.endpoint.nve import Endpoint, EndpointError

    try:
        path = config_file(args.name, args.config, args.config_dir)
        cfg = load_config(path)
    except ConfigChoiceError as exc:
        return _fail(str(exc), exc.code)
    except ConfigError as exc:
        return _fail(str(exc))
    logs.configure(cfg.name, args.log_format, logging.DEBUG if args.verbose else logging.INFO)
    endpoint = Endpoint(cfg, config_path=path)
    try:
        endpoint.start()
    except (EndpointError, ControlError) as exc:
        return _fail(str(exc))
    except PermissionError as exc:
        # Root, but without a capability the step needs (a container's or a unit's
        # bounding set): the endpoint refuses a uid other than 0 before this.
        return _fail(
            f"{exc.strerror}: sclp run needs root with CAP_NET_ADMIN and CAP_NET_RAW "
            "(and CAP_SYS_ADMIN for namespace =); give it those capabilities"
        )
    try:
        endpoint.run()
    finally:
        endpoint.close()
        logging.getLogger("sclp").info(
            "endpoint %s stopped; TAPs, rules and sockets removed", cfg.name
        )
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Everything ``sclp run`` checks before it changes the system: one ``ok:`` line
    and exit 0, or the one error line ``run`` would print and exit 1."""
    from sclp.endpoint.config import ConfigError
    from sclp.endpoint.preflight import check_config
    from sclp.endpoint.provision import EndpointError

    try:
        path = config_file(args.name, args.config, args.config_dir)
        report = check_config(path, host=not args.file_only)
    except ConfigChoiceError as exc:
        return _fail(str(exc), exc.code)
    except (ConfigError, EndpointError) as exc:
        return _fail(str(exc))
    print(report.line())
    return 0


def _endpoint_name(args: argparse.Namespace) -> str | None:
    """``--name``, or the only endpoint running; None (after the error line) if that
    is ambiguous."""
    if args.name is not None:
        return str(args.name)
    try:
        names = sorted(f[:-5] for f in os.listdir(args.control_dir) if f.endswith(".sock"))
    except FileNotFoundError:
        names = []
    except OSError as exc:
        _fail(f"--control-dir {args.control_dir}: {exc.strerror}")
        return None
    if len(names) != 1:
        found = ", ".join(names) if names else "none running"
        _fail(f"say which endpoint with --name NAME (found: {found})")
        return None
    return str(names[0])


def cmd_stats(args: argparse.Namespace) -> int:
    from sclp.endpoint.control import ControlError, query, socket_path

    name = _endpoint_name(args)
    if name is None:
        return EXIT_ERROR
    try:
        stats = query(socket_path(name, args.control_dir))
    except ControlError as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    _print_stats(stats)
    return 0


def _print_stats(stats: EndpointStats) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(emoji=False)  # MACs and names as they are (02:cd:... stays text)
    console.print(
        f"endpoint [bold]{stats['name']}[/] (pid {stats['pid']}, up {stats['uptime_s']} s)"
    )
    counters = stats["counters"]
    table = Table("counter", "value", title="totals")
    for key, value in counters.items():
        if value or not key.startswith(("drop_", "tx_async_")):
            table.add_row(key, str(value))
    console.print(table)
    failing = {
        peer: entry
        for peer, entry in (stats.get("tx_errors") or {}).items()
        if entry.get("failing_since_s") is not None
    }
    for peer, entry in sorted(failing.items()):
        console.print(
            f"[bold red]sends to {peer} failing[/] for {entry['failing_since_s']:.0f} s: "
            f"{entry['last_error']} ({entry['refused']} refused, "
            f"{entry['async_errors']} reported)"
        )
    per_vni = stats["vni"]
    for vni, values in per_vni.items():
        t = Table("counter", "value", title=f"vni {vni}")
        for key, value in values.items():
            if value is None:
                shown = "(none)"
            elif isinstance(value, list):
                shown = ", ".join(value) or "(none)"
            else:
                shown = str(value)
            t.add_row(key, shown)
        console.print(t)
    cluster = stats.get("cluster")
    if cluster is not None:
        state = (
            "connected to " + str(cluster.get("endpoint"))
            if cluster.get("connected")
            else "not connected"
        )
        console.print(
            f"cluster: {state}, {cluster.get('members')} members, revision "
            f"{cluster.get('revision')}, conflicts {cluster.get('conflicts', 0)}, "
            f"last error: {cluster.get('last_error') or 'none'}"
        )
    bgp = stats.get("bgp")
    if isinstance(bgp, dict):
        sessions = ", ".join(
            f"{n.get('address')} (AS {n.get('asn')}) {n.get('state')}, "
            f"{n.get('routes_received')} routes"
            for n in bgp.get("neighbors", ())
        )
        speaker = bgp.get("speaker") or {}
        console.print(
            f"bgp: AS {bgp.get('asn')}, {bgp.get('routes_advertised')} routes advertised, "
            f"speaker {'running' if speaker.get('running') else 'not running'} "
            f"(restarts {speaker.get('restarts', 0)}); {sessions or 'no neighbors'}"
        )
    ports = stats.get("ports") or {}
    if ports:
        t = Table("port", "vni", "kind", "tx frames", "tx bytes", "rx frames", "rx bytes")
        t.title = "VM ports"
        for name, p in ports.items():
            t.add_row(
                name,
                str(p["vni"]),
                p["kind"],
                *(str(p[k]) for k in ("tx_frames", "tx_bytes", "rx_frames", "rx_bytes")),
            )
        console.print(t)


_SHOW_KEYS = {"fdb": "entries", "peers": "peers", "ports": "ports"}
_SHOW_NOUNS = {"fdb": ("entry", "entries"), "peers": ("peer", "peers"), "ports": ("port", "ports")}
_SHOW_HEADERS = {
    "fdb": ("MAC", "port / peer", "origin", "age (s)"),
    "peers": (
        "address",
        "protocol",
        "carrier",
        "origin",
        "last heard (s)",
        "tx frames",
        "tx bytes",
        "rx frames",
        "rx bytes",
    ),
    "ports": (
        "name",
        "kind",
        "ifindex",
        "mtu",
        "tx frames",
        "tx bytes",
        "rx frames",
        "rx bytes",
    ),
}


def cmd_show(args: argparse.Namespace) -> int:
    """``sclp show fdb|peers|ports``: one table per VNI, or JSON (docs/operations.md)."""
    from sclp.endpoint.control import ControlError, query, socket_path

    name = _endpoint_name(args)
    if name is None:
        return EXIT_ERROR
    what = args.what
    try:
        answer = query(socket_path(name, args.control_dir), f"show {what}")
    except ControlError as exc:
        return _fail(str(exc))
    except (OSError, ValueError) as exc:
        return _fail(f"endpoint {name!r} did not answer `show {what}`: {exc}; is it stalled?")
    if not isinstance(answer, dict) or "rows" not in answer:
        return _fail(
            f"endpoint {name!r} does not know `show {what}` (an older sclp runs it); "
            "restart it with this version"
        )
    served = [int(v) for v in answer.get("vnis", [])]
    columns = answer["columns"]
    rows = [dict(zip(columns, row, strict=True)) for row in answer["rows"]]
    if args.vni is not None:
        if args.vni not in served:
            found = ", ".join(map(str, served)) or "none"
            return _fail(f"endpoint {name!r} has no vni {args.vni} (it serves: {found})")
        served = [args.vni]
        rows = [row for row in rows if row["vni"] == args.vni]
    if args.json:
        print(json.dumps({"name": answer.get("name", name), _SHOW_KEYS[what]: rows}, indent=2))
        return 0
    _print_show(what, str(answer.get("name", name)), served, rows)
    return 0


def _print_show(what: str, name: str, served: list[int], rows: list[dict[str, object]]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    def cell(value: object) -> Text:
        """The endpoint's value as it is: no markup, no ``:emoji:`` codes (a MAC
        such as 02:cd:... is not a compact disc)."""
        return Text("-" if value is None else str(value))

    # Piped (no terminal to measure), a line is as wide as a row needs, never wrapped.
    console = Console(emoji=False) if sys.stdout.isatty() else Console(width=200, emoji=False)
    for vni in served:
        mine = [row for row in rows if row["vni"] == vni]
        noun = _SHOW_NOUNS[what][len(mine) != 1]
        table = Table(title=f"{name}: vni {vni}, {len(mine)} {noun}")
        for i, header in enumerate(_SHOW_HEADERS[what]):
            table.add_column(header, no_wrap=i < 2)  # MAC, address, name: never cut
        for row in mine:
            if what == "fdb":
                place = cell(row["port"]) if row["port"] is not None else cell(row["peer"])
                table.add_row(cell(row["mac"]), place, cell(row["origin"]), cell(row["age_s"]))
            else:
                table.add_row(*(cell(v) for k, v in row.items() if k != "vni"))
        console.print(table)
    if not served:
        console.print(f"{name}: serves no network")


def cmd_health(args: argparse.Namespace) -> int:
    """One line and exit 0 when the endpoint serves (``ok:``, or ``degraded:`` while
    sends to some peers fail), 1 when it does not (or is not running): for a health
    check or a systemd ExecStartPost."""
    from sclp.endpoint.control import ControlError, query, socket_path

    name = _endpoint_name(args)
    if name is None:
        return EXIT_ERROR
    try:
        report = query(socket_path(name, args.control_dir), "health", timeout=args.timeout)
    except (ControlError, OSError) as exc:
        print(f"unhealthy: {name}: {exc}")
        return EXIT_ERROR
    ok = bool(report.get("ok"))
    detail = str(report.get("detail", ""))
    state = "unhealthy"
    if ok:  # degraded: it serves, but sends to some peers fail (exit 0 still)
        state = str(report.get("state") or "ok")
        detail = detail.removeprefix(f"{state}: ")
    print(f"{state}: {name}: {detail}")
    return 0 if ok else EXIT_ERROR


def cmd_reload(args: argparse.Namespace) -> int:
    """Have a running endpoint re-read its file (as SIGHUP does) and print what changed;
    exit 1, with the endpoint unchanged, when the file is invalid."""
    from sclp.endpoint.control import ControlError, query, socket_path
    from sclp.endpoint.reconcile import ReloadReport

    name = _endpoint_name(args)
    if name is None:
        return EXIT_ERROR
    try:
        answer = query(socket_path(name, args.control_dir), "reload", timeout=args.timeout)
    except ControlError as exc:
        return _fail(str(exc))
    except (OSError, ValueError) as exc:  # a timeout, a reset, a cut-off answer
        return _fail(f"{name}: no answer to reload ({exc}); see its log")
    if not isinstance(answer, dict) or "error" not in answer:
        return _fail(f"{name}: no report in the answer: {answer!r}")
    if "path" not in answer:  # an endpoint that predates `sclp reload`
        return _fail(f"{name}: {answer['error']}; restart it with this version, or send SIGHUP")
    report = ReloadReport.from_json(answer)
    if args.json:
        print(json.dumps(answer, indent=2))
    elif report.error is None:
        print(f"reloaded {name} from {report.path}:")
        for line in report.lines():
            print(f"  {line}")
    if report.error is not None:
        return _fail(report.lines()[0])
    if report.not_added:
        vnis = ", ".join(str(vni) for vni, _ in report.not_added)
        return _fail(f"vni {vnis} not added (see above); fix the file and reload again")
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    from sclp.top import run_top

    return run_top(args.name, control_dir=args.control_dir, interval=args.interval)


def cmd_demo(args: argparse.Namespace) -> int:
    from sclp.lab.demo import run_cluster_demo, run_demo

    if os.geteuid() != 0:
        return _fail("sclp demo needs root (network namespaces); run it with sudo")
    if args.hosts is not None:
        return run_cluster_demo(args.hosts, protocol=args.protocol, carrier=args.carrier)
    return int(run_demo(protocol=args.protocol, carrier=args.carrier, seconds=args.seconds))


def _hosts_arg(text: str) -> int:
    try:
        hosts = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if hosts < 3:
        raise argparse.ArgumentTypeError("give 3 or more (without it: the two-host demo)")
    if hosts > MAX_DEMO_HOSTS:
        raise argparse.ArgumentTypeError(f"give at most {MAX_DEMO_HOSTS}")
    return int(hosts)


MAX_DEMO_HOSTS = 32


def cmd_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sclp.lab.bench.configs import select_configs
    from sclp.lab.bench.options import BenchOptions
    from sclp.lab.bench.plot import INSTALL_HINT, matplotlib_missing
    from sclp.lab.bench.run import bench

    protocols = None
    if args.protocols is not None:
        protocols = tuple(p.strip() for p in args.protocols.split(",") if p.strip())
        if not protocols:
            return _fail("--protocols: empty; name configurations or leave it out", EXIT_USAGE)
        try:
            select_configs(protocols, args.vms)
        except ValueError as exc:
            return _fail(f"--protocols: {exc}", EXIT_USAGE)
    transports: tuple[str, ...] = ()
    if args.transports is not None:
        transports = tuple(t.strip() for t in args.transports.split(",") if t.strip())
        if not transports or set(transports) - {"tcp", "udp"}:
            return _fail("--transports: give tcp, udp or tcp,udp", EXIT_USAGE)
    for flag, value, low, high in (
        ("--duration", args.duration, 1, 3600),
        ("--repeat", args.repeat, 1, 100),
    ):
        if value is not None and value < low:
            return _fail(f"{flag}: must be at least {low}", EXIT_USAGE)
        if value is not None and value > high:
            return _fail(f"{flag}: must be at most {high}", EXIT_USAGE)
    if not 16 <= args.udp_length <= 1472:
        return _fail("--udp-length: 16..1472 bytes (one frame at VM MTU 1500)", EXIT_USAGE)
    for flag, path in (("--json", args.json), ("--plot", args.plot), ("--markdown", args.markdown)):
        problem = None if path is None else _output_file_problem(path)
        if problem:
            return _fail(f"{flag}: {problem}", EXIT_USAGE)
    if (args.plot or args.markdown) and matplotlib_missing() is not None:
        what = "--plot" if args.plot else "--markdown (for its chart)"
        return _fail(f"{what} needs matplotlib: {INSTALL_HINT}")
    if os.geteuid() != 0:
        return _fail("sclp bench builds network namespaces: run it as root (sudo)")
    options = BenchOptions(
        protocols=protocols,
        duration=args.duration,
        repeat=args.repeat,
        transports=transports,
        udp_length=args.udp_length,
        quick=args.quick,
        json_path=Path(args.json) if args.json else None,
        plot_path=Path(args.plot) if args.plot else None,
        markdown_path=Path(args.markdown) if args.markdown else None,
        vms=args.vms,
    )
    return bench(options)


def cmd_guest_build(args: argparse.Namespace) -> int:
    from sclp.lab.guest import GuestBuildError, accelerator, build, qemu_missing
    from sclp.lab.guest_image import describe

    if args.cache is not None:
        if not args.cache or "\0" in args.cache:
            return _fail("--cache: empty; give a directory or leave it out", EXIT_USAGE)
        if os.path.exists(args.cache) and not os.path.isdir(args.cache):
            return _fail(f"--cache: {args.cache} is not a directory", EXIT_USAGE)
    try:
        image = build(args.cache, force=args.force)
    except GuestBuildError as exc:
        return _fail(f"guest build: {exc}")
    for line in describe(image):
        print(line)
    if not args.no_probe and qemu_missing() is None:
        accel, reason = accelerator(image)
        print(f"accelerator: {accel}" + (f" ({reason})" if reason else ""))
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    """The cluster registry as etcd holds it (docs/cluster.md)."""
    from sclp.cluster.etcd import EtcdError
    from sclp.cluster.report import render, snapshot

    urls: list[str] = []
    prefix, tls = args.prefix, {"ca": args.ca, "cert": args.cert, "key": args.key}
    if prefix == "":
        return _fail("--prefix: empty; give a key prefix like /sclp or leave it out", EXIT_USAGE)
    if args.config:
        from sclp.endpoint.config import ConfigError, load_config

        try:
            cluster = load_config(args.config).cluster
        except ConfigError as exc:
            return _fail(str(exc))
        if cluster is None:
            return _fail(f"{args.config} has no [cluster] table; add one or give --etcd URL")
        urls, prefix = list(cluster.etcd), prefix or cluster.prefix
        tls = {k: tls[k] or getattr(cluster, k) for k in tls}
    if args.etcd:
        urls = [u.strip() for u in args.etcd.split(",") if u.strip()]
    if not urls:
        return _fail("say where etcd is: --config FILE or --etcd URL[,URL]", EXIT_USAGE)
    problem = _cluster_args_problem(urls, prefix, tls)
    if problem:
        return _fail(problem, EXIT_USAGE)
    try:
        snap = snapshot(urls, prefix or "/sclp", **tls)
    except (EtcdError, ValueError) as exc:
        return _fail(f"etcd: {exc}")
    if args.json:
        print(json.dumps(snap, indent=2))
    else:
        print("\n".join(render(snap)))
    return 0


def _cluster_args_problem(urls: list[str], prefix: str | None, tls: dict[str, str | None]) -> str:
    """What is wrong with the etcd URLs, the key prefix and the TLS files of
    ``sclp cluster`` (the rules of the file's ``[cluster]``), or ``""``."""
    from sclp.endpoint.config import cluster_prefix_problem, etcd_url_problem, readable_file_problem

    for url in urls:
        problem = etcd_url_problem(url)
        if problem:
            return f'--etcd: {problem}; write URLs like "http://10.0.0.5:2379"'
    if prefix is not None:
        problem = cluster_prefix_problem(prefix)
        if problem:
            return f"--prefix: {problem}"
    for key, path in tls.items():
        problem = None if path is None else readable_file_problem(path)
        if problem:
            return f"--{key}: {problem}"
    if (tls["cert"] is None) != (tls["key"] is None):
        return "give both --cert and --key (a client certificate and its key)"
    if any(tls.values()) and not all(u.startswith("https://") for u in urls):
        return "TLS files are given, so use https:// URLs"
    return ""


def cmd_selfcheck(args: argparse.Namespace) -> int:
    from sclp.selfcheck import run_selfcheck

    return run_selfcheck()


# -- sclp completion: shell completion scripts generated from this parser by shtab ------

COMPLETION_SHELLS = ("bash", "zsh")


def _completion_paths(parser: argparse.ArgumentParser) -> None:
    """Let the shell complete file names after options whose metavar says FILE and
    directories after DIR (shtab completes nothing after an option by default), and
    describe each subcommand by its one-line help, not its long description (zsh
    shows it beside the name)."""
    import shtab

    for action in parser._actions:
        metavar = action.metavar if isinstance(action.metavar, str) else ""
        if "FILE" in metavar:
            action.complete = shtab.FILE  # type: ignore[attr-defined]
        elif "DIR" in metavar:
            action.complete = shtab.DIRECTORY  # type: ignore[attr-defined]
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                subparser.description = None
                _completion_paths(subparser)


def cmd_completion(args: argparse.Namespace) -> int:
    try:
        import shtab
    except ImportError:
        return _fail("sclp completion needs the Python package shtab; pip install shtab")
    parser = build_parser()
    _completion_paths(parser)
    sys.stdout.write(shtab.complete(parser, shell=args.shell))
    return 0


def _add_completion(sub: argparse._SubParsersAction[_Parser]) -> None:
    completion = sub.add_parser(
        "completion",
        help="print the shell completion script for bash or zsh",
        description="Print a completion script for the sclp command, e.g. "
        "`sclp completion bash > /etc/bash_completion.d/sclp` or "
        "`sclp completion zsh > /usr/local/share/zsh/site-functions/_sclp`.",
    )
    completion.add_argument("shell", choices=COMPLETION_SHELLS, help="the shell")
    completion.set_defaults(func=cmd_completion)


def _add_endpoint_args(parser: argparse.ArgumentParser) -> None:
    """``--name`` and ``--control-dir``: which running endpoint a verb talks to."""
    parser.add_argument(
        "--name", type=_endpoint_name_arg, help="endpoint name (default: the only one running)"
    )
    parser.add_argument(
        "--control-dir", type=_directory_arg, default="/run/sclp", help=_CONTROL_DIR_HELP
    )


def version_text() -> str:
    """``sclp 0.1.0``, and how many per-frame modules run compiled, if any (a wheel
    built with ``SCLP_MYPYC=1``: docs/performance.md)."""
    compiled = native.compiled()
    return f"sclp {__version__}" + (f" (mypyc: {len(compiled)} modules)" if compiled else "")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sclp",
        description="SCLP tunnel endpoint (NVE): fast L2 overlays between VMs, containers "
        "and network namespaces, with VXLAN/Geneve over SCLP and the classic tunnels.",
    )
    parser.add_argument("--version", action="version", version=version_text())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run one endpoint in the foreground (Ctrl-C stops it)",
        description="Run the endpoint of /etc/sclp/NAME.toml, or of --config FILE, in the "
        "foreground until Ctrl-C or SIGTERM; SIGHUP (or `sclp reload`) re-reads the file. "
        "Needs root (uid 0, with CAP_NET_ADMIN and CAP_NET_RAW).",
    )
    run.add_argument("name", nargs="?", metavar="NAME", help="read /etc/sclp/NAME.toml")
    run.add_argument(
        "--config", "-c", metavar="FILE.toml", help="endpoint configuration (instead of NAME)"
    )
    run.add_argument("--config-dir", default=CONFIG_DIR, help=argparse.SUPPRESS)
    run.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    run.set_defaults(func=cmd_run)

    run.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="log lines as text (default) or JSON objects, for collectors",
    )

    config_check = sub.add_parser(
        "check",
        help="validate a configuration as `sclp run` would, without changing anything",
        description="Run every check `sclp run` makes before it touches the system: the "
        "file (keys, values, the cluster's TLS files), the namespaces it names, "
        "underlay.local being an address of this host, and the underlay MTU (underlay.mtu "
        "or the device of the local address) from which each network's VM MTU follows. "
        "Prints one ok: line and exits 0, or the one error line `sclp run` would print and "
        "exits 1.  No root needed (without it, a device inside underlay.namespace is not "
        "read: its MTU is known at start).",
    )
    config_check.add_argument("name", nargs="?", metavar="NAME", help="check /etc/sclp/NAME.toml")
    config_check.add_argument(
        "--config", "-c", metavar="FILE.toml", help="the file (instead of NAME)"
    )
    config_check.add_argument(
        "--file-only",
        action="store_true",
        help="check the file alone, not against this host (for a file written for another "
        "machine): no namespaces, addresses or devices",
    )
    config_check.add_argument("--config-dir", default=CONFIG_DIR, help=argparse.SUPPRESS)
    config_check.set_defaults(func=cmd_check)

    stats = sub.add_parser("stats", help="show the counters of a running endpoint")
    _add_endpoint_args(stats)
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(func=cmd_stats)

    health = sub.add_parser(
        "health", help="check that a running endpoint serves (exit 0) or not (exit 1)"
    )
    _add_endpoint_args(health)
    health.add_argument(
        "--timeout",
        type=_number(float, 0.001, 3600, " s"),
        default=3.0,
        help="seconds to wait, 0.001..3600 (default 3)",
    )
    health.set_defaults(func=cmd_health)

    reload = sub.add_parser(
        "reload",
        help="have a running endpoint re-read its file and print what changed",
        description="Ask a running endpoint, over its control socket, to re-read the "
        "configuration file it was started with and reconcile to it, as SIGHUP (systemctl "
        "reload) does: networks added, removed or re-created, peers replaced, the rest "
        "untouched.  Prints each change; settings outside [[network]] are named as needing "
        "a restart.  An invalid file changes nothing: one error line, exit 1.",
    )
    _add_endpoint_args(reload)
    reload.add_argument("--json", action="store_true", help="print the report as JSON")
    reload.add_argument(
        "--timeout",
        type=_number(float, 0.001, 3600, " s"),
        default=30.0,
        help="seconds to wait for the report, 0.001..3600 (default 30)",
    )
    reload.set_defaults(func=cmd_reload)

    top = sub.add_parser("top", help="live per-VNI rates of a running endpoint (Ctrl-C quits)")
    _add_endpoint_args(top)
    top.add_argument(
        "--interval",
        type=_number(float, 0.1, 3600, " s"),
        default=1.0,
        help="seconds between refreshes, 0.1..3600 (default 1)",
    )
    top.set_defaults(func=cmd_top)

    show = sub.add_parser(
        "show",
        help="list what a running endpoint knows: FDB entries, peers or ports, per VNI",
        description="List a running endpoint's FDB (MAC, port or peer, origin, age), its "
        "peers (tunnel, origin, last heard, frames and bytes each way) or its VM ports "
        "(kind, ifindex, MTU, frames and bytes each way), one table per VNI, or as JSON "
        "(docs/operations.md describes its keys).",
    )
    show.add_argument("what", choices=tuple(_SHOW_KEYS), help="what to list")
    _add_endpoint_args(show)
    show.add_argument(
        "--vni", type=_number(int, 1, (1 << 24) - 1), metavar="V", help="only this VNI"
    )
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=cmd_show)

    demo = sub.add_parser(
        "demo",
        help="build a two-VM testbed in namespaces, ping and iperf3 across a tunnel, tear down",
    )
    demo.add_argument(
        "--protocol",
        default="vxlan-sclp",
        choices=("vxlan", "geneve", "nvgre", "stt", "vxlan-sclp", "geneve-sclp"),
    )
    demo.add_argument("--carrier", default="ip", choices=("ip", "udp"), help="SCLP carrier")
    demo.add_argument(
        "--seconds",
        type=_number(int, 1, 3600, " s"),
        default=5,
        help="iperf3 seconds, 1..3600 (default 5)",
    )
    demo.add_argument(
        "--hosts",
        type=_hosts_arg,
        metavar="N",
        help="3 <= N <= 32 hosts that find each other through etcd (Debian's etcd-server, started "
        "in its own namespace), a VM on each, no peers in any file: all-pairs ping",
    )
    demo.set_defaults(func=cmd_demo)

    bench = sub.add_parser(
        "bench",
        help="measure every protocol and the kernel references VM to VM (the paper's evaluation)",
        description="Build the two-VM testbed once per configuration and measure iperf3 "
        "TCP and UDP throughput, retransmits, UDP loss, endpoint CPU per GB, peak RSS and "
        "the frames the receiving VM handles, for every tunnel, the Linux kernel's VXLAN "
        "(offloads on and off), a bare veth, tinc 1.0 in switch mode without cipher "
        "(needs the Debian package tinc), and the SCLP pre-reassembly ablation. "
        "First it measures this machine's copy floor (four 64 KiB memory copies per "
        "frame) and reports every endpoint's CPU per GB as a multiple of it. "
        "UDP is offered at the highest rate that loses under 1 %, found by a short "
        "bisection per configuration (1 + 5 probes of 2 s, or 1 + 3 of 1 s with --quick). "
        "With --vms qemu the VMs are two QEMU guests with virtio-net NICs (the image of "
        "`sclp guest build`; KVM when it boots them, else TCG, named in the output), one "
        "behind each endpoint, iperf3 inside them, TCP only by default; the reference is "
        "the guests' TAPs on a Linux bridge without a tunnel (configuration 'bridge'), "
        "and each tunnel is reported as a ratio to it, since under TCG the guests' "
        "emulated CPUs bound every figure.",
    )
    bench.add_argument(
        "--protocols",
        metavar="LIST",
        help="comma list of configurations (a name also selects its variants): veth, "
        "kernel-vxlan, kernel-vxlan/no-offloads, tinc, vxlan, vxlan/mtu1500, geneve, nvgre, "
        "stt, "
        "vxlan-sclp/ip, vxlan-sclp/udp, geneve-sclp/udp, vxlan-sclp/udp/no-level1, ... "
        "(default: all); with --vms: bridge and our tunnels without the ablations "
        "(default: bridge, vxlan, vxlan-sclp/ip, vxlan-sclp/udp)",
    )
    bench.add_argument(
        "--duration",
        type=int,
        metavar="S",
        help="seconds per iperf3 run, 1..3600 (default 10)",
    )
    bench.add_argument(
        "--repeat",
        type=int,
        metavar="N",
        help="runs per transport, 1..100 (default 3); UDP's runs follow its rate search",
    )
    bench.add_argument(
        "--transports",
        metavar="LIST",
        help="tcp, udp or tcp,udp (default; tcp with --vms)",
    )
    bench.add_argument(
        "--udp-length",
        type=int,
        default=1400,
        metavar="BYTES",
        help="UDP datagram payload (default 1400: one frame at every VM MTU measured)",
    )
    bench.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 s x 1 of veth, kernel-vxlan, vxlan, vxlan-sclp/udp, one "
        "ablation and tinc, with a 4-probe UDP rate search (about a minute); with --vms: "
        "1 s x 1 of the default set (two guest boots per configuration)",
    )
    bench.add_argument(
        "--vms",
        choices=("qemu",),
        help="the VMs are real QEMU guests (needs qemu-system-x86 and `sclp guest build`)",
    )
    bench.add_argument("--json", metavar="FILE", help="write every raw figure as JSON")
    bench.add_argument(
        "--plot", metavar="FILE.png", help="write the bar chart (needs matplotlib, the extra plot)"
    )
    bench.add_argument(
        "--markdown",
        metavar="FILE.md",
        help="write a results page (command, machine, tables, chart link); the chart goes "
        "to --plot or FILE.png",
    )
    bench.set_defaults(func=cmd_bench)

    guest = sub.add_parser("guest", help="the lab's virtio-net test guest (QEMU)")
    guest_sub = guest.add_subparsers(dest="guest_command", metavar="COMMAND", required=True)
    guest_build = guest_sub.add_parser(
        "build",
        help="build the guest kernel and initramfs from Debian packages into a cache "
        "(skipped when current)",
    )
    guest_build.add_argument(
        "--cache",
        metavar="DIR",
        help="cache directory (default $SCLP_GUEST_CACHE or /var/cache/sclp/guest)",
    )
    guest_build.add_argument("--force", action="store_true", help="rebuild even when current")
    guest_build.add_argument(
        "--no-probe", action="store_true", help="do not find out whether KVM can boot it"
    )
    guest_build.set_defaults(func=cmd_guest_build)

    cluster = sub.add_parser(
        "cluster", help="list the members of the cluster registry on etcd, their leases"
    )
    cluster.add_argument("--config", "-c", metavar="FILE.toml", help="take [cluster] from it")
    cluster.add_argument("--etcd", metavar="URL[,URL]", help="etcd client URLs")
    cluster.add_argument("--prefix", help="key prefix (default /sclp or the config's)")
    cluster.add_argument("--ca", metavar="FILE", help="CA to verify etcd (https)")
    cluster.add_argument("--cert", metavar="FILE", help="client certificate")
    cluster.add_argument("--key", metavar="FILE", help="client certificate's key")
    cluster.add_argument("--json", action="store_true", help="print JSON")
    cluster.set_defaults(func=cmd_cluster)

    check = sub.add_parser(
        "selfcheck", help="segment and reassemble payloads in memory (no root needed)"
    )
    check.set_defaults(func=cmd_selfcheck)

    _add_completion(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
