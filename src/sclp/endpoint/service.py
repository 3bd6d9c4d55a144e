"""The systemd notify protocol (``sd_notify(3)``) without python-systemd.

A service started with ``Type=notify`` finds the address of the manager's socket in
``NOTIFY_SOCKET`` and reports its state there as newline-separated ``KEY=VALUE``
lines in one datagram: ``READY=1`` once it serves, ``STATUS=...`` for
``systemctl status``, ``WATCHDOG=1`` at least every half ``WatchdogSec=``,
``RELOADING=1`` (with ``MONOTONIC_USEC=``) and ``STOPPING=1``.

Nothing here may stall or kill the endpoint: the socket is non-blocking, every send
failure (no such socket, a full queue, a manager that went away) becomes ``False``,
and no clock is read by :class:`Watchdog` (the event loop passes ``now``).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("sclp")

__all__ = ["Notifier", "Watchdog", "watchdog_interval"]


class Notifier:
    """One datagram socket to the service manager's ``NOTIFY_SOCKET``.

    ``address`` is the value of ``NOTIFY_SOCKET``: an absolute path, or ``@name`` for
    a socket in the abstract namespace.  The socket is opened on the first
    :meth:`notify` (and again after a failure to open it), so building a Notifier
    never fails on I/O."""

    def __init__(self, address: str) -> None:
        if address.startswith("@"):
            self._target = "\0" + address[1:]
        elif address.startswith("/"):
            self._target = address
        else:
            raise ValueError(f"unsupported NOTIFY_SOCKET address {address!r}")
        self.address = address
        self._sock: socket.socket | None = None

    @classmethod
    def from_environment(cls, env: Mapping[str, str] = os.environ) -> Notifier | None:
        """The notifier of ``NOTIFY_SOCKET``, or ``None`` when it is unset or empty
        (not started by systemd) or has a form this module does not speak (for
        example ``vsock:``; a warning is logged then)."""
        address = env.get("NOTIFY_SOCKET", "")
        if not address:
            return None
        try:
            return cls(address)
        except ValueError as exc:
            log.warning("not notifying systemd: %s", exc)
            return None

    def notify(self, *lines: str) -> bool:
        """Send ``lines`` (``"READY=1"``, ``"STATUS=..."``, ...) as one datagram.

        Returns whether the manager's socket took it; never raises and never blocks.
        A newline inside a line would start a new assignment, so it becomes a
        space."""
        if not lines:
            return False
        data = "\n".join(line.replace("\n", " ") for line in lines).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
                )
            return self._sock.sendto(data, self._target) == len(data)
        except (OSError, ValueError):
            return False

    # The states the endpoint reports, so a caller need not spell the protocol.

    def ready(self, status: str | None = None) -> bool:
        """``READY=1`` (and ``STATUS=``): start-up (or a reload) is complete."""
        return self.notify("READY=1", *(() if status is None else (f"STATUS={status}",)))

    def status(self, text: str) -> bool:
        """``STATUS=text``, shown by ``systemctl status``."""
        return self.notify(f"STATUS={text}")

    def reloading(self, monotonic_usec: int | None = None) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC=`` (``CLOCK_MONOTONIC`` now unless
        given); follow it with :meth:`ready` once the reload is done."""
        if monotonic_usec is None:
            monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}")

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: the endpoint has begun to shut down."""
        return self.notify("STOPPING=1", *(() if status is None else (f"STATUS={status}",)))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def watchdog_interval(env: Mapping[str, str] = os.environ, pid: int | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``WATCHDOG_USEC``.

    ``None`` when the watchdog is off: ``WATCHDOG_USEC`` unset, not a positive
    integer, or ``WATCHDOG_PID`` set to another process than ``pid`` (this process
    by default) — the watchdog is then meant for someone else."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    wanted = env.get("WATCHDOG_PID", "")
    if wanted:
        try:
            if int(wanted) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 2_000_000


class Watchdog:
    """Sends ``WATCHDOG=1`` once at least ``interval`` seconds have passed since the
    last ping that went through.  :meth:`tick` is meant for the event loop's timer
    (``runner.on_tick(watchdog.tick)``): the loop's liveness is what it vouches
    for.  The first tick pings at once; a failed ping is tried again on the next
    tick."""

    def __init__(self, notifier: Notifier, interval: float) -> None:
        if interval <= 0:
            raise ValueError(f"watchdog interval must be positive, not {interval}")
        self.notifier = notifier
        self.interval = interval
        self.last: float | None = None  # `now` of the last ping that went through
        self.sent = 0
        self.failed = 0

    @classmethod
    def from_environment(
        cls, notifier: Notifier | None, env: Mapping[str, str] = os.environ
    ) -> Watchdog | None:
        """The watchdog ``WATCHDOG_USEC``/``WATCHDOG_PID`` ask for, or ``None``."""
        if notifier is None:
            return None
        interval = watchdog_interval(env)
        return None if interval is None else cls(notifier, interval)

    def tick(self, now: float) -> bool:
        """Ping if due; returns whether a ping went out now."""
        if self.last is not None and now - self.last < self.interval:
            return False
        if self.notifier.notify("WATCHDOG=1"):
            self.last = now
            self.sent += 1
            return True
        self.failed += 1
        return False
