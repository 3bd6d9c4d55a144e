"""``sclp show fdb|peers|ports``: the rows a data path gives (sclp.endpoint.show) and
what the command prints of them, a table per VNI or the JSON whose keys
docs/operations.md documents.  No root: the control socket's answer is built from an
in-memory data path and handed to the command in place of the socket's."""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path
from typing import Any

import pytest

from sclp import cli
from sclp.endpoint import control, show
from sclp.endpoint.config import parse_config
from sclp.endpoint.datapath import DataPath
from sclp.endpoint.txerrors import TxErrors
from sclp.io.errqueue import SendError

from .test_datapath import MAC_A, MAC_B, A, B, C, config, tcp_frame, transfer, vm_read

DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
LIST_KEYS = {"fdb": "entries", "peers": "peers", "ports": "ports"}


def documented_keys() -> dict[str, list[str]]:
    """The keys docs/operations.md gives for each ``sclp show X --json`` row, in order:
    the first column of the table after the line naming the command."""
    text = DOCS.read_text()
    section = text[text.index("## Looking inside: `sclp show`") :]
    found: dict[str, list[str]] = {}
    for what in LIST_KEYS:
        start = section.index(f"`sclp show {what} --json`, key `{LIST_KEYS[what]}`:")
        table = section[start:].split("\n\n")[1]
        found[what] = re.findall(r"^\| `([a-z_]+)` \|", table, re.MULTILINE)
    return found


def two_hosts() -> tuple[DataPath, DataPath, float]:
    """A and B after one frame each way over VXLAN; A also has a static entry and a
    cluster-announced peer C."""
    static = '\nstatic = [{mac = "02:00:00:00:00:99", peer = "10.9.0.7"}]\n'
    a = DataPath(parse_config(config(A, [B, C], "vxlan", "ip") + static), 1500)
    b = DataPath(parse_config(config(B, [A], "vxlan", "ip")), 1500)
    a.networks[42].ports[0].ifindex = 7
    transfer(A, b, a.from_vm(a.networks[42].ports[0], *vm_read(tcp_frame(b"a" * 100)), 1.0))
    back = bytearray(tcp_frame(b"b" * 200))
    back[0:12] = MAC_A + MAC_B
    transfer(B, a, b.from_vm(b.networks[42].ports[0], *vm_read(bytes(back)), 2.0), now=2.0)
    return a, b, 5.0


def answer(dp: DataPath, what: str, now: float, cluster: dict[int, frozenset[str]]) -> Any:
    """What the endpoint's control socket sends for ``show WHAT`` (nve.Endpoint._show)."""
    table = {
        "fdb": lambda: show.fdb(dp, now),
        "peers": lambda: show.peers(dp, now, cluster),
        "ports": lambda: show.ports(dp),
    }[what]()
    return json.loads(json.dumps({"name": "ep", "vnis": sorted(dp.networks), **table}))


def run_show(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], reply: Any, *args: str
) -> tuple[int, str, str]:
    monkeypatch.setattr(control, "query", lambda path, request, timeout=3.0: reply)
    code = cli.main(["show", *args, "--name", "ep"])
    out, err = capsys.readouterr()
    return code, out, err


def test_fdb_rows_name_the_port_or_the_peer_and_the_origin() -> None:
    a, _, now = two_hosts()
    rows = show.fdb(a, now)["rows"]
    assert rows == [
        [42, "02:00:00:00:00:99", None, "10.9.0.7", "static", None],
        [42, MAC_A.hex(":"), "t42", None, "learned", 4.0],
        [42, MAC_B.hex(":"), None, B, "learned", 3.0],
    ]


def test_the_streamed_fdb_is_the_same_document_in_parts_of_chunk_rows() -> None:
    a, _, now = two_hosts()
    for i in range(2500):  # three chunks of learned entries behind B
        a.networks[42].fdb.learn(bytes.fromhex("02bb0000") + i.to_bytes(2), B, now)
    streamed = show.fdb_streamed(a, now, {"name": "ep", "vnis": [42]})
    parts = list(streamed.parts)
    assert len(parts) == 1 + 3 + 1  # head, 2,503 rows in chunks of 1,000, tail
    whole = json.loads(b"".join(parts))
    assert whole == json.loads(json.dumps({"name": "ep", "vnis": [42], **show.fdb(a, now)}))
    assert len(whole["rows"]) == 2503


