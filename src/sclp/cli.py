"""The ``sclp`` command: run an endpoint, read its stats, run the demo or a self-check.

Every user-facing failure ends as one ``sclp: error: ...`` line naming the problem
and the fix, with a non-zero exit status; tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from sclp import __version__

EXIT_ERROR = 1
EXIT_USAGE = 2


def _fail(message: str, code: int = EXIT_ERROR) -> int:
    print(f"sclp: error: {message}", file=sys.stderr)
    return code


def cmd_run(args: argparse.Namespace) -> int:
    from sclp.endpoint.config import ConfigError, load_config
    from sclp.endpoint.control import ControlError
    from sclp.endpoint.nve import Endpoint, EndpointError

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s sclp[%(process)d] %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        return _fail(str(exc))
    endpoint = Endpoint(cfg)
    try:
        endpoint.start()
    except (EndpointError, ControlError) as exc:
        return _fail(str(exc))
    except PermissionError as exc:
        return _fail(f"{exc.strerror}: run as root (or with CAP_NET_ADMIN and CAP_NET_RAW)")
    try:
        endpoint.run()
    finally:
        endpoint.close()
        logging.getLogger("sclp").info(
            "endpoint %s stopped; TAPs, rules and sockets removed", cfg.name
        )
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from sclp.endpoint.control import ControlError, query, socket_path

    name = args.name
    if name is None:
        try:
            names = sorted(f[:-5] for f in os.listdir(args.control_dir) if f.endswith(".sock"))
        except FileNotFoundError:
            names = []
        if len(names) != 1:
            found = ", ".join(names) if names else "none running"
            return _fail(f"say which endpoint with --name NAME (found: {found})")
        name = names[0]
    try:
        stats = query(socket_path(name, args.control_dir))
    except ControlError as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    _print_stats(stats)
    return 0


def _print_stats(stats: dict[str, object]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
        f"endpoint [bold]{stats['name']}[/] (pid {stats['pid']}, up {stats['uptime_s']} s)"
    )
    counters = stats["counters"]
    assert isinstance(counters, dict)
    table = Table("counter", "value", title="totals")
    for key, value in counters.items():
        if value or not key.startswith("drop_"):
            table.add_row(key, str(value))
    console.print(table)
    per_vni = stats["vni"]
    assert isinstance(per_vni, dict)
    for vni, values in per_vni.items():
        t = Table("counter", "value", title=f"vni {vni}")
        for key, value in values.items():
            t.add_row(key, str(value))
        console.print(t)


def cmd_demo(args: argparse.Namespace) -> int:
    from sclp.demo import run_demo

    return int(run_demo(protocol=args.protocol, carrier=args.carrier, seconds=args.seconds))


def cmd_selfcheck(args: argparse.Namespace) -> int:
    from sclp.selfcheck import run_selfcheck

    return run_selfcheck()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sclp",
        description="SCLP tunnel endpoint (NVE): fast L2 overlays between VMs, containers "
        "and network namespaces, with VXLAN/Geneve over SCLP and the classic tunnels.",
    )
    parser.add_argument("--version", action="version", version=f"sclp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run one endpoint in the foreground (Ctrl-C stops it)")
    run.add_argument(
        "--config", "-c", required=True, metavar="FILE.toml", help="endpoint configuration"
    )
    run.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    run.set_defaults(func=cmd_run)

    stats = sub.add_parser("stats", help="show the counters of a running endpoint")
    stats.add_argument("--name", help="endpoint name (default: the only one running)")
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.add_argument("--control-dir", default="/run/sclp", help=argparse.SUPPRESS)
    stats.set_defaults(func=cmd_stats)

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
    demo.add_argument("--seconds", type=int, default=5, help="iperf3 duration (default 5)")
    demo.set_defaults(func=cmd_demo)

    check = sub.add_parser(
        "selfcheck", help="segment and reassemble payloads in memory (no root needed)"
    )
    check.set_defaults(func=cmd_selfcheck)
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
