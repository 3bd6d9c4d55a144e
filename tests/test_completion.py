"""``sclp completion bash|zsh``: the scripts parse, and bash completes every subcommand."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sclp.cli import build_parser

pytestmark = pytest.mark.timeout(60)

TIMEOUT = 30.0


def subcommands(parser: argparse.ArgumentParser) -> dict[tuple[str, ...], list[str]]:
    """Every command path (``()`` for ``sclp`` itself, ``("guest",)``, ...) and the
    subcommands argparse offers after it."""
    found: dict[tuple[str, ...], list[str]] = {}

    def walk(p: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                found[path] = list(action.choices)
                for name, child in action.choices.items():
                    walk(child, (*path, name))

    walk(parser, ())
    return found


def script(shell: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "sclp", "completion", shell],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def bash_complete(script_path: Path, words: list[str]) -> list[str]:
    """What bash offers for the last (empty) word of ``words``, by the completion
    function the script registers for ``sclp``."""
    line = " ".join(words)
    quoted = " ".join(f"'{w}'" for w in words)
    program = f"""
source {script_path}
fn=$(complete -p sclp | sed -E 's/.*-F ([^ ]+) .*/\\1/')
COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}
COMP_LINE='{line}'; COMP_POINT=${{#COMP_LINE}}
"$fn" sclp '{words[-1]}' '{words[-2]}'
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    result = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", program],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_script_parses_and_completes_every_subcommand(tmp_path: Path) -> None:
    path = tmp_path / "sclp.bash"
    path.write_text(script("bash"))
    check = subprocess.run(
        ["bash", "-n", str(path)], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert check.returncode == 0, check.stderr
    commands = subcommands(build_parser())
    assert "completion" in commands[()]
    for path_words, names in commands.items():
        offered = bash_complete(path, ["sclp", *path_words, ""])
        assert sorted(offered) == sorted(names), path_words


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completes_choices_and_file_names(tmp_path: Path) -> None:
    path = tmp_path / "sclp.bash"
    path.write_text(script("bash"))
    assert bash_complete(path, ["sclp", "demo", "--carrier", ""]) == ["ip", "udp"]
    (tmp_path / "host1.toml").write_text("")
    offered = bash_complete(path, ["sclp", "run", "--config", f"{tmp_path}/ho"])
    assert offered == [f"{tmp_path}/host1.toml"]


def test_zsh_script_defines_sclp_and_every_subcommand(tmp_path: Path) -> None:
    text = script("zsh")
    assert text.startswith("#compdef sclp")
    for names in subcommands(build_parser()).values():
        for name in names:
            assert f"\n    {name}:'" in text, name
    if shutil.which("zsh") is not None:  # not part of the quick start's packages
        path = tmp_path / "_sclp"
        path.write_text(text)
        check = subprocess.run(
            ["zsh", "-n", str(path)], capture_output=True, text=True, timeout=TIMEOUT
        )
        assert check.returncode == 0, check.stderr


def test_an_unknown_shell_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sclp", "completion", "fish"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 2
    assert "invalid choice: 'fish'" in result.stderr and "Traceback" not in result.stderr