def test_peer_rows_say_where_a_peer_came_from_and_count_its_frames() -> None:
    a, _, now = two_hosts()
    a.set_peers(42, [B, C, "10.9.0.8"])
    rows = {r[1]: r for r in show.peers(a, now, {42: frozenset({"10.9.0.8"})})["rows"]}
    frame_to_b, frame_from_b = len(tcp_frame(b"a" * 100)), len(tcp_frame(b"b" * 200))
    assert rows[B] == [
        *(42, B, "vxlan", "udp", "static", 3.0, 1, frame_to_b, 1, frame_from_b),
        *(0, 0, None, None),
    ]
    assert rows["10.9.0.8"][4:] == ["cluster", None, 0, 0, 0, 0, 0, 0, None, None]
    # the flood of the first frame reached C too; a peer only a static entry names
    assert rows[C][4:8] == ["static", None, 1, frame_to_b]
    assert rows["10.9.0.7"][4] == "static"


def test_peer_rows_say_since_when_sends_to_a_peer_fail_and_why() -> None:
    a, _, now = two_hosts()
    errors = TxErrors({})
    port_unreachable = SendError(B, errno.ECONNREFUSED, 2, 3, 3, 0, B)
    errors.reported(port_unreachable, now - 2.0)
    errors.reported(port_unreachable, now - 0.5)
    errors.refused(C, OSError(errno.ENOBUFS, "No buffer space available"), 3, now - 1.0)
    rows = {r[1]: r for r in show.peers(a, now, {}, errors=errors)["rows"]}
    assert rows[B][-4:] == [0, 2, 2.0, "port_unreachable"]
    assert rows[C][-4:] == [3, 0, 1.0, "tx_neigh: No buffer space available"]
    assert rows["10.9.0.7"][-4:] == [0, 0, None, None]
    # five quiet seconds: no longer failing, the counts and the last error stay
    later = {r[1]: r for r in show.peers(a, now + 4.6, {}, errors=errors)["rows"]}
    assert later[B][-4:] == [0, 2, None, "port_unreachable"]
    assert later[C][-4:] == [3, 0, None, "tx_neigh: No buffer space available"]


def test_port_rows() -> None:
    a, _, _ = two_hosts()
    # rx on a port is counted by the runner, at the TAP write: none here
    frame_to_b = len(tcp_frame(b"a" * 100))
    assert show.ports(a)["rows"] == [[42, "t42", "tap", 7, 1450, 1, frame_to_b, 0, 0]]


@pytest.mark.parametrize("what", list(LIST_KEYS))
def test_the_json_keys_are_exactly_the_documented_ones(
    what: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    a, _, now = two_hosts()
    code, out, err = run_show(monkeypatch, capsys, answer(a, what, now, {}), what, "--json")
    assert (code, err) == (0, "")
    printed = json.loads(out)
    assert list(printed) == ["name", LIST_KEYS[what]]
    rows = printed[LIST_KEYS[what]]
    assert rows
    for row in rows:
        assert list(row) == documented_keys()[what]


def test_a_table_per_vni_and_the_vni_filter(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    a, _, now = two_hosts()
    reply = answer(a, "fdb", now, {})
    code, out, _ = run_show(monkeypatch, capsys, reply, "fdb")
    assert code == 0
    assert "vni 42, 3 entries" in out and MAC_B.hex(":") in out and "t42" in out
    code, out, _ = run_show(monkeypatch, capsys, reply, "fdb", "--vni", "42", "--json")
    assert code == 0 and len(json.loads(out)["entries"]) == 3
    code, out, err = run_show(monkeypatch, capsys, reply, "fdb", "--vni", "7")
    assert code == 1 and out == ""
    assert err == "sclp: error: endpoint 'ep' has no vni 7 (it serves: 42)\n"


def test_an_endpoint_without_show_is_one_error_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    reply = {"error": "unknown request 'show peers'"}
    code, out, err = run_show(monkeypatch, capsys, reply, "peers")
    assert code == 1 and out == ""
    assert err.startswith("sclp: error: endpoint 'ep' does not know `show peers`")
    assert err.count("\n") == 1


def test_no_endpoint_is_one_error_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = cli.main(["show", "ports", "--name", "nosuch", "--control-dir", str(tmp_path)])
    _, err = capsys.readouterr()
    assert code == 1
    assert err.startswith("sclp: error: no endpoint control socket at ") and err.count("\n") == 1


def test_control_dir_is_in_every_verbs_help(capsys: pytest.CaptureFixture[str]) -> None:
    for verb in ("stats", "health", "top", "show"):
        with pytest.raises(SystemExit):
            cli.main([verb, "--help"])
        out, _ = capsys.readouterr()
        assert "--control-dir" in out and "directory of the control sockets" in out
