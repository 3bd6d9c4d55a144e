"""Keeps one endpoint registered in the cluster registry and its view current.

One background thread does every etcd request and owns all the state below; the
other threads only hand it MAC sets and a new member record (under a lock, with a
wake-up pipe) and read :meth:`ClusterAgent.status`.  The thread's loop:

1. *Connect* (when there is no watch): the first time, or after the watch reported
   a compaction, read every key under the prefix (a resync); otherwise resume from
   the last revision seen.  Grant a lease if there is none; refresh it if there is
   one (a lease that expired while etcd was away is replaced: the member and MAC
   keys are written again under the new one).  Register: write the member key if it
   is absent or already ours; if another lease holds it, a duplicate name is
   reported (``status()["last_error"]``, a line in the view's conflicts) and the
   write retried later.  Open the watch from the next revision.
2. *Run*: ``select()`` on the watch socket and the wake-up pipe until the next
   deadline: lease keep-alive (every ttl/3), a MAC write (coalesced, at most one per
   VNI every 0.5 s), the view (coalesced, at most every 0.1 s), and the watch's read
   timeout (etcd sends a progress notification on an idle watch; silence longer
   than ``watch_timeout`` means a dead or partitioned member).
3. On any failure, drop the watch, fail over to the next URL and connect again with
   a capped, jittered backoff.  The last view stays: ``on_view`` is never called with
   less than a completed read, and forwarding goes on on what it has.

``on_view`` runs on the agent thread; it must hand the view on and return.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import select
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Unpack

from sclp.cluster.etcd import (
    REQUEST_TIMEOUT,
    Etcd,
    EtcdError,
    LeaseNotFoundError,
    WatchMessage,
    WatchStream,
)
from sclp.cluster.model import (
    AgentStatus,
    AgentStatusUpdate,
    ClusterView,
    Member,
    build_view,
    encode_macs,
    macs_key,
    member_key,
)

log = logging.getLogger("sclp.cluster")

VIEW_INTERVAL = 0.1  # at most one on_view per this many seconds
MAC_INTERVAL = 0.5  # at most one MAC write per VNI per this many seconds
WATCH_TIMEOUT = 10.0  # silence on the watch longer than this: reconnect
DUPLICATE_RETRY = 2.0  # a refused registration is tried again after this
BACKOFF_MIN, BACKOFF_MAX = 0.1, 1.0


class ClusterAgent:
    """Registers ``me`` under a lease of ``lease_ttl`` seconds at the etcd cluster
    ``urls`` (keys under ``prefix``), publishes MACs, and calls ``on_view`` with every
    new :class:`ClusterView`.  TLS: ``ca`` (a CA file to verify etcd), ``cert`` and
    ``key`` (a client certificate).  ``watch_timeout``: see the module docstring;
    keep etcd's ``--experimental-watch-progress-notify-interval`` below a third of
    it."""

    def __init__(
        self,
        urls: Sequence[str],
        prefix: str,
        lease_ttl: int,
        me: Member,
        on_view: Callable[[ClusterView], None],
        *,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        watch_timeout: float = WATCH_TIMEOUT,
    ) -> None:
        me.validate()
        if lease_ttl < 2:
            raise ValueError("lease_ttl must be at least 2 s")
        self._stopping = threading.Event()
        # A keep-alive that hangs on one member must leave time to reach another
        # before the lease runs out: keep-alives go every ttl/3, requests time out
        # after ttl/6 (2 s at most, 0.5 s at least).
        timeout = max(0.5, min(REQUEST_TIMEOUT, lease_ttl / 6))
        self._etcd = Etcd(
            urls, ca=ca, cert=cert, key=key, timeout=timeout, cancelled=self._stopping.is_set
        )
        self._prefix = prefix.rstrip("/") or "/"
        self._watch_prefix = prefix.rstrip("/") + "/"
        self._ttl = lease_ttl
        self._on_view = on_view
        self._watch_timeout = watch_timeout
        # Shared with other threads, under _lock.
        self._lock = threading.Lock()
        self._me = me
        self._macs: dict[int, frozenset[bytes]] = {}
        self._status: AgentStatus = {
            "connected": False,
            "endpoint": None,
            "members": 0,
            "revision": 0,
            "last_error": None,
            "lease_id": None,
            "conflicts": 0,
        }
        self._revoke_on_exit = True
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._thread: threading.Thread | None = None
        # Owned by the agent thread.
        self._kvs: dict[str, tuple[bytes, int]] = {}
        self._leases: dict[str, int] = {}
        self._revision = 0
        self._synced = False  # a full read happened (the view may be emitted)
        self._watch: WatchStream | None = None
        self._watch_heard = 0.0
        self._lease: int | None = None
        self._next_keepalive = 0.0
        self._registered: Member | None = None  # the record written under our lease
        self._duplicate: str | None = None  # the conflict line of a refused name
        self._retry_register = 0.0
        self._macs_written: dict[int, frozenset[bytes]] = {}
        self._mac_written_at: dict[int, float] = {}
        self._view: ClusterView | None = None
        self._view_dirty = False
        self._view_at = 0.0
        self._backoff = BACKOFF_MIN

    # -- other threads ---------------------------------------------------------------

    def start(self) -> None:
        """Start the agent thread.  Never raises for etcd being away: the thread
        keeps trying (see ``status()``)."""
        if self._thread is not None:
            raise RuntimeError("the cluster agent is already started")
        self._thread = threading.Thread(target=self._run, name="sclp-cluster", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 3.0) -> None:
        """Stop the thread; it revokes the lease first (best effort, so the others
        drop this endpoint at once instead of after the TTL)."""
        self._stop(timeout, revoke=True)

    def abandon(self, timeout: float = 3.0) -> None:
        """Stop the thread without revoking the lease, as if the process died: the
        others drop this endpoint when the lease expires (tests, and a hand-over)."""
        self._stop(timeout, revoke=False)

    def _stop(self, timeout: float, revoke: bool) -> None:
        self._revoke_on_exit = revoke
        self._stopping.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("cluster agent thread did not stop within %.1f s", timeout)
                return
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def publish_macs(self, vni: int, macs: Iterable[bytes]) -> None:
        """Announce ``macs`` (6-byte MACs learned on this endpoint's VM ports) as the
        complete set on ``vni``; an empty set removes the announcement.  Written
        under the lease, coalesced (at most one write per VNI every 0.5 s), and
        written again after a lease is re-created.  Multicast MACs are left out."""
        chosen = frozenset(bytes(m) for m in macs if len(m) == 6 and not m[0] & 1)
        with self._lock:
            if self._macs.get(vni, frozenset()) == chosen:
                return
            self._macs[vni] = chosen
        self._wake()

    def set_member(self, me: Member) -> None:
        """Announce a new record for this endpoint (networks added or removed on
        SIGHUP, say); the name must stay the same."""
        me.validate()
        with self._lock:
            if me.name != self._me.name:
                raise ValueError(f"the name stays {self._me.name!r}")
            self._me = me
        self._wake()

    def status(self) -> AgentStatus:
        """A snapshot: connected, endpoint (URL or None), members, revision,
        last_error (None or one line), lease_id, conflicts (lines in the view)."""
        with self._lock:
            return self._status.copy()

    @property
    def view(self) -> ClusterView | None:
        """The last view handed to ``on_view`` (None before the first read)."""
        return self._view

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # already woken (full pipe), or stopped
            os.write(self._wake_w, b"x")

    def _set_status(self, **values: Unpack[AgentStatusUpdate]) -> None:
        with self._lock:
            self._status.update(values)

    # -- the agent thread -----------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    if self._watch is None:
                        self._connect()
                    self._step()
                except EtcdError as exc:
                    self._failed(str(exc))
                except Exception as exc:  # a bug: keep the registry alive, say it once
                    log.exception("cluster agent: unexpected error")
                    self._failed(f"internal error: {exc!r}")
        finally:
            self._close_watch()
            if self._revoke_on_exit and self._lease is not None:
                with contextlib.suppress(EtcdError):  # else it expires by itself
                    self._etcd.revoke(self._lease)
            self._etcd.close()
            self._set_status(connected=False, endpoint=None)

    def _failed(self, reason: str) -> None:
        self._close_watch()
        was = self.status()
        if was["connected"] or was["last_error"] != reason:
            log.warning("cluster: %s; retrying", reason)
        self._set_status(connected=False, endpoint=None, last_error=reason)
        self._etcd.fail_over()
        delay = self._backoff * random.uniform(0.5, 1.0)
        self._backoff = min(BACKOFF_MAX, self._backoff * 2)
        self._sleep(delay)

    def _sleep(self, seconds: float) -> None:
        if self._stopping.is_set():
            return
        select.select([self._wake_r], [], [], max(0.0, seconds))
        self._drain_wake()

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except (BlockingIOError, OSError):
            pass

    def _close_watch(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    def _connect(self) -> None:
        if not self._synced:
            kvs, revision = self._etcd.range_prefix(self._watch_prefix)
            self._kvs = {kv.key: (kv.value, kv.create_revision) for kv in kvs}
            self._leases = {kv.key: kv.lease for kv in kvs}
            self._revision = revision
            self._synced = True
            self._view_dirty = True
            self._view_at = 0.0  # the first view (or a resync) goes out at once
        now = time.monotonic()
        if self._lease is not None:
            try:
                self._etcd.keep_alive(self._lease)
            except LeaseNotFoundError:
                log.warning("cluster: lease %x expired while away; registering again", self._lease)
                self._lost_lease()
        if self._lease is None:
            self._new_lease()
        self._next_keepalive = now + self._ttl / 3
        self._register()
        self._watch = self._etcd.watch(self._watch_prefix, self._revision + 1)
        self._watch_heard = time.monotonic()
        self._backoff = BACKOFF_MIN
        self._set_status(connected=True, endpoint=self._etcd.url, last_error=self._duplicate)
        log.info("cluster: connected to %s at revision %d", self._etcd.url, self._revision)

    def _lost_lease(self) -> None:
        """Our lease is gone, and with it the member and MAC keys: write them again
        (under a new lease) from now on."""
        self._lease = None
        self._registered = None
        self._macs_written.clear()
        self._mac_written_at.clear()
        self._set_status(lease_id=None)

    def _new_lease(self) -> None:
        self._lease = self._etcd.grant(self._ttl)
        self._next_keepalive = time.monotonic() + self._ttl / 3
        self._set_status(lease_id=self._lease)

    def _register(self) -> None:
        """Write the member key if it is free or ours; else report the duplicate."""
        with self._lock:
            me = self._me
        if self._registered == me or self._lease is None:
            return
        key = member_key(self._prefix, me.name)
        try:
            taken = self._etcd.put_unless_taken(key, me.to_json(), self._lease)
        except LeaseNotFoundError:
            log.warning("cluster: lease %x expired; registering again", self._lease)
            self._lost_lease()
            self._new_lease()
            assert self._lease is not None
            taken = self._etcd.put_unless_taken(key, me.to_json(), self._lease)
        if taken is None:
            if self._duplicate is not None:
                log.info("cluster: name %s is free again; registered", me.name)
            self._registered = me
            self._duplicate = None
            self._set_status(last_error=None)
            self._view_dirty = True
            return
        line = (
            f"name {me.name} is already registered by another endpoint (lease {taken.lease:x}); "
            f"this endpoint is not registered and retries"
        )
        if self._duplicate != line:
            log.error("cluster: %s", line)
        self._duplicate = line
        self._registered = None
        self._retry_register = time.monotonic() + DUPLICATE_RETRY
        self._set_status(last_error=line)
        self._view_dirty = True

    def _step(self) -> None:
        """One round: wait for the watch, the wake-up pipe or the next deadline, then
        do what is due."""
        assert self._watch is not None
        now = time.monotonic()
        deadlines = [self._next_keepalive, self._watch_heard + self._watch_timeout]
        if self._view_dirty:
            deadlines.append(self._view_at + VIEW_INTERVAL)
        if self._duplicate is not None:
            deadlines.append(self._retry_register)
        mac_due = self._mac_due(now)
        if mac_due is not None:
            deadlines.append(mac_due)
        watch = self._watch
        timeout = 0.0 if watch.has_ready() else max(0.0, min(deadlines) - now)
        readable, _, _ = select.select([watch.fileno(), self._wake_r], [], [], timeout)
        if self._stopping.is_set():
            return
        if self._wake_r in readable:
            self._drain_wake()
        now = time.monotonic()
        if watch.fileno() in readable or watch.has_ready():
            self._watch_heard = now
            for message in watch.read():
                self._apply(message)
                if self._watch is not watch:
                    return  # cancelled: reconnect (resync after a compaction)
            if watch.ended:
                raise EtcdError(f"{self._etcd.url}: watch stream ended")
        if now - self._watch_heard > self._watch_timeout:
            raise EtcdError(
                f"{self._etcd.url}: watch silent for {self._watch_timeout:.0f} s "
                "(etcd needs --experimental-watch-progress-notify-interval below a third "
                "of that)"
            )
        if now >= self._next_keepalive:
            try:
                self._etcd.keep_alive(self._lease or 0)
                self._next_keepalive = now + self._ttl / 3
            except LeaseNotFoundError:
                log.warning("cluster: lease %x expired; registering again", self._lease or 0)
                self._lost_lease()
                self._new_lease()
        with self._lock:
            me_changed = self._registered != self._me
        if me_changed and (self._duplicate is None or now >= self._retry_register):
            self._register()
        if self._registered is not None:
            self._write_macs(now)
        if self._view_dirty and now >= self._view_at + VIEW_INTERVAL:
            self._emit_view(now)
        if self._watch is not None and self._watch.endpoint.url != self._etcd.url:
            # A request failed over to another member: move the watch there too.
            log.info("cluster: watch follows the failover to %s", self._etcd.url)
            self._close_watch()
            self._set_status(endpoint=self._etcd.url)

    def _apply(self, message: WatchMessage) -> None:
        if message.canceled:
            self._close_watch()
            if message.compact_revision:
                log.warning(
                    "cluster: revision %d was compacted; reading everything again",
                    self._revision + 1,
                )
                self._synced = False
                return
            raise EtcdError(
                f"{self._etcd.url}: watch cancelled: {message.reason or 'no reason given'}"
            )
        if message.created and message.revision < self._revision:
            # The store went back (etcd restored from an older backup): read it all.
            log.warning(
                "cluster: etcd is at revision %d, before %d; reading everything again",
                message.revision,
                self._revision,
            )
            self._close_watch()
            self._synced = False
            return
        mine = member_key(self._prefix, self._me.name)
        for event in message.events:
            kv = event.kv
            if event.deleted:
                self._kvs.pop(kv.key, None)
                self._leases.pop(kv.key, None)
            else:
                self._kvs[kv.key] = (kv.value, kv.create_revision)
                self._leases[kv.key] = kv.lease
            if kv.key == mine:
                if event.deleted and self._registered is not None:
                    log.warning("cluster: our member key was deleted; registering again")
                    self._registered = None
                elif event.deleted and self._duplicate is not None:
                    self._retry_register = 0.0  # the name is free: try now
                elif not event.deleted and kv.lease != self._lease and self._registered:
                    self._registered = None  # overwritten by another: find out in _register
            self._view_dirty = True
        # Resume from what was delivered: the events' own revisions (a batch's header
        # may be ahead of events still to come), or a progress notification's header
        # (sent only when the watch has caught up).  Never the "created" header: the
        # history from the start revision follows it.
        if message.events:
            self._revision = max(self._revision, *(e.kv.mod_revision for e in message.events))
        elif not message.created:
            self._revision = max(self._revision, message.revision)

    def _mac_due(self, now: float) -> float | None:
        if self._registered is None:
            return None
        with self._lock:
            wanted = dict(self._macs)
        due = [
            self._mac_written_at.get(vni, 0.0) + MAC_INTERVAL
            for vni, macs in wanted.items()
            if self._macs_written.get(vni, frozenset()) != macs
        ]
        return min(due) if due else None

    def _write_macs(self, now: float) -> None:
        with self._lock:
            wanted = dict(self._macs)
            name = self._me.name
        for vni, macs in sorted(wanted.items()):
            if self._macs_written.get(vni, frozenset()) == macs:
                continue
            if now < self._mac_written_at.get(vni, 0.0) + MAC_INTERVAL:
                continue
            key = macs_key(self._prefix, vni, name)
            try:
                if macs:
                    self._etcd.put(key, encode_macs(macs), self._lease or 0)
                else:
                    self._etcd.delete(key)
            except LeaseNotFoundError:
                log.warning("cluster: lease %x expired; registering again", self._lease or 0)
                self._lost_lease()
                self._new_lease()
                return  # the member key first, then the MACs (next round)
            self._macs_written[vni] = macs
            self._mac_written_at[vni] = now

    def _emit_view(self, now: float) -> None:
        with self._lock:
            me = self._me
        view = build_view(self._prefix, self._kvs, self._revision, me)
        if self._duplicate is not None:
            view = replace(view, conflicts=(*view.conflicts, self._duplicate))
        self._view_dirty = False
        self._set_status(
            members=len(view.members), revision=view.revision, conflicts=len(view.conflicts)
        )
        if self._view is not None and self._view.same_state(view):
            self._view = view
            return
        self._view = view
        self._view_at = now
        try:
            self._on_view(view)
        except Exception:
            log.exception("cluster: on_view failed")
