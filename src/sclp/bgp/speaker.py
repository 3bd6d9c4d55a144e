"""The BGP speaker: ExaBGP as a child process of the endpoint, supervised.

:class:`Speaker` writes ExaBGP's configuration (:func:`exabgp_config`: one neighbor
block per ``[bgp]`` neighbor, the ``l2vpn evpn`` family, the JSON encoder for what
it receives), starts ``python -m sclp.bgp.exabgp_main`` with two pipes (commands in,
ExaBGP's JSON out), and never blocks: :meth:`Speaker.read` and :meth:`Speaker.send`
use non-blocking pipes the caller's event loop watches (:meth:`Speaker.fileno`),
and :meth:`Speaker.poll` notices a speaker that exited and starts it again after a
back-off (1 s, doubling to 30 s; back to 1 s once one ran for a minute).  The child
gets SIGTERM when the endpoint dies (``PR_SET_PDEATHSIG``), so no BGP session
outlives the endpoint that owns its routes.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

__all__ = ["BACKOFF_MAX", "EXABGP_MISSING", "Neighbor", "Speaker", "exabgp_config"]

BACKOFF_MIN: Final = 1.0
BACKOFF_MAX: Final = 30.0
STABLE_AFTER: Final = 60.0  # a speaker that ran this long starts the back-off afresh
EXABGP_MISSING: Final = (
    "the BGP speaker ExaBGP is not installed; pip install 'exabgp>=5.0,<5.1' "
    "(a dependency of sclp: reinstall it)"
)
_MAX_PENDING: Final = 8 << 20  # bytes of commands held while the speaker is busy


@dataclass(frozen=True, slots=True)
class Neighbor:
    address: str
    asn: int


def exabgp_config(
    asn: int,
    router_id: str,
    local: str,
    neighbors: Sequence[Neighbor],
    hold_time: int,
    relay: str,
) -> str:
    """ExaBGP's configuration: the relay as the API process (JSON encoder, parsed
    updates and neighbor changes), one neighbor block each, EVPN only.  The local
    address is ``local`` for neighbors of its family (ExaBGP picks one for others)."""
    family = ipaddress.ip_address(local).version
    blocks = [f"process sclp {{\n    run {relay};\n    encoder json;\n}}\n"]
    for n in neighbors:
        same = ipaddress.ip_address(n.address).version == family
        blocks.append(
            f"neighbor {n.address} {{\n"
            f"    router-id {router_id};\n"
            + (f"    local-address {local};\n" if same else "")
            + f"    local-as {asn};\n"
            f"    peer-as {n.asn};\n"
            f"    hold-time {hold_time};\n"
            "    family { l2vpn evpn; }\n"
            "    api { processes [ sclp ]; receive { parsed; update; } neighbor-changes; }\n"
            "}\n"
        )
    return "\n".join(blocks)


class Speaker:
    """One supervised ExaBGP.  ``state_dir`` holds its configuration and log; it
    listens on ``bind`` (port 179) as well as connecting, so two speakers of ours
    reach each other."""

    def __init__(self, config: str, state_dir: str | Path, bind: str = "") -> None:
        self.state_dir = Path(state_dir)
        self.bind = bind
        self.config_text = config
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.last_exit: str | None = None
        self._started_at = 0.0
        self._restart_at: float | None = None
        self._backoff = BACKOFF_MIN
        self._in = b""
        self._out = bytearray()
        self._log: IO[bytes] | None = None
        self.at_eof = False  # its output pipe closed: it is exiting
        self._log_from = 0

    @property
    def running(self) -> bool:
        return self.proc is not None

    @property
    def log_path(self) -> Path:
        return self.state_dir / "exabgp.log"

    def fileno(self) -> int:
        """ExaBGP's output (-1 while it is not running)."""
        proc = self.proc
        return proc.stdout.fileno() if proc is not None and proc.stdout is not None else -1

    def start(self, now: float) -> None:
        """Start ExaBGP (OSError if it cannot be)."""
        if importlib.util.find_spec("exabgp") is None:
            raise OSError(EXABGP_MISSING)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        conf = self.state_dir / "exabgp.conf"
        conf.write_text(self.config_text)
        env = dict(
            os.environ,
            exabgp_daemon_user=os.environ.get("USER") or "root",
            exabgp_daemon_drop="false",
            exabgp_log_destination="stderr",
            exabgp_log_level="WARNING",
            exabgp_api_cli="false",
            exabgp_tcp_bind=self.bind,
            exabgp_api_ack="false",
            SCLP_PARENT_PID=str(os.getpid()),
        )
        if os.geteuid() == 0:
            env["exabgp_daemon_user"] = "root"
        if self._log is None:
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in close()
        self._log_from = self._log.seek(0, os.SEEK_END)  # this run's lines start here
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sclp.bgp.exabgp_main", str(conf)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            close_fds=True,
            start_new_session=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        os.set_blocking(self.proc.stdin.fileno(), False)
        os.set_blocking(self.proc.stdout.fileno(), False)
        self._started_at = now
        self._restart_at = None
        self._in = b""
        self._out.clear()
        self.at_eof = False

    def read(self) -> list[str]:
        """The complete lines ExaBGP has written so far (never blocks)."""
        proc = self.proc
        if proc is None or proc.stdout is None:
            return []
        chunks = []
        while True:
            try:
                data = os.read(proc.stdout.fileno(), 1 << 16)
            except BlockingIOError:
                break
            except OSError:
                break
            if not data:
                self.at_eof = True
                break
            chunks.append(data)
        if not chunks:
            return []
        data = self._in + b"".join(chunks)
        *lines, self._in = data.split(b"\n")
        return [line.decode(errors="replace") for line in lines if line.strip()]

    def send(self, commands: Sequence[str]) -> None:
        """Queue ``commands`` (one line each) and write what the pipe takes now."""
        if self.proc is None:
            return
        for command in commands:
            self._out += command.encode() + b"\n"
        if len(self._out) > _MAX_PENDING:
            self._out.clear()  # hopeless: the restart re-announces everything
            self._kill()
            return
        self.flush()

    def flush(self) -> None:
        proc = self.proc
        if proc is None or proc.stdin is None or not self._out:
            return
        try:
            written = os.write(proc.stdin.fileno(), self._out)
        except BlockingIOError:
            return
        except OSError:
            return  # it exited: poll() notices
        del self._out[:written]

    def exited(self) -> bool:
        """It was running and has exited (:meth:`poll` will reap it and close its
        pipes: stop watching them first)."""
        return self.proc is not None and self.proc.poll() is not None

    def poll(self, now: float) -> str | None:
        """Supervise: a speaker that exited is reaped (returns a line saying how) and
        started again once its back-off has passed (returns "restarted")."""
        proc = self.proc
        if proc is not None:
            code = proc.poll()
            if code is None:
                return None
            self._close_pipes()
            self.proc = None
            ran = now - self._started_at
            if ran >= STABLE_AFTER:
                self._backoff = BACKOFF_MIN
            self._restart_at = now + self._backoff
            self._backoff = min(BACKOFF_MAX, self._backoff * 2)
            how = f"signal {-code}" if code < 0 else f"status {code}"
            said = self._last_words()
            self.last_exit = (
                f"exabgp exited with {how} after {ran:.1f} s"
                + (f": {said}" if said else "")
                + f" (log: {self.log_path})"
            )
            return self.last_exit
        if self._restart_at is not None and now >= self._restart_at:
            try:
                self.start(now)
            except OSError as exc:
                self._restart_at = now + BACKOFF_MAX
                self.last_exit = f"exabgp could not be started: {exc}"
                return self.last_exit
            self.restarts += 1
            return "restarted"
        return None

    def _last_words(self) -> str:
        """The first error line ExaBGP logged in its last run (why it exited), or ""."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(self._log_from, log.tell() - 4096))
                lines = log.read().decode(errors="replace").splitlines()
        except OSError:
            return ""
        for line in lines:
            if "can not" in line or "error" in line.lower() or "could not" in line:
                return " ".join(line.split())
        return ""

    def _kill(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def _close_pipes(self) -> None:
        proc = self.proc
        if proc is None:
            return
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    def close(self) -> None:
        """Stop ExaBGP (its sessions close: the neighbors drop our routes at once)."""
        proc = self.proc
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self._kill()
                proc.wait()
            self._close_pipes()
            self.proc = None
        self._restart_at = None
        if self._log is not None:
            self._log.close()
            self._log = None
