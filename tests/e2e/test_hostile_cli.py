"""Every verb of ``sclp`` against hostile arguments and files: NaN, infinities,
negative and huge numbers, empty strings, wrong types, missing files, directories
given as files, files given as directories, a config that is not UTF-8.

Each run must end with exit status 1 or 2 and exactly one ``sclp: error:`` line on
standard error (usage errors included: the command prints them as one line), and
never a traceback.  The verbs are enumerated from :func:`sclp.cli.build_parser`, so a
verb added later is swept too.  Nothing here needs or starts an endpoint: the verbs
that read one get a name that is not running and an empty control directory, and
``demo``, ``bench`` and ``guest build`` (which would build namespaces, measure or
download) get invalid arguments only, which they must refuse before touching the
system (the explicit cases below check that the error names the argument).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from sclp.cli import build_parser
from sclp.endpoint.control import socket_path
from sclp.io import netns as nsio
from sclp.lab.testbed import UNDERLAY

from .helpers import Topology, wait_for

ERROR_LINE = re.compile(r"^sclp( [\w-]+)*: error: \S")
NOT_RUNNING = "hostile-none"
NUMBERS = ("nan", "-inf", "inf", "-1", "1e999", "99999999999999999999", "x", "")


@dataclass(frozen=True)
class Files:
    """The hostile files and directories, in one temporary directory."""

    root: Path

    @property
    def not_utf8(self) -> Path:
        return self.root / "latin1.toml"

    @property
    def directory(self) -> Path:
        return self.root / "a-directory"

    @property
    def missing(self) -> Path:
        return self.root / "missing.toml"

    @property
    def under_a_file(self) -> Path:
        return self.not_utf8 / "x.toml"

    @property
    def control_dir(self) -> Path:
        return self.root / "control"  # empty: nothing runs there

    @property
    def bad_values(self) -> Path:
        return self.root / "bad-values.toml"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    f = Files(tmp_path_factory.mktemp("hostile"))
    f.not_utf8.write_bytes(b'name = "h\xf6st"\n[underlay]\nlocal = "10.0.0.1"\n')
    f.directory.mkdir()
    f.control_dir.mkdir()
    f.bad_values.write_text(
        'name = "hostile"\n'  # 1
        "[underlay]\n"  # 2
        'local = "10.0.0.1"\n'  # 3
        "[underlay.faults]\n"  # 4
        "reorder_depth = -5\n"  # 5
        '[[network]]\nvni = 42\ntap = "hostile0"\n'
    )
    return f


def run_sclp(args: list[str], files: Files | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="200")
    if files is not None:  # a guest build that got past its checks would fail at once
        env["SCLP_GUEST_CACHE"] = str(files.under_a_file)
    return subprocess.run(
        [sys.executable, "-m", "sclp", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env=env,
        check=False,
    )


def assert_one_error(args: list[str], result: subprocess.CompletedProcess[str]) -> str:
    shown = f"sclp {' '.join(args)!r}: exit {result.returncode}, stderr {result.stderr!r}"
    assert "Traceback" not in result.stderr + result.stdout, shown
    assert result.returncode in (1, 2), shown
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and ERROR_LINE.match(lines[0]), shown
    return lines[0]


# -- the verbs, from the parser -----------------------------------------------------


def verbs(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    yield path, parser
    for sub in subs:
        for name, child in sub.choices.items():
            yield from verbs(child, (*path, name))


VERBS = dict(verbs(build_parser()))


def test_every_verb_is_found() -> None:
    names = {" ".join(path) for path in VERBS}
    assert {"run", "stats", "health", "top", "demo", "bench", "guest build", "cluster"} <= names
    assert {"selfcheck", "guest", ""} <= names


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in parser._actions
        if a.option_strings
        and a.nargs != 0
        and not isinstance(a, argparse._SubParsersAction | argparse._HelpAction)
    ]


def _positionals(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in parser._actions
        if not a.option_strings and not isinstance(a, argparse._SubParsersAction)
    ]


def _is_number(action: argparse.Action) -> bool:
    kind = action.type
    return kind in (int, float) or getattr(kind, "__name__", "") in ("int", "float")


def hostile_values(action: argparse.Action, files: Files) -> list[str]:
    """Values no sane reading of the option accepts."""
    if _is_number(action):
        return list(NUMBERS)
    if action.choices is not None:
        return ["bogus", ""]
    values = [""]
    dest = action.dest
    if dest in ("config", "ca", "cert", "key"):  # files to read
        values += [str(files.directory), str(files.missing), str(files.under_a_file)]
    if dest == "config":
        values.append(str(files.not_utf8))
    if dest in ("json", "plot", "markdown"):  # files to write
        values += [str(files.directory), str(files.under_a_file), str(files.missing / "x")]
    if dest in ("control_dir", "cache"):  # directories
        values += [str(files.not_utf8), str(files.under_a_file)]
    if dest == "name":
        values += ["../etc", "a" * 200, "bad name"]
    return values


def base_args(parser: argparse.ArgumentParser, files: Files, skip: str = "") -> list[str]:
    """Arguments that keep a verb away from anything real: a name that is not running,
    an empty control directory, a missing config for a required one."""
    args: list[str] = []
    for action in _options(parser):
        if action.dest == skip:
            continue
        flag = action.option_strings[-1]
        if action.dest == "control_dir":
            args += [flag, str(files.control_dir)]
        elif action.dest == "name":
            args += [flag, NOT_RUNNING]
        elif action.required:
            args += [flag, str(files.missing) if action.dest == "config" else NOT_RUNNING]
    for action in _positionals(parser):
        if action.dest != skip and action.nargs not in ("?", "*"):
            args.append(NOT_RUNNING)
    return args


def sweep(path: tuple[str, ...], parser: argparse.ArgumentParser, files: Files) -> list[list[str]]:
    if any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):
        return [[*path, "--no-such-option"], [*path, "no-such-command"]]
    cases = [[*path, *base_args(parser, files), "--no-such-option"]]
    for action in _options(parser):
        base = base_args(parser, files, skip=action.dest)
        for value in hostile_values(action, files):
            cases.append([*path, *base, f"{action.option_strings[-1]}={value}"])
    for action in _positionals(parser):
        base = base_args(parser, files, skip=action.dest)
        for value in ("", "../../etc/passwd", "x" * 300):
            cases.append([*path, *base, value])
    return cases


@pytest.mark.timeout(600)
@pytest.mark.parametrize("path", list(VERBS), ids=lambda p: " ".join(p) or "sclp")
def test_every_verb_refuses_hostile_arguments_on_one_line(
    path: tuple[str, ...], files: Files
) -> None:
    cases = sweep(path, VERBS[path], files)
    assert cases
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda args: run_sclp(args, files), cases))
    for args, result in zip(cases, results, strict=True):
        assert_one_error(args, result)


# -- explicit cases: the message names the argument and the fix ------------------------


def _explicit(files: Files) -> list[tuple[list[str], str]]:
    f = files
    https = "https://127.0.0.1:9"
    return [
        (["run", "--config", str(f.not_utf8)], "(line 1): byte 0xf6 is not UTF-8 text; save"),
        (["run", "--config", str(f.directory)], "it is a directory; give the endpoint's .toml"),
        (["run", "--config", str(f.missing)], "No such file or directory"),
        (["run", "--config", str(f.under_a_file)], "Not a directory"),
        (["run", "--config", ""], "the config file name is empty"),
        (["run", "--config", str(f.bad_values)], "reorder_depth (line 5): -5 packets is out"),
        (["health", "--timeout", "-1"], "argument --timeout: -1 is out of range; use"),
        (["health", "--timeout", "nan"], "argument --timeout: nan is not a finite number"),
        (["health", "--timeout", "inf"], "argument --timeout: inf is not a finite number"),
        (["health", "--timeout", "0"], "argument --timeout: 0 is out of range"),
        (["top", "--interval", "0"], "argument --interval: 0 is out of range"),
        (["top", "--interval", "-1"], "argument --interval: -1 is out of range"),
        (["top", "--interval", "nan"], "argument --interval: nan is not a finite number"),
        (["stats", "--name", "../x"], "argument --name: '../x' is not an endpoint name"),
        (["stats", "--control-dir", str(f.not_utf8)], f"{f.not_utf8} is not a directory"),
        (["stats", "--control-dir", str(f.under_a_file)], f"{f.not_utf8} is not a directory"),
        (
            ["cluster", "--etcd", https, "--ca", "/nonexistent.pem"],
            "--ca: /nonexistent.pem is not a readable file",
        ),
        (
            ["cluster", "--etcd", https, "--cert", "/nonexistent.pem", "--key", str(f.not_utf8)],
            "--cert: /nonexistent.pem is not a readable file: it does not exist",
        ),
        (
            ["cluster", "--etcd", https, "--cert", str(f.not_utf8), "--key", str(f.directory)],
            f"--key: {f.directory} is not a readable file: it is a directory",
        ),
        (["cluster", "--etcd", https, "--cert", str(f.not_utf8)], "give both --cert and --key"),
        (["cluster", "--etcd", "http://127.0.0.1:9", "--ca", str(f.not_utf8)], "use https://"),
        (["cluster", "--etcd", "http://10.0.0.5:notaport"], "--etcd: 'http://10.0.0.5:notaport'"),
        (["cluster", "--etcd", "http://10.0.0.5:99999"], "the port must be a number 1..65535"),
        (["cluster", "--etcd", "http://a:b:c"], "'a:b:c' is not host:port"),
        (["cluster", "--etcd", https, "--prefix", ""], "--prefix: empty"),
        (["cluster", "--etcd", https, "--prefix", "no slash"], "--prefix: 'no slash' is not"),
        (["cluster", "--config", str(f.not_utf8)], "is not UTF-8 text"),
        (["cluster", "--config", str(f.directory)], "it is a directory"),
        (["demo", "--seconds", "-1"], "argument --seconds: -1 is out of range; use 1..3600"),
        (["demo", "--seconds", "nan"], "argument --seconds: 'nan' is not an integer"),
        (["demo", "--seconds", "99999999999999999999"], "argument --seconds: 9999"),
        (["demo", "--hosts", "2"], "argument --hosts: give 3 or more"),
        (["demo", "--hosts", "100000"], "argument --hosts: give at most 32"),
        (["demo", "--protocol", "sctp"], "argument --protocol: invalid choice"),
        (["bench", "--duration", "99999999999999999999"], "--duration: must be at most 3600"),
        (["bench", "--duration", "0"], "--duration: must be at least 1"),
        (["bench", "--duration", "nan"], "argument --duration: invalid int value: 'nan'"),
        (["bench", "--repeat", "1000"], "--repeat: must be at most 100"),
        (["bench", "--udp-length", "-1"], "--udp-length: 16..1472 bytes"),
        (["bench", "--json", str(f.directory)], f"--json: {f.directory} is a directory"),
        (["bench", "--json", str(f.under_a_file)], f"--json: {f.not_utf8} is not a directory"),
        (["bench", "--plot", str(f.missing / "x.png")], f"--plot: {f.missing} does not exist"),
        (["bench", "--markdown", ""], "--markdown: empty; give a file name"),
        (["bench", "--protocols", ""], "--protocols: empty"),
        (["bench", "--protocols", "vxlan,bogus"], "--protocols: unknown configuration 'bogus'"),
        (["bench", "--transports", ""], "--transports: give tcp, udp or tcp,udp"),
        (["guest", "build", "--cache", ""], "--cache: empty; give a directory"),
        (["guest", "build", "--cache", str(f.not_utf8)], f"--cache: {f.not_utf8} is not a dir"),
        (["guest", "build", "--cache", str(f.under_a_file)], "Not a directory"),
        (["selfcheck", "extra"], "unrecognized arguments: extra"),
        (["no-such-verb"], "argument COMMAND: invalid choice: 'no-such-verb'"),
    ]


@pytest.mark.timeout(600)
def test_explicit_hostile_cases_name_the_argument_and_the_fix(files: Files) -> None:
    cases = _explicit(files)
    control = ["--control-dir", str(files.control_dir)]
    argvs = [
        [*args, *control]
        if args[0] in ("stats", "health", "top") and "--control-dir" not in args
        else args
        for args, _ in cases
    ]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda args: run_sclp(args, files), argvs))
    for args, (_, fragment), result in zip(argvs, cases, results, strict=True):
        line = assert_one_error(args, result)
        assert fragment in line, f"{fragment!r} not in {line!r} (sclp {' '.join(args)})"


# -- the VM MTU rule where the underlay MTU is the device's ---------------------------


def _mtu_config(topo: Topology, host: str, name: str, *networks: str) -> str:
    text = f'name = "{name}"\n[underlay]\nlocal = "{UNDERLAY[0]}"\nnamespace = "{host}"\n'
    return text + "".join(networks)


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_a_vxlan_mtu_over_the_underlay_device_stops_the_start_on_one_line() -> None:
    with Topology() as topo:
        host = topo.underlay_hosts("mh1", "mh2")[0]  # ul0, MTU 1500
        name = topo.endpoint_name("m1")
        config = topo.workdir / "m1.toml"
        net = f'[[network]]\nvni = 42\nprotocol = "vxlan"\ntap = "mt{topo.tag}"\nmtu = 9000\n'
        config.write_text(_mtu_config(topo, host, name, net))
        args = ["run", "--config", str(config)]
        line = assert_one_error(args, run_sclp(args))
        assert line == (
            "sclp: error: network[0].mtu (vni 42): 9000 is more than the underlay MTU 1500 "
            "(of ul0); use mtu = 1450 (the most a vxlan packet, 50 bytes of headers, carries "
            "unfragmented) or at most 1500 (full-size frames then go in two fragments), or "
            "raise the MTU of ul0"
        )
        assert not os.path.exists(socket_path(name))
        with nsio.NetNS(host) as ns:
            assert not ns.link_exists(f"mt{topo.tag}")  # refused before any TAP
    assert not topo.leftovers()


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_a_reload_does_not_add_a_network_whose_mtu_does_not_fit() -> None:
    with Topology() as topo:
        host = topo.underlay_hosts("rh1", "rh2")[0]
        name = topo.endpoint_name("m2")
        net42 = f'[[network]]\nvni = 42\nprotocol = "vxlan"\ntap = "ma{topo.tag}"\n'
        net43 = f'[[network]]\nvni = 43\nprotocol = "geneve"\ntap = "mb{topo.tag}"\nmtu = 1501\n'
        ep = topo.start_endpoint(name, _mtu_config(topo, host, name, net42))
        (topo.workdir / f"{name}.toml").write_text(_mtu_config(topo, host, name, net42, net43))
        os.kill(ep.proc.pid, signal.SIGHUP)
        wait_for(lambda: "vni 43 not added" in ep.log_text(), 10.0, what="the refusal logged")
        assert "mtu 1501 is more than the underlay MTU 1500; use mtu = 1450" in ep.log_text()
        assert set(ep.stats()["vni"]) == {"42"}
        assert topo.stop_endpoints() == [0], ep.log_text()[-800:]
    assert not topo.leftovers()
