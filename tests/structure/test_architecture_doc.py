"""docs/architecture.md stays true: every function, class and module it names exists,
and every ``docs/...`` page the code and tests cite is in the repository."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"

# `Class.method` or `function` in backticks, with the module the doc places it in.
_NAMED_IN_MODULE = {
    "sclp.endpoint.runner": (
        "Runner._on_port",
        "Runner._on_udp",
        "Runner._on_raw",
        "Runner._deliver",
        "UnderlaySender.send",
        "FaultySender",
        "TAP_BUDGET",
    ),
    "sclp.endpoint.datapath": (
        "DataPath.from_vm",
        "DataPath.from_udp",
        "DataPath.from_ip",
        "DataPath.from_sclp_batch",
        "DataPath.from_stt_batch",
        "DataPath._switch",
        "DataPath._encapsulate",
        "DataPath._split",
        "DataPath._sclp_payload",
        "DataPath._decapsulate",
        "DataPath._stt_segment",
        "DataPath._deliver_net",
        "DataPath.expire",
        "DataPath.next_deadline",
        "DataPath.set_peers",
        "HEADROOM",
    ),
    "sclp.endpoint.tunnels": (
        "Tunnel.transmit",
        "Tunnel.decapsulate",
        "Tunnel.overhead",
        "tunnel_for",
        "TUNNEL_TYPES",
        "Channel",
        "Send",
    ),
    "sclp.endpoint.provision": ("open_channel",),
    "sclp.endpoint.nve": ("Endpoint._apply_view",),
    "sclp.endpoint.registry": ("RegistryLink",),
    "sclp.endpoint.config": ("Protocol", "ConfigError"),
    "sclp.engine.tso": ("split_gso_frame",),
    "sclp.engine.reassembler": (
        "Reassembler.add_coalesced",
        "Reassembler.add_segment",
        "Reassembler.add_batch",
    ),
    "sclp.engine.stt": ("SttReassembler.add_segment", "SttReassembler.add_batch"),
    "sclp.switch.fdb": ("Fdb.set_remote", "Fdb"),
    "sclp.io.udp": ("UdpSocket.recv_batch",),
    "sclp.io.tap": ("TapDevice",),
    "sclp.io.attach": ("AttachedPort",),
    "sclp.io.packet": ("PacketTap",),
    "sclp.io.rxring": ("RxRing",),
    "sclp.io._mmsg": ("RawReceiver",),
    "sclp.endpoint.service": ("Notifier.ready", "Notifier.reloading", "Notifier.stopping"),
    "sclp.wire.errors": ("MalformedPacket", "DropReason"),
}


@pytest.mark.parametrize(
    ("module", "name"),
    [(m, n) for m, names in _NAMED_IN_MODULE.items() for n in names],
)
def test_named_code_exists(module: str, name: str) -> None:
    obj: object = importlib.import_module(module)
    for part in name.split("."):
        assert hasattr(obj, part), f"{module}.{name} is named in docs/architecture.md"
        obj = getattr(obj, part)


def test_every_name_checked_is_in_the_doc() -> None:
    """The list above is the doc's: each name (or its method part) is written there."""
    text = DOC.read_text()
    for names in _NAMED_IN_MODULE.values():
        for name in names:
            assert f"`{name}" in text or f"`{name.split('.')[-1]}" in text, name


def test_every_backticked_module_path_exists() -> None:
    paths = re.findall(r"`((?:[a-z_]+/)+[a-z_]+\.py)`", DOC.read_text())
    assert len(paths) > 10
    for rel in paths:
        if rel.startswith("tests/"):
            assert (ROOT / rel).is_file(), rel
        else:
            assert (ROOT / "src" / "sclp" / rel).is_file(), rel


def test_docs_cited_by_code_and_tests_exist() -> None:
    cited: set[str] = set()
    for tree in ("src", "tests", "benchmarks"):
        for path in (ROOT / tree).rglob("*.py"):
            cited.update(re.findall(r"docs/[A-Za-z0-9_.-]+\.md", path.read_text()))
    assert "docs/architecture.md" in cited
    missing = sorted(c for c in cited if not (ROOT / c).is_file())
    assert not missing, f"cited but not in the repository: {missing}"
