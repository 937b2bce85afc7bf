"""Replayer: the run loop, its checkpoints and the fence against a second replayer of a name.

Owns a Replayer's state: its cursor (the position), the view's open write transaction between
checkpoints, the replica's verified/agreed offsets, an ephemeral replayer's in-memory digests,
and the stop/brake flags. Only run() and checkpoint() (one thread) change it, except `_brake`
and `stop()`, which any thread or a signal handler may call: they only set flags. Each
checkpoint (and a view's first write after one) first checks, in the same write transaction,
that the stored checkpoint is still the one this replayer restored or wrote (`_fence`). The GIL
is released inside the cursor's waits and reads (tidelog._core) and inside LMDB calls; a
machine's apply runs Python code that may do anything, which is why a failure leaves the
Replayer unusable.

Types: the machine is the user's object (Any: any class with the methods of the contract,
checked at run time by machine.check_machine), and so are the callables taken from it; LMDB
transactions and database handles are py-lmdb's, typed Any as tidelog.lmdbenv hands them out.
"""

from __future__ import annotations

import bisect
import signal
import threading
import time
from collections.abc import Iterator
from itertools import islice
from typing import TYPE_CHECKING, Any, Callable, Optional

from tidelog import _args, _core, lmdbenv
from tidelog.errors import OffsetOutOfRangeError, TidelogError
from tidelog.positions import check_name
from tidelog.replay.checkpoint import (CHECKPOINTS_DB, DIGEST_SIZE, DIGESTS_DB, FORMAT, HEADER,
                                       KIND_NAMES, KIND_SNAPSHOT, KIND_VIEW, MAGIC, NO_DIGEST,
                                       OFFSET, SNAPSHOT_SUFFIX, VIEW_DB_PREFIX, as_bytes,
                                       digest_of, digest_key, stored_digests, unpack_header)
from tidelog.replay.compare import compare_digests
from tidelog.replay.machine import blame, check_machine
from tidelog.replay.store import check_log, delete_replayer


if TYPE_CHECKING:
    from types import FrameType

    from tidelog.cursor import Cursor
    from tidelog.log import Log
    from tidelog.positions import PositionStore

CHUNK_RECORDS = 16384          # records per step of the per-record loop (progress is called
                               # after each step); stop(), signals and checkpoint_interval end a
                               # step early, between two records (see Replayer._brake)
BATCH_RECORDS = 65536          # at most this many records per apply_batch call (one read_batch)
IDLE_WAIT = 0.05               # seconds a following replayer waits for records between looks
                               # at stop()
PROGRESS_EVERY = 0.1           # seconds: a per-record step that runs longer is cut for progress()


def _raised_by_core(exc: BaseException) -> bool:
    """Whether `exc` came straight out of tidelog's core (a cursor read), not out of a function
    the loop called: the first frame below the loop's own belongs to the extension module."""
    tb = exc.__traceback__
    below = None if tb is None else tb.tb_next
    return below is not None and below.tb_frame.f_globals.get("__name__") == _core.__name__


class _Alarm:
    """A thread that calls `brake()` once the deadline last given to set() has passed: it ends a
    long per-record step when a checkpoint (checkpoint_interval) or progress() is due, so the
    per-record loop never reads a clock. One per run() that needs it."""

    def __init__(self, brake: Callable[[], None]) -> None:
        self._brake = brake
        self._cond = threading.Condition()
        self._due: Optional[float] = None
        self._done = False
        self._thread = threading.Thread(target=self._main, name="tidelog-replay-alarm",
                                        daemon=True)
        self._thread.start()

    def set(self, due: float) -> None:
        """Brake at time.monotonic() `due` (inf: never), replacing the previous deadline."""
        with self._cond:
            earlier = self._due is None or due < self._due
            self._due = due
            if earlier:             # a later deadline: the thread finds out when it wakes
                self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._done = True
            self._cond.notify()
        self._thread.join()

    def _main(self) -> None:
        with self._cond:
            while not self._done:
                left = None if self._due is None else self._due - time.monotonic()
                if left is not None and left <= 0:
                    self._due = None
                    self._brake()
                elif left is None or left == float("inf"):
                    self._cond.wait()
                else:
                    self._cond.wait(left)


