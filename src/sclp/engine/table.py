"""The reassembly table: bounded, timed state for incomplete payloads (sclp-spec §4).

Strategy.  One :class:`ReassemblyTable` holds the incomplete entries of one or more
reassemblers (the SCLP :class:`~sclp.engine.reassembler.Reassembler` and the
:class:`~sclp.engine.stt.SttReassembler`; an endpoint may give both the same table so
that one memory budget covers both).  It knows nothing of segments: a reassembler
decides how a segment is placed and when an entry is complete, and calls the table to
create, finish and discard entries.  The table does everything else:

* Entries live in one ``OrderedDict`` in creation order, which is also deadline order
  (every entry gets ``now + timeout`` and ``now`` never goes back), so the oldest entry
  is the first one, for eviction and for :meth:`ReassemblyTable.expire` alike.
* Caps: ``max_bytes`` bounds the sum of the entries' ``size`` (the bytes each entry's
  reassembler accounts for it: its buffers) and ``max_entries`` their number.
  :meth:`ReassemblyTable.make_room` is called *before* a reassembler allocates the
  buffers of a new entry and evicts the oldest entries (of any reassembler of the
  table) until the new one fits, so the table never holds more than ``max_bytes``.
  An entry larger than ``max_bytes`` cannot fit at all: ``make_room`` says so and the
  reassembler refuses the payload (OVERSIZE, counted by the reassembler).
* Remembered keys: a key completed or discarded is kept (no bytes, just its
  forget-after time) for ``timeout``, at most ``max_entries`` of them, so that the
  reassembler can ignore late or duplicated segments of it instead of opening an entry
  that could only time out.
* :meth:`ReassemblyTable.next_deadline` is exactly when :meth:`ReassemblyTable.expire`
  next has work (an entry times out or a key is forgotten; kept up to date as entries
  come and go), for the caller's timer; the reassemblers also run ``expire`` lazily
  when a segment arrives at or after it.

Ownership and counters.  Each reassembler opens an :class:`Account` on the table and
passes it to every entry it creates (:class:`TableEntry`).  The account holds that
reassembler's counters: ``drops`` (by :class:`~sclp.wire.errors.DropReason`),
``completed``, ``duplicates``, and its share of ``bytes_held`` and ``entries``.  A
drop is counted in the account of the entry's owner, whoever caused it: an STT frame
evicted to make room for an SCLP payload is an EVICTED drop of the STT reassembler.
So per-reassembler counters add up to the table's totals and never count twice.  Keys
of different accounts never collide: every key a reassembler builds starts with its
account's ``tag``.  Entries own their buffers; the table drops its reference when an
entry is completed or discarded and never touches the buffers.

Nothing here reads a clock: time is passed in as ``now`` (seconds).  Nothing raises on
network input; only bad construction arguments raise ValueError.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Hashable
from typing import Any, Generic, TypeVar

from sclp.wire.errors import DropReason

__all__ = ["Account", "ReassemblyTable", "TableEntry", "TableUser"]


class Account:
    """One reassembler's share of a :class:`ReassemblyTable`, and its counters.

    ``tag`` is unique within the table; the reassembler puts it first in its keys.
    ``bytes_held`` and ``entries`` are this reassembler's part of the table's totals;
    ``completed`` counts payloads delivered, ``duplicates`` segments ignored as
    duplicates or stragglers (not drops), ``drops`` every discard by reason.
    """

    __slots__ = ("bytes_held", "completed", "drops", "duplicates", "entries", "tag")

    def __init__(self, tag: int) -> None:
        self.tag = tag
        self.drops: collections.Counter[DropReason] = collections.Counter()
        self.completed = 0
        self.duplicates = 0
        self.bytes_held = 0
        self.entries = 0


class TableEntry:
    """What the table needs of an entry: its owner, its accounted ``size`` (bytes
    counted against ``max_bytes``; constant while the entry is held) and its deadline
    (set by :meth:`ReassemblyTable.insert`).  Reassemblers subclass it."""

    __slots__ = ("account", "deadline", "size")

    def __init__(self, account: Account, size: int) -> None:
        self.account = account
        self.size = size
        self.deadline = math.inf


E = TypeVar("E", bound=TableEntry)


class ReassemblyTable(Generic[E]):
    """Incomplete entries under a byte cap and an entry cap, with timeouts and
    remembered finished keys (see the module docstring for the contract).

    ``entries`` (key -> entry, oldest first) and ``finished`` (key -> forget-after
    time, oldest first) are public for the reassemblers' hot paths, which read them
    directly; every change goes through the methods.  ``next_at`` is
    :meth:`next_deadline` as a float (``inf`` when nothing is pending).
    """

    def __init__(
        self,
        timeout: float = 1.0,
        max_bytes: int = 16 * 1024 * 1024,
        max_entries: int = 1024,
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"reassembly timeout must be positive, got {timeout}")
        if max_bytes < 1 or max_entries < 1:
            raise ValueError("reassembly caps must be positive")
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.entries: collections.OrderedDict[Hashable, E] = collections.OrderedDict()
        self.finished: collections.OrderedDict[Hashable, float] = collections.OrderedDict()
        self.next_at = math.inf
        self.bytes_held = 0
        self._accounts = 0

    def open_account(self) -> Account:
        """A new account (with a tag no other account of this table has)."""
        self._accounts += 1
        return Account(self._accounts)

    def next_deadline(self) -> float | None:
        """When :meth:`expire` next has work (an entry times out or a remembered key is
        forgotten); ``None`` when nothing is pending."""
        return None if self.next_at == math.inf else self.next_at

    # -- entries ----------------------------------------------------------------------

    def make_room(self, size: int, now: float) -> bool:
        """Evict the oldest entries (EVICTED, in their owners' accounts) until a new
        entry of ``size`` bytes fits under both caps.  False, evicting nothing, when it
        could never fit (``size`` > ``max_bytes``).  Call before allocating it."""
        if size > self.max_bytes:
            return False
        entries = self.entries
        limit = self.max_bytes - size
        while entries and (len(entries) >= self.max_entries or self.bytes_held > limit):
            key, old = next(iter(entries.items()))
            self.discard(key, old, DropReason.EVICTED, now)
        return True

    def insert(self, key: Hashable, entry: E, now: float) -> None:
        """Hold ``entry`` under ``key`` until ``now + timeout``.  The caller has called
        :meth:`make_room` for ``entry.size`` (nothing is evicted here)."""
        deadline = now + self.timeout
        entry.deadline = deadline
        self.entries[key] = entry
        size = entry.size
        self.bytes_held += size
        account = entry.account
        account.bytes_held += size
        account.entries += 1
        if deadline < self.next_at:
            self.next_at = deadline

    def complete(self, key: Hashable, entry: E, now: float) -> None:
        """``entry`` was delivered: let go of it, count it and remember its key."""
        del self.entries[key]
        size = entry.size
        self.bytes_held -= size
        account = entry.account
        account.bytes_held -= size
        account.entries -= 1
        account.completed += 1
        self.remember(key, now)
        if entry.deadline <= self.next_at:
            self.next_at = self._earliest()  # it was the one due next

    def discard(self, key: Hashable, entry: E, reason: DropReason, now: float) -> None:
        """Drop ``entry`` for ``reason`` (counted in its owner's account) and remember
        its key so that its stragglers are ignored."""
        del self.entries[key]
        size = entry.size
        self.bytes_held -= size
        account = entry.account
        account.bytes_held -= size
        account.entries -= 1
        account.drops[reason] += 1
        self.remember(key, now)
        if entry.deadline <= self.next_at:
            self.next_at = self._earliest()  # it was the one due next

    def remember(self, key: Hashable, now: float) -> None:
        """Note a finished key so that its stragglers are ignored for ``timeout``
        (at most ``max_entries`` keys: the oldest is forgotten first)."""
        finished = self.finished
        forget_at = now + self.timeout
        if key in finished:
            finished.move_to_end(key)  # keep the dict in forget-after order
        finished[key] = forget_at
        if len(finished) > self.max_entries:
            _, dropped = finished.popitem(last=False)
            if dropped <= self.next_at:
                self.next_at = self._earliest()  # it was the one due next
        elif forget_at < self.next_at:
            self.next_at = forget_at

    def expire(self, now: float) -> int:
        """Discard the entries whose deadline has passed (TIMEOUT, in their owners'
        accounts) and forget the remembered keys whose time is up.  Returns the number
        of entries discarded (of every account)."""
        entries = self.entries
        expired = 0
        while entries:
            key, entry = next(iter(entries.items()))
            if entry.deadline > now:
                break
            self.discard(key, entry, DropReason.TIMEOUT, now)
            expired += 1
        finished = self.finished
        while finished and next(iter(finished.values())) <= now:
            finished.popitem(last=False)
        self.next_at = self._earliest()
        return expired

    def _earliest(self) -> float:
        """The earliest deadline of an entry or a remembered key (both dicts are in
        deadline order: the first of each), ``inf`` when both are empty."""
        deadline = math.inf
        if self.entries:
            deadline = next(iter(self.entries.values())).deadline
        if self.finished:
            deadline = min(deadline, next(iter(self.finished.values())))
        return deadline


class TableUser:
    """Base of the reassemblers: joins a table (its own, made from ``timeout`` and the
    caps, when ``table`` is None; otherwise the given one, whose timeout and caps then
    apply) with a new :class:`Account`, and exposes that account's counters.  The hot
    paths read ``_table``, ``_account``, ``_tag``, ``_entries`` and ``_finished``."""

    def __init__(
        self,
        timeout: float,
        max_bytes: int,
        max_entries: int,
        table: ReassemblyTable[Any] | None,
    ) -> None:
        if table is None:
            table = ReassemblyTable(timeout, max_bytes, max_entries)
        self._table: ReassemblyTable[Any] = table
        self._account = account = table.open_account()
        self._tag = account.tag
        # The table's dicts, read directly on the hot path (changed only by the table).
        self._entries: collections.OrderedDict[Hashable, Any] = table.entries
        self._finished = table.finished
        self.drops: collections.Counter[DropReason] = account.drops

    @property
    def table(self) -> ReassemblyTable[Any]:
        """The table holding this reassembler's entries (maybe shared)."""
        return self._table

    @property
    def bytes_held(self) -> int:
        """Bytes accounted against ``max_bytes`` for this reassembler's incomplete
        entries (<= ``max_bytes``)."""
        return self._account.bytes_held

    @property
    def entries(self) -> int:
        """Number of this reassembler's incomplete entries in the table."""
        return self._account.entries

    @property
    def completed(self) -> int:
        """Payloads (frames) delivered so far."""
        return self._account.completed

    @property
    def duplicates(self) -> int:
        """Segments ignored as exact duplicates or as late segments of a payload already
        delivered or discarded (not an error, not a drop)."""
        return self._account.duplicates

    def next_deadline(self) -> float | None:
        """When :meth:`expire` next has work (an entry times out or a remembered key is
        forgotten, in the whole table); ``None`` when nothing is pending.  For the
        caller's timer."""
        return self._table.next_deadline()

    def expire(self, now: float) -> int:
        """Discard the incomplete entries whose timeout has passed (counted as TIMEOUT)
        and forget old finished keys.  Returns the number discarded.  Also run lazily
        when a segment arrives; call it from a timer to free memory when idle.  In a
        shared table this expires (and counts) the entries of every reassembler."""
        return self._table.expire(now)
