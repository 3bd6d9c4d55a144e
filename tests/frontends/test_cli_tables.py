"""The ``sclp show`` and ``sclp stats`` tables print what the endpoint said, as it is:
a MAC such as ``02:cd:...`` or ``..:ab:..`` is not an emoji code, and ``[...]`` in an
error text is not markup."""

from __future__ import annotations

import pytest

from sclp.cli import _print_show

# ":cd:" and ":ab:" are emoji codes to rich (a compact disc, the AB blood type).
MACS = ("02:cd:00:00:00:01", "02:00:ab:00:00:02")


def test_show_fdb_prints_macs_literally(capsys: pytest.CaptureFixture[str]) -> None:
    rows: list[dict[str, object]] = [
        {"vni": 42, "mac": mac, "port": None, "peer": "10.0.0.2", "origin": "learned", "age_s": 1}
        for mac in MACS
    ]
    _print_show("fdb", "host1", [42], rows)
    out = capsys.readouterr().out
    for mac in MACS:
        assert mac in out


def test_show_peers_prints_error_text_literally(capsys: pytest.CaptureFixture[str]) -> None:
    row: dict[str, object] = {
        "vni": 42,
        "address": "10.0.0.2",
        "protocol": "vxlan",
        "carrier": "udp",
        "origin": "static",
        "last_heard_s": None,
        "tx_frames": 1,
        "tx_bytes": 2,
        "rx_frames": 3,
        "rx_bytes": 4,
        "tx_refused": 0,
        "tx_async_errors": 1,
        "failing_since_s": 0.5,
        "last_error": "[bold]port_unreachable:cd:",
    }
    _print_show("peers", "host1", [42], [row])
    assert "[bold]port_unreachable:cd:" in capsys.readouterr().out