class Replayer:
    """Apply a log's durable records, in order, to a deterministic state machine; checkpoint its
    state and position together in one LMDB transaction; resume from the last checkpoint.

    Replayer(log, machine, *, name, checkpoint_every=100_000, checkpoint_interval=None,
             replica_of=None, digests=True, digest_history=None)

    name:     the replayer's name (a str; it shares the namespace of named cursors and shows in
              log.positions() / log.lag()). A Replayer of a name that has a checkpoint restores
              it (machine.restore(snapshot); a view's data is already in place) and resumes.
              None: an ephemeral replayer that stores nothing and starts at the log's start
              (a view then lives in a temporary LMDB environment outside the log, deleted by
              close()).
    checkpoint_every: checkpoint whenever the position reaches a multiple of this (records).
    checkpoint_interval: also checkpoint once this many seconds passed since the last one
              (None: no time-based checkpoints). Checkpoints also happen when run() returns and,
              for an LmdbView, when a following replayer has caught up (so it holds LMDB's write
              lock, which other committers wait for, only while there is work).
    replica_of: the name of another replayer of an equivalent machine: at each checkpoint, the
              digests of both are compared at every common offset, ReplicaDivergedError at the
              first difference.
    digests:  record a digest of the state at each checkpoint (False saves hashing the state).
    digest_history: keep digests of the last this many records' worth of checkpoints only
              (None: keep all; a replica compares only offsets whose digests still exist).

    Not thread-safe, except stop(), which any thread (or a signal handler) may call.
    """

    def __init__(self, log: Log, machine: Any, *, name: str | None,
                 checkpoint_every: int = 100_000, checkpoint_interval: float | None = None,
                 replica_of: str | None = None, digests: bool = True,
                 digest_history: int | None = None) -> None:
        check_log(log)
        view = check_machine(machine)
        name_b = None if name is None else check_name(name, "name")
        checkpoint_every = _args.count(checkpoint_every, "checkpoint_every")
        checkpoint_interval = _args.seconds(checkpoint_interval, "checkpoint_interval",
                                            allow_none=True)
        if not isinstance(digests, bool):
            raise TypeError(f"digests: expected a bool, not {type(digests).__name__}")
        if replica_of is not None:
            check_name(replica_of, "replica_of")
            if replica_of == name:
                raise ValueError(f"replica_of: {replica_of!r} is this replayer's own name")
            if not digests:
                raise ValueError("replica_of: a replica compares digests; it needs digests=True")
        if digest_history is not None:
            digest_history = _args.count(digest_history, "digest_history")

        self.log = log
        self.machine = machine
        self.name = name
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval = checkpoint_interval
        self.replica_of = replica_of
        self.record_digests = digests
        self.digest_history = digest_history
        self.stopped_by: Optional[int] = None   # the signal that stopped the last run, if any
        self._view = view
        self._name_b = name_b
        self._prefix = None if name_b is None else name_b + b"\0"
        self._apply = machine.apply
        self._apply_batch: Optional[Callable[..., object]] = getattr(machine, "apply_batch", None)
        if not callable(self._apply_batch):
            self._apply_batch = None
        self._stop = False
        self._brake_step: Optional[Callable[[], None]] = None  # ends the running step (set by each)
        self._braked = False
        self._running = False
        self._failed: Optional[BaseException] = None
        self._closed = False
        self._txn: Any = None           # a view's open write transaction (between checkpoints)
        self._txn_env: Optional[lmdbenv.LmdbEnv] = None   # ... and the LmdbEnv it belongs to
        self._checkpointed: Optional[int] = None   # the last checkpoint (stored or restored)
        self._verified = -1             # replica: digests compared through this offset
        self._agreed = -1               # replica: last offset where the digests were equal
        self._mem_digests: list[tuple[int, bytes]] = []   # ephemeral: [(offset, digest)] ascending
        self._last_snapshot: Optional[bytes] = None   # ephemeral: the last checkpoint's snapshot
        self._last_cp_time = time.monotonic()

        # LMDB handles (databases) belong to one environment, and a fork() child gets its own:
        # they are looked up (cached per environment) on each use, never kept here
        self._store: Optional[PositionStore] = None
        self._tmp_env: Optional[lmdbenv.TemporaryEnv] = None   # an ephemeral view's scratch env
        if name is not None or replica_of is not None:
            self._store = store = log.position_store()
            if store.shared.locked and store.writable:
                store.env.reader_check()    # free reader slots of killed processes
            self._open_dbs()
        start = log.start_offset
        if name is not None:
            start = self._restore(start)
        elif view:
            self._tmp_env = lmdbenv.temporary(what="an ephemeral view's scratch store")
        if view:        # after _restore, which may drop a forgotten replayer's view
            try:
                machine.db = self._view_db
            except BaseException:
                self.close()
                raise
        self._start = start
        try:
            self._cur: Cursor = log.cursor(start, durable_only=True)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ LMDB handles

    @property
    def _cp_db(self) -> Any:
        assert self._store is not None            # (for mypy) named, or a replica
        return self._store.db(CHECKPOINTS_DB)

    @property
    def _dg_db(self) -> Any:
        assert self._store is not None            # (for mypy) named, or a replica
        return self._store.db(DIGESTS_DB)

    @property
    def _view_env(self) -> lmdbenv.LmdbEnv:
        # ephemeral: the scratch environment (None only once closed); named: the store's
        return self._tmp_env if self.name is None else self._store.shared  # type: ignore

    @property
    def _view_db(self) -> Any:
        return self._view_env.db("view" if self.name is None else VIEW_DB_PREFIX + self.name)

    def _open_dbs(self) -> None:
        """Open (or look up) every handle this replayer uses before a transaction begins:
        opening a database takes a transaction of its own."""
        if self._store is not None:
            self._store.positions_db, self._cp_db, self._dg_db
        if self._view and (self._tmp_env is not None or self.name is not None):
            self.machine.db = self._view_db

    # ------------------------------------------------------------------ restore

    def _restore(self, start: int) -> int:
        """Load the checkpoint of self.name; returns the position to resume from."""
        store, name = self._store, self.name
        assert store is not None and name is not None     # (for mypy) a named replayer

        def load(txn: Any) -> tuple[Optional[tuple[int, int]], Any, Any]:
            assert self._name_b is not None               # (for mypy) a named replayer
            cp_db = self._cp_db
            raw = txn.get(self._name_b, db=cp_db)
            snap = None
            if raw is not None and not self._view:
                snap = txn.get(self._name_b + SNAPSHOT_SUFFIX, db=cp_db)
            return store.get(name, txn), raw, snap

        pos, raw, snap = store.read(load)
        if raw is None:
            if pos is not None:
                raise ValueError(
                    f"name: {name!r} is the position of a named cursor, not a replayer "
                    f"(pick another name, or log.delete_position({name!r}) first)")
            return start
        cp = unpack_header(raw)
        kind, cp_pos = (KIND_VIEW if cp.kind == "view" else KIND_SNAPSHOT), cp.position
        if pos is None:
            # log.delete_position(name) forgot this replayer: start over, clearing what is left
            delete_replayer(self.log, name)
            return start
        want = KIND_VIEW if self._view else KIND_SNAPSHOT
        if kind != want:
            raise ValueError(f"machine: replayer {name!r} was checkpointed with a "
                             f"{KIND_NAMES[kind]}, this machine is a {KIND_NAMES[want]}")
        if pos[0] != cp_pos:
            raise TidelogError(
                f"replayer {name!r}: its position was set to {pos[0]} outside the replayer, but "
                f"its state is checkpointed at {cp_pos} and cannot be moved; set it back with "
                f"log.set_position({name!r}, {cp_pos}), or start over with "
                f"tidelog.replay.delete_replayer(log, {name!r})")
        end = self.log.end_offset
        if cp_pos > end:
            raise OffsetOutOfRangeError(
                f"replayer {name!r}: checkpoint at {cp_pos} is beyond the end of {self.log.path} "
                f"({end}): records it applied are gone (a repair cut the log, or a power loss in "
                f"'none' mode); start over with tidelog.replay.delete_replayer(log, {name!r})")
        if not self._view:
            if snap is None:
                raise TidelogError(f"replayer {name!r}: its checkpoint has no snapshot")
            try:
                self.machine.restore(snap)
            except BaseException as exc:
                blame(exc, self.machine, "restore", cp_pos,
                       f"restoring the checkpoint at offset {cp_pos}", name)
                raise
        self._checkpointed = cp_pos
        if cp.replica_of == self.replica_of:     # else: compare with the new reference afresh
            self._verified = cp.verified
            self._agreed = -1 if cp.agreed is None else cp.agreed
        return cp_pos

    # ------------------------------------------------------------------ properties

    @property
    def position(self) -> int:
        """The offset of the next record to apply (every record below it is in the state)."""
        return self._cur.position

    @property
    def checkpoint_position(self) -> int | None:
        """The position of the last checkpoint (stored, or restored at construction), or None."""
        return self._checkpointed

    def digests(self) -> dict[int, bytes]:
        """{offset: digest} of this replayer's checkpoints (stored, or in memory when
        ephemeral)."""
        if self.name is None:
            return dict(self._mem_digests)
        assert self._store is not None and self._prefix is not None   # (for mypy) named
        # (a lambda does not see the narrowing of self._prefix: hence the ignore)
        return self._store.read(lambda txn: {o: bytes(d) for o, d in
                                             stored_digests(txn, self._dg_db, self._prefix, 0)})  # type: ignore[arg-type]

    @property
    def last_digest(self) -> tuple[int, bytes] | None:
        """(offset, digest) of an ephemeral replayer's latest checkpoint, kept in memory (None
        before the first one, or for a named replayer: see digests())."""
        return self._mem_digests[-1] if self._mem_digests else None

    @property
    def last_snapshot(self) -> bytes | None:
        """The snapshot an ephemeral snapshot-machine replayer took at its latest checkpoint
        (None before the first one, for a view, or for a named replayer)."""
        return self._last_snapshot

    def __repr__(self) -> str:
        name = "(ephemeral)" if self.name is None else repr(self.name)
        return (f"<tidelog.Replayer {name} of {type(self.machine).__name__} at {self.position}, "
                f"checkpoint {self._checkpointed}>")

    # ------------------------------------------------------------------ running

    def stop(self) -> None:
        """Make a running run() checkpoint and return soon: before the next record (per-record
        apply) or the next batch (apply_batch). Safe from any thread and from signal handlers; a
        stop() while no run() is going makes the next run() return at once."""
        self._stop = True
        self._brake()

    def _brake(self) -> None:
        """End the running step before its next record or batch (any thread, or a signal
        handler): each step's loop looks at a flag of its own (a closure cell, the cheapest
        thing a loop can test); `_braked` covers a step that has not begun yet."""
        self._braked = True
        step = self._brake_step
        if step is not None:
            step()

    def run(self, until: int | None = None, follow: bool = False, *,
            progress: Callable[[Replayer], object] | None = None,
            signals: bool | None = None) -> int:
        """Apply durable records with offset < until, checkpoint, return the new position.

        until:   None: up to the durable end (as it moves meanwhile); an int: stop there.
        follow:  keep applying records as they become durable, until `until`, stop(), SIGINT or
                 SIGTERM.
        progress: a callable, called with this Replayer after each step (a few ms of work; a
                 per-record step is cut short to call it at least every 0.1 s, an apply_batch
                 step lasts one batch) and while a following replayer waits.
        signals: stop (checkpoint and return) on SIGINT and SIGTERM: handlers installed for the
                 run when called on the main thread, the previous ones restored after;
                 `stopped_by` then holds the signal number. None (default): when `follow`.

        stop(), a signal and `checkpoint_interval` take effect before the next record (or, with
        apply_batch, the next batch).

        If the machine (or reading, or a checkpoint) raises, the exception propagates and this
        Replayer is unusable: its machine holds part of a step. Make a new Replayer with a fresh
        machine: it resumes from the last checkpoint. An exception raised by the machine's own
        method carries `tidelog_machine_call` (a MachineCall: the method and the record offset;
        see machine_call())."""
        self._check_usable()
        if until is not None:
            until = _args.offset(until, "until")
            if until < self.position:
                raise ValueError(f"until: {until} is below the replayer's position "
                                 f"{self.position} (applied records cannot be taken back)")
        if not isinstance(follow, bool):
            raise TypeError(f"follow: expected a bool, not {type(follow).__name__}")
        if progress is not None and not callable(progress):
            raise TypeError(f"progress: expected a callable, not {type(progress).__name__}")
        if signals is None:
            signals = follow
        elif not isinstance(signals, bool):
            raise TypeError(f"signals: expected a bool or None, not {type(signals).__name__}")
        old = {}
        self.stopped_by = None
        if signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(sig) is not signal.SIG_IGN:   # ignored stays ignored
                    old[sig] = signal.signal(sig, self._on_signal)
        self._running = True
        try:
            self._run(until, follow, progress)
            self._stop = False
            return self.position
        except BaseException as exc:
            self._fail(exc)
            raise
        finally:
            self._running = False
            for sig, handler in old.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        self.stopped_by = signum
        self.stop()

    def _run(self, until: Optional[int], follow: bool,
             progress: Optional[Callable[[Replayer], object]]) -> None:
        cur, log = self._cur, self.log
        every, interval = self.checkpoint_every, self.checkpoint_interval
        chunk = CHUNK_RECORDS if self._apply_batch is None else BATCH_RECORDS
        alarm = None
        if self._apply_batch is None and (interval is not None or progress is not None):
            alarm = _Alarm(self._brake)     # ends a long per-record step when something is due
        last_progress = time.monotonic()
        try:
            while not self._stop:
                self._braked = False
                pos = cur.position
                if until is not None and pos >= until:
                    break
                end = log.durable_offset
                if until is not None and until < end:
                    end = until
                if pos >= end:
                    if not follow:
                        break
                    if self._dirty() and (self._view or (
                            interval is not None
                            and time.monotonic() - self._last_cp_time >= interval)):
                        self.checkpoint()
                    if progress is not None:
                        progress(self)
                    cur.wait(IDLE_WAIT)
                    continue
                if alarm is not None:
                    due = float("inf")
                    if interval is not None:
                        due = self._last_cp_time + interval
                    if progress is not None:
                        due = min(due, last_progress + PROGRESS_EVERY)
                    alarm.set(due)
                next_cp = (pos // every + 1) * every
                self._apply_to(min(end, next_cp, pos + chunk))
                if cur.position == next_cp or (
                        interval is not None
                        and time.monotonic() - self._last_cp_time >= interval):
                    self.checkpoint()
                if progress is not None:
                    progress(self)
                    last_progress = time.monotonic()
            if self._dirty():
                self.checkpoint()
        finally:
            if alarm is not None:
                alarm.close()

    def _dirty(self) -> bool:
        return self._cur.position != (self._start if self._checkpointed is None
                                      else self._checkpointed)

    def _apply_to(self, stop: int) -> None:
        """Apply the records [position, stop), all of them durable (or fewer when braked). A view whose map filled
        up is grown, and the records since the last checkpoint applied again (its state is
        its aborted transaction's writes)."""
        while True:
            try:
                return self._apply_range(stop)
            except Exception as exc:
                if not (self._view and lmdbenv.is_map_full(exc)):
                    raise
                self._regrow()

    def _regrow(self) -> None:
        """A view's map is full: drop its transaction, grow the map, rewind to the last
        checkpoint."""
        env = self._txn_env or self._view_env
        self._end_txn()
        env.grow()
        self._cur.seek(self._start if self._checkpointed is None else self._checkpointed)

    def _end_txn(self, commit: bool = False) -> None:
        txn, self._txn = self._txn, None
        env, self._txn_env = self._txn_env, None
        if txn is not None:
            assert env is not None                  # (for mypy) set with the transaction
            env.end(txn, commit)

    def _apply_range(self, stop: int) -> None:
        cur = self._cur
        n = stop - cur.position
        txn = self._begin() if self._view else None
        braked = False

        def brake() -> None:        # a closure cell: the cheapest flag a loop can look at
            nonlocal braked
            braked = True
        self._brake_step = brake
        if self._braked or self._stop:      # braked before this step began
            return
        machine = self.machine
        batch_fn = self._apply_batch
        if batch_fn is not None:
            while n > 0 and not braked:
                at = cur.position
                batch = cur.read_batch(min(n, BATCH_RECORDS))
                k = len(batch)
                if not k:
                    raise TidelogError(f"replayer {self.name!r}: record {cur.position} is below "
                                       f"durable_offset but could not be read")
                try:
                    if txn is None:
                        batch_fn(batch)
                    else:
                        batch_fn(batch, txn)
                except BaseException as exc:
                    blame(exc, machine, "apply_batch", at,
                           f"in the batch of records [{at}, {at + k})", self.name)
                    raise
                n -= k
        else:
            # a plain for loop: since Python 3.11 it calls a Python apply() without a new C
            # frame, which makes it faster than any map()/deque() formulation
            apply = self._apply
            try:
                if txn is None:
                    for rec in islice(cur, n):
                        apply(rec)
                        if braked:
                            break
                else:
                    for rec in islice(cur, n):
                        apply(rec, txn)
                        if braked:
                            break
            except BaseException as exc:
                if not _raised_by_core(exc):        # the cursor's errors are not the machine's
                    at = cur.position - 1
                    blame(exc, machine, "apply", at, f"at record offset {at}", self.name)
                raise
        if cur.position != stop and not braked:
            raise TidelogError(f"replayer {self.name!r}: stopped at {cur.position} short of "
                               f"{stop}, below durable_offset")

    def _begin(self) -> Any:
        """A view's write transaction (begun at the first record after a checkpoint)."""
        if self._txn is None:
            self._open_dbs()
            env = self._view_env
            txn = env.begin_write(db=self.machine.db)
            if self.name is not None:
                try:
                    self._fence(txn)
                except BaseException:
                    env.end(txn)
                    raise
            self._txn, self._txn_env = txn, env
        return self._txn

    def _fence(self, txn: Any) -> None:
        """Raise unless the stored checkpoint and position are still the ones this replayer
        restored or wrote (another replayer of the same name would double-apply records)."""
        assert self._store is not None and self.name is not None    # (for mypy) named
        raw = txn.get(self._name_b, db=self._cp_db)
        stored = None if raw is None else unpack_header(raw).position
        pos = self._store.get(self.name, txn)
        if stored != self._checkpointed or (pos is not None and pos[0] != stored) or (
                pos is None and stored is not None):
            raise TidelogError(
                f"replayer {self.name!r}: its checkpoint moved to {stored} (position "
                f"{None if pos is None else pos[0]}) behind this replayer's back (it last "
                f"checkpointed at {self._checkpointed}): is another replayer of the same name "
                f"running? Run one replayer per name")

    # ------------------------------------------------------------------ checkpoints

    def checkpoint(self) -> int:
        """Checkpoint now: the state (snapshot, or the view's writes), its digest and the
        position, in one LMDB write transaction. Returns the position."""
        self._check_usable(running_ok=True)
        pos = self._cur.position
        try:
            if self._view:
                self._checkpoint_view(pos)
            else:
                self._checkpoint_snapshot(pos)
        except BaseException as exc:
            self._fail(exc)
            raise
        self._checkpointed = pos
        self._last_cp_time = time.monotonic()
        return pos

    def _checkpoint_snapshot(self, pos: int) -> None:
        m = self.machine
        method = "snapshot"
        try:
            snap = as_bytes(m.snapshot(), "snapshot()")
            method = "digest"
            digest = digest_of(m, False, snap) if self.record_digests else None
        except BaseException as exc:
            blame(exc, m, method, pos, f"at the checkpoint at offset {pos}", self.name)
            raise
        if self.name is None:
            self._remember(pos, digest)
            self._last_snapshot = snap
            return
        self._open_dbs()
        assert self._store is not None              # (for mypy) named

        def write(txn: Any) -> tuple[int, int]:
            self._fence(txn)
            return self._write_checkpoint(txn, pos, digest, snap)

        self._verified, self._agreed = self._store.write(write)

    def _checkpoint_view(self, pos: int) -> None:
        while True:
            txn = self._begin()
            try:
                try:
                    digest = (digest_of(self.machine, True, txn=txn) if self.record_digests
                              else None)
                except BaseException as exc:
                    blame(exc, self.machine, "digest", pos, f"at the checkpoint at offset {pos}",
                           self.name)
                    raise
                if self.name is None:
                    self._remember(pos, digest)
                    self._end_txn(commit=True)      # into the scratch environment
                    return
                verified = self._write_checkpoint(txn, pos, digest, b"")
                self._end_txn(commit=True)
            except Exception as exc:
                if not lmdbenv.is_map_full(exc):
                    self._end_txn()
                    raise
                self._regrow()                      # then apply again what the txn held
                self._apply_to(pos)
                continue
            except BaseException:
                self._end_txn()
                raise
            self._verified, self._agreed = verified
            return

    def _remember(self, pos: int, digest: Optional[bytes]) -> None:
        """An ephemeral checkpoint: keep the digest in memory, compare it with the reference."""
        if digest is None:
            return
        if self._mem_digests and self._mem_digests[-1][0] == pos:
            self._mem_digests[-1] = (pos, digest)
        else:
            self._mem_digests.append((pos, digest))
        if self.replica_of is not None:
            self._open_dbs()
            assert self._store is not None          # (for mypy) a replica has the store
            self._verified, self._agreed = self._store.read(lambda t: self._compare_in(t, pos))

    def _write_checkpoint(self, txn: Any, pos: int, digest: Optional[bytes],
                          snap: bytes) -> tuple[int, int]:
        """Put digest, position and header (+ snapshot) into txn; returns the new
        (verified, agreed) of a replica, to take effect once txn commits."""
        assert self._store is not None and self.name is not None    # (for mypy) named
        assert self._prefix is not None and self._name_b is not None
        verified = (self._verified, self._agreed)
        if digest is not None:
            txn.put(digest_key(self._prefix, pos), digest, db=self._dg_db)
            if self.digest_history is not None:
                self._prune(txn, pos - self.digest_history)
            if self.replica_of is not None:
                verified = self._compare_in(txn, pos)   # raises before anything commits
        self._store.put(self.name, pos, txn)
        ref = b"" if self.replica_of is None else self.replica_of.encode("utf-8")
        header = HEADER.pack(MAGIC, FORMAT, KIND_VIEW if self._view else KIND_SNAPSHOT, len(ref),
                             pos, verified[0], verified[1], time.time_ns(),
                             self.checkpoint_every, digest or NO_DIGEST)
        txn.put(self._name_b, header + ref, db=self._cp_db)
        if not self._view:
            txn.put(self._name_b + SNAPSHOT_SUFFIX, snap, db=self._cp_db)
        return verified

    def _prune(self, txn: Any, below: int) -> None:
        assert self._prefix is not None             # (for mypy) named
        cur = txn.cursor(db=self._dg_db)
        if not cur.set_range(self._prefix):
            return
        while True:
            key = cur.key()
            if not key.startswith(self._prefix) or OFFSET.unpack_from(key, len(self._prefix))[0] >= below:
                return
            if not cur.delete():
                return

    def _own_digests(self, txn: Any) -> Iterator[tuple[int, bytes]]:
        if self.name is None:
            i = bisect.bisect_right(self._mem_digests, (self._verified, b"\xff" * DIGEST_SIZE))
            return iter(self._mem_digests[i:])
        assert self._prefix is not None             # (for mypy) named
        return stored_digests(txn, self._dg_db, self._prefix, self._verified + 1)

    def _compare_in(self, txn: Any, upto: int) -> tuple[int, int]:
        assert self.replica_of is not None          # (for mypy) a replica
        return compare_digests(txn, self._cp_db, self._dg_db, self._own_digests(txn), self.name,
                        self.replica_of, self._verified, self._agreed, upto)[0]

    def verify(self) -> Optional[int]:
        """Compare this replica's digests with its reference's at every common checkpoint offset
        not compared yet (the reference may have caught up since the last checkpoint). Returns
        the last offset where they agree (None: none compared yet); ReplicaDivergedError at the
        first difference."""
        if self.replica_of is None:
            raise TypeError("verify: this replayer has no replica_of")
        self._check_usable(running_ok=True)
        self._open_dbs()
        assert self._store is not None              # (for mypy) a replica has the store
        self._verified, self._agreed = self._store.read(lambda t: self._compare_in(t, 1 << 62))
        return None if self._agreed < 0 else self._agreed

    # ------------------------------------------------------------------ views, lifecycle

    def read(self) -> Any:
        """A read transaction on this replayer's view (a context manager; default database the
        view): ``with rep.read() as txn: txn.get(key)``. It sees the last checkpoint."""
        if not self._view:
            raise TypeError("read: the machine is not an LmdbView")
        if self.name is None:
            raise TypeError("read: an ephemeral view is never committed; read it through the "
                            "transaction its apply() gets")
        assert self._store is not None              # (for mypy) named
        return self._store.shared.reader(db=VIEW_DB_PREFIX + self.name)

    def _check_usable(self, running_ok: bool = False) -> None:
        if self._closed:
            raise TidelogError(f"replayer {self.name!r}: closed")
        if self._failed is not None:
            raise TidelogError(
                f"replayer {self.name!r}: a previous run failed ({self._failed!r}) and left its "
                f"machine in an undefined state; make a new Replayer with a fresh machine to "
                f"resume from the last checkpoint ({self._checkpointed})")
        if self._running and not running_ok:
            raise TidelogError(f"replayer {self.name!r}: run() is already running")

    def _fail(self, exc: BaseException) -> None:
        if self._failed is None:
            self._failed = exc
        self._end_txn()

    def close(self) -> None:
        """Drop a view's uncommitted work (what came after the last checkpoint; an ephemeral
        view entirely). Idempotent. Does not checkpoint: run() did before returning."""
        if self._closed:
            return
        self._closed = True
        try:
            self._end_txn()
        finally:
            env, self._tmp_env = self._tmp_env, None
            if env is not None:
                env.close()

    def __enter__(self) -> Replayer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
