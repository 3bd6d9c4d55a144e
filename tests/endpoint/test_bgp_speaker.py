"""The supervised BGP speaker (sclp.bgp.speaker) with a real ExaBGP child: started,
restarted with back-off after it dies, stopped with the endpoint, never outliving
it.  No root: the neighbor is an address nothing answers on, ExaBGP does not listen."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sclp.bgp.speaker import BACKOFF_MIN, Neighbor, Speaker, exabgp_config

pytestmark = pytest.mark.timeout(60)

RELAY = f"{sys.executable} -m sclp.bgp.exabgp_main relay"


def config() -> str:
    return exabgp_config(65001, "127.0.0.1", "127.0.0.1", [Neighbor("127.0.0.9", 65000)], 9, RELAY)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[1].split()[0] != "Z"


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.05)


def test_a_speaker_that_dies_is_restarted_after_its_back_off(tmp_path: Path) -> None:
    speaker = Speaker(config(), tmp_path / "bgp")
    try:
        speaker.start(0.0)
        first = speaker.proc
        assert first is not None and speaker.fileno() >= 0
        assert (tmp_path / "bgp" / "exabgp.conf").read_text() == config()
        assert speaker.poll(0.5) is None  # running: nothing to say
        speaker.send(["announce eor l2vpn evpn"])  # accepted without blocking
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        exited = speaker.poll(1.0)
        assert exited is not None and "signal 9" in exited and not speaker.running
        assert speaker.poll(1.0 + BACKOFF_MIN / 2) is None  # waiting out the back-off
        assert speaker.poll(1.0 + BACKOFF_MIN) == "restarted"
        second = speaker.proc
        assert speaker.running and speaker.restarts == 1 and second is not first
        # It dies again at once: the back-off has doubled.
        assert second is not None
        os.killpg(second.pid, signal.SIGKILL)
        second.wait(timeout=10)
        assert speaker.poll(2.0) is not None
        assert speaker.poll(2.0 + BACKOFF_MIN) is None
        assert speaker.poll(2.0 + 2 * BACKOFF_MIN) == "restarted" and speaker.restarts == 2
    finally:
        speaker.close()
    assert not speaker.running


def test_exabgp_dies_with_the_endpoint_that_started_it(tmp_path: Path) -> None:
    """An endpoint killed with SIGKILL takes its ExaBGP with it (PR_SET_PDEATHSIG):
    no BGP session keeps advertising the routes of a dead endpoint."""
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path[:0] = {sys.path!r}
        from sclp.bgp.speaker import Neighbor, Speaker, exabgp_config
        conf = exabgp_config(65001, "127.0.0.1", "127.0.0.1", [Neighbor("127.0.0.9", 65000)],
                             9, {RELAY!r})
        s = Speaker(conf, {str(tmp_path / "bgp")!r})
        s.start(0.0)
        print(s.proc.pid, flush=True)
        time.sleep(60)
        """
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        child = int(owner.stdout.readline())
        wait_until(lambda: alive(child), 10.0, "exabgp running")
        # ExaBGP has reached its reactor once the relay it starts runs.
        wait_until(lambda: children(child), 20.0, "exabgp's relay running")
        owner.kill()
        owner.wait()
        wait_until(lambda: not alive(child), 10.0, "exabgp gone with its endpoint")
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()


def test_a_speaker_that_cannot_start_says_why(tmp_path: Path) -> None:
    """Port 179 not available on the address (here: not an address of this host):
    ExaBGP exits, and the endpoint's line says what ExaBGP said."""
    speaker = Speaker(config(), tmp_path / "bgp", bind="192.0.2.123")
    try:
        speaker.start(0.0)
        assert speaker.proc is not None
        speaker.proc.wait(timeout=20)
        said = speaker.poll(1.0)
        assert said is not None and "status 1" in said
        assert "can not bind to 192.0.2.123:179" in said, said
    finally:
        speaker.close()
