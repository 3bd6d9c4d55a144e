"""What ``sclp bench`` was asked to do: :class:`BenchOptions`, its defaults, and the
command line that reproduces a run.

Why apart: the options are shared by the CLI (which builds them), the run (which
follows them) and the report (which prints the reproducing command).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from sclp.lab.bench.configs import (
    BenchConfig,
    all_configs,
    default_guest_configs,
    quick_configs,
    select_configs,
)
from sclp.lab.bench.udprate import FULL_SEARCH, QUICK_SEARCH, RateSearch

TRANSPORTS: Final = ("tcp", "udp")
GUEST_TRANSPORTS: Final = ("tcp",)  # --vms: UDP only when asked (its rate search is long)


# 1400 B of UDP payload + 28 B of IPv4/UDP headers fits the smallest VM MTU measured
# (1450: VXLAN and Geneve adjusted to a 1500 B underlay), so no configuration
# fragments inside the VM and every datagram is one frame on every path.
UDP_DATAGRAM_BYTES: Final = 1400

DEFAULT_DURATION: Final = 10
DEFAULT_REPEAT: Final = 3
QUICK_DURATION: Final = 1
QUICK_REPEAT: Final = 1


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """What ``sclp bench`` was asked to do; ``None`` duration/repeat: the defaults
    (10 s × 3, or 1 s × 1 with ``quick``); no ``transports``: TCP and UDP, or TCP
    alone with ``vms``.  ``vms="qemu"``: QEMU guests as the VMs."""

    protocols: tuple[str, ...] | None = None
    duration: int | None = None
    repeat: int | None = None
    transports: tuple[str, ...] = ()
    udp_length: int = UDP_DATAGRAM_BYTES
    quick: bool = False
    json_path: Path | None = None
    plot_path: Path | None = None
    markdown_path: Path | None = None
    vms: str | None = None

    def __post_init__(self) -> None:
        if not self.transports:
            object.__setattr__(self, "transports", self.default_transports)

    @property
    def default_transports(self) -> tuple[str, ...]:
        return GUEST_TRANSPORTS if self.vms else TRANSPORTS

    @property
    def seconds(self) -> int:
        if self.duration is not None:
            return self.duration
        return QUICK_DURATION if self.quick else DEFAULT_DURATION

    @property
    def repeats(self) -> int:
        if self.repeat is not None:
            return self.repeat
        return QUICK_REPEAT if self.quick else DEFAULT_REPEAT

    @property
    def chart_path(self) -> Path | None:
        """Where the chart goes: ``--plot``, or next to the Markdown page."""
        if self.plot_path is not None:
            return self.plot_path
        if self.markdown_path is not None:
            return self.markdown_path.with_suffix(".png")
        return None

    @property
    def udp_search(self) -> RateSearch:
        """How the UDP rate is searched: short with ``quick``."""
        return QUICK_SEARCH if self.quick else FULL_SEARCH

    def configs(self) -> list[BenchConfig]:
        if self.protocols is not None:
            return select_configs(self.protocols, self.vms)
        if self.vms:
            return default_guest_configs()
        return quick_configs() if self.quick else all_configs()

    def command_line(self) -> str:
        """The ``sclp bench`` command that reproduces this run."""
        args = ["sclp", "bench"]
        if self.vms:
            args += ["--vms", self.vms]
        if self.quick:
            args.append("--quick")
        if self.protocols is not None:
            args += ["--protocols", ",".join(self.protocols)]
        if self.duration is not None:
            args += ["--duration", str(self.duration)]
        if self.repeat is not None:
            args += ["--repeat", str(self.repeat)]
        if self.transports != self.default_transports:
            args += ["--transports", ",".join(self.transports)]
        if self.udp_length != UDP_DATAGRAM_BYTES:
            args += ["--udp-length", str(self.udp_length)]
        for flag, path in (
            ("--json", self.json_path),
            ("--plot", self.plot_path),
            ("--markdown", self.markdown_path),
        ):
            if path is not None:
                args += [flag, str(path)]
        return shlex.join(args)
