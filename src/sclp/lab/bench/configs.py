"""Which testbeds ``sclp bench`` measures: :class:`BenchConfig` and the full,
``--protocols`` and ``--quick`` selections.

Why apart: the list of configurations (references: a veth, the kernel's VXLAN,
tinc 1.0 in switch mode; classic tunnels at two VM MTUs,
STT, SCLP per carrier, the pre-reassembly ablation) is what a reader of the results
table needs to find, and what the CLI checks ``--protocols`` against before anything
is built.  With ``--vms qemu`` the VMs are QEMU guests
(:class:`~sclp.lab.guest_testbed.GuestTestbed`): the reference is then the guests'
TAPs on a Linux bridge (``bridge``), the kernel and tinc references do not apply,
and every one of our tunnels but the ablations can be measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Final

from sclp.lab.testbed import Testbed

REFERENCES: Final = ("veth", "kernel-vxlan")  # kernel paths: no process to measure
USER_SPACE_REFERENCES: Final = ("tinc",)  # a C tunnel daemon per host: its CPU is measured
GUEST_REFERENCES: Final = ("bridge",)  # --vms: both guests' TAPs on one Linux bridge
VM_KINDS: Final = ("qemu",)  # --vms
CLASSIC: Final = ("vxlan", "geneve", "nvgre")
SCLP_PROTOCOLS: Final = ("vxlan-sclp", "geneve-sclp")
CARRIERS: Final = ("ip", "udp")
UNADJUSTED_MTU: Final = 1500

# The endpoint's [tuning] table for each ablation (inserted after `name = ...`).
ABLATIONS: Final = {
    "no-level1": "[tuning]\nrx_batch = false\n",  # no kernel UDP GRO, no batched receive
    "no-level2": "[tuning]\ndeliver_gso = false\n",  # reassembled frame -> MSS-sized frames
}

QUICK_LABELS: Final = (
    "veth",
    "kernel-vxlan",
    "vxlan",
    "vxlan-sclp/udp",
    "vxlan-sclp/udp/no-level2",
    "tinc",
)
# --vms qemu, with or without --quick (each configuration boots two guests).
GUEST_LABELS: Final = ("bridge", "vxlan", "vxlan-sclp/ip", "vxlan-sclp/udp")


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """One testbed to measure.  ``vm_mtu=None`` is the endpoint's default (adjusted to
    avoid fragmentation for the classic tunnels); ``kernel_offloads`` only matters
    for ``kernel-vxlan``.  ``vms="qemu"``: the VMs are QEMU guests (the label does
    not change; a run is either all guests or all namespaces)."""

    protocol: str
    carrier: str | None = None
    vm_mtu: int | None = None
    ablation: str | None = None
    kernel_offloads: bool = True
    vms: str | None = None

    @property
    def label(self) -> str:
        """The name used by ``--protocols``, the table and the chart:
        ``vxlan``, ``vxlan/mtu1500``, ``vxlan-sclp/udp``, ``vxlan-sclp/udp/no-level1``,
        ``kernel-vxlan/no-offloads``."""
        parts = [self.protocol]
        if self.carrier is not None:
            parts.append(self.carrier)
        if self.vm_mtu is not None:
            parts.append(f"mtu{self.vm_mtu}")
        if self.ablation is not None:
            parts.append(self.ablation)
        if not self.kernel_offloads:
            parts.append("no-offloads")
        return "/".join(parts)

    @property
    def is_reference(self) -> bool:
        """Not ours: the kernel's paths, tinc and the guests' bridge."""
        return self.protocol in (*REFERENCES, *USER_SPACE_REFERENCES, *GUEST_REFERENCES)

    @property
    def has_endpoints(self) -> bool:
        """Processes whose CPU and RSS are measured: our endpoints, or tinc's daemons."""
        return self.protocol not in (*REFERENCES, *GUEST_REFERENCES)

    @property
    def is_native(self) -> bool:
        """Our native mode (raw IP: SCLP's protocol 234, STT's pseudo-TCP), judged
        against the native I/O floor."""
        return self.protocol == "stt" or self.carrier == "ip"

    def testbed(self) -> Testbed:
        if self.vms == "qemu":
            from sclp.lab.guest_testbed import GuestTestbed

            return GuestTestbed(
                protocol=self.protocol,
                carrier=self.carrier or "ip",
                vm_mtu=self.vm_mtu,
                extra_config=ABLATIONS[self.ablation] if self.ablation else "",
            )
        return Testbed(
            protocol=self.protocol,
            carrier=self.carrier or "ip",
            vm_mtu=self.vm_mtu,
            extra_config=ABLATIONS[self.ablation] if self.ablation else "",
            kernel_offloads=self.kernel_offloads,
        )


def all_configs() -> list[BenchConfig]:
    """Every configuration of a full run, in table order: references (tinc among
    them), classic tunnels (VM MTU 1500 then adjusted), STT, SCLP per carrier, then
    the ablation."""
    configs = [
        BenchConfig("veth"),
        BenchConfig("kernel-vxlan"),
        BenchConfig("kernel-vxlan", kernel_offloads=False),
        BenchConfig("tinc"),
    ]
    for protocol in CLASSIC:
        configs += [BenchConfig(protocol, vm_mtu=UNADJUSTED_MTU), BenchConfig(protocol)]
    configs.append(BenchConfig("stt"))
    for protocol in SCLP_PROTOCOLS:
        configs += [BenchConfig(protocol, carrier) for carrier in CARRIERS]
    for carrier in CARRIERS:
        configs += [BenchConfig("vxlan-sclp", carrier, ablation=a) for a in ABLATIONS]
    return configs


def guest_configs() -> list[BenchConfig]:
    """Every configuration ``--vms qemu`` can measure, in table order: the bridge
    reference, then each of our tunnels of :func:`all_configs` (the kernel's VXLAN,
    the veth and tinc have no place for a QEMU guest's TAP).  Not the ablations:
    they take the endpoint apart, which the namespace bench measures without two
    guest boots per configuration."""
    ours = [c for c in all_configs() if not c.is_reference and c.ablation is None]
    return [replace(c, vms="qemu") for c in [BenchConfig("bridge"), *ours]]


def select_configs(names: Sequence[str], vms: str | None = None) -> list[BenchConfig]:
    """The configurations named by ``--protocols``, in table order.  A name selects
    the configuration with that label and every variant below it: ``vxlan`` is
    ``vxlan`` and ``vxlan/mtu1500``; ``vxlan-sclp/udp`` includes its ablations;
    ``kernel-vxlan`` both kernel references.  Raises ValueError naming an unknown
    name and the known labels (of :func:`guest_configs` with ``vms``)."""
    configs = guest_configs() if vms else all_configs()
    chosen: set[BenchConfig] = set()
    for raw in names:
        name = raw.strip().strip("/")
        if not name:
            continue
        found = [c for c in configs if c.label == name or c.label.startswith(name + "/")]
        if not found:
            known = ", ".join(c.label for c in configs)
            where = f" with --vms {vms}" if vms else ""
            raise ValueError(f"unknown configuration {raw!r}{where}; known: {known}")
        chosen.update(found)
    return [c for c in configs if c in chosen]


def quick_configs() -> list[BenchConfig]:
    by_label = {c.label: c for c in all_configs()}
    return [by_label[label] for label in QUICK_LABELS]


def default_guest_configs() -> list[BenchConfig]:
    """``--vms qemu`` without ``--protocols`` (with or without ``--quick``)."""
    by_label = {c.label: c for c in guest_configs()}
    return [by_label[label] for label in GUEST_LABELS]
