"""Replay driver: turn a log into state exactly once, and check that replicas agree.

A *machine* is a deterministic state machine: the same records applied in the same order give the
same state (no clocks, no randomness, no I/O in `apply`). Two kinds:

- a snapshot machine, any object with ``apply(record)``, ``snapshot() -> bytes`` and
  ``restore(snapshot)`` (optionally ``apply_batch(batch)``, which then gets whole
  `RecordBatch`es: one call per up to 65536 records, for numpy folds; and ``digest() -> bytes``
  to replace the default digest, blake2b of the snapshot);
- an `LmdbView`, a materialized view whose state is key/values in an LMDB database:
  ``apply(record, txn)`` (optionally ``apply_batch(batch, txn)``, ``digest(txn)``) writes through
  `txn`, the very write transaction that commits the position, so there is no snapshot blob.

`Replayer` reads durable records only (``offset < log.durable_offset``), so a checkpoint never
covers a record that a power loss could take back.

Storage: the log's positions environment (``<log>/positions``, LMDB with sync on, shared with
named cursors), one write transaction per checkpoint::

    positions     name -> position   (so log.positions() and log.lag() list replayers)
    checkpoints   name -> header (format, kind, position, digest, replica progress)
                  name NUL "snapshot" -> the snapshot (none for a view)
    digests       name NUL offset (8 bytes, big-endian) -> digest of the state at that offset
    view:<name>   an LmdbView's key/values

Exactly once. The state (snapshot, or the view's writes) and the position that produced it commit
in one transaction; LMDB makes the commit atomic and durable. A crash at any moment leaves the
last committed pair; a new Replayer of the same name restores it and resumes at its position, so
every record's effect is in the state exactly once. A view's writes since the last checkpoint sit
in an open write transaction that a crash aborts. Two live replayers of one name would undo that
guarantee, so each checkpoint (and each view transaction) first checks that the stored checkpoint
is still the one this replayer restored or wrote, and raises `TidelogError` otherwise.

Side effects outside the state (e-mails, HTTP calls, another database) cannot join the LMDB
transaction, so they happen at least once, and are made idempotent by keying them on the record's
offset (with the replayer's name: ``f"{name}:{record.offset}"``), which names the same effect in
every replay of the record:

- pass the key to a receiver that deduplicates on it (an idempotency key, an upsert keyed on it);
- or keep an outbox: an LmdbView's `apply` writes the pending effect into its view under the
  offset (committed exactly once, with the position), and a separate sender delivers the outbox
  entries in order and deletes each after the receiver acknowledged it; a crash between delivery
  and deletion redelivers with the same key, which the receiver drops.

Never perform the effect inside `apply` itself: `apply` runs again for every record after the
last checkpoint when a replayer resumes, and in every replica.

Checkpoints fall at offsets that are multiples of `checkpoint_every` (plus where `run` returns,
where `checkpoint_interval` elapses, and, for views, where a following replayer is caught up), so
two replicas with the same `checkpoint_every` checkpoint at the same offsets. Each checkpoint
records a digest of the state there. A replayer declared ``replica_of="other"`` compares its
digests with the other's at every common offset, in order, as each checkpoint commits, and raises
`ReplicaDivergedError` naming the first offset where they differ (the checkpoint is not stored).
`verify_determinism(log, factory)` runs two fresh replicas side by side without storing anything
and reports the first difference, down to the record when a record-by-record re-run shows it.
"""

from __future__ import annotations

import bisect
import hashlib
import signal
import struct
import threading
import time
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional

from tidelog import _args, _core, lmdbenv
from tidelog.errors import (LogClosedError, OffsetOutOfRangeError, ReplicaDivergedError,
                            TidelogError)
from tidelog.positions import check_name

if TYPE_CHECKING:
    from tidelog.log import Log

__all__ = ["Replayer", "LmdbView", "verify_determinism", "DeterminismReport", "Checkpoint",
           "check_replica", "delete_replayer", "read_view", "replayers", "MachineCall",
           "machine_call"]

CHUNK_RECORDS = 16384          # records per step of the per-record loop (progress is called
                               # after each step); stop(), signals and checkpoint_interval end a
                               # step early, between two records (see Replayer._brake)
BATCH_RECORDS = 65536          # at most this many records per apply_batch call (one read_batch)
IDLE_WAIT = 0.05               # seconds a following replayer waits for records between looks
                               # at stop()
PROGRESS_EVERY = 0.1           # seconds: a per-record step that runs longer is cut for progress()
DIGEST_SIZE = 16               # bytes of blake2b: an accidental collision is out of reach
CHECKPOINTS_DB = "checkpoints"
DIGESTS_DB = "digests"
VIEW_DB_PREFIX = "view:"
HEADER = struct.Struct("<4sBBHqqqqq16s")   # magic, format, kind, length of replica_of,
                                            # position, verified through, last agreement,
                                            # commit time ns, checkpoint_every, digest; then
                                            # replica_of (utf-8)
SNAPSHOT_SUFFIX = b"\0snapshot"   # names hold no NUL: no name's key looks like this
MAGIC = b"TLRP"
FORMAT = 1
KIND_SNAPSHOT, KIND_VIEW = 0, 1
KIND_NAMES = {KIND_SNAPSHOT: "snapshot machine", KIND_VIEW: "LmdbView"}
NO_DIGEST = bytes(DIGEST_SIZE)
OFFSET = struct.Struct(">q")    # big-endian, so a name's digests sort by offset


class LmdbView:
    """Base class of a machine whose state is a materialized view: key/values in its own LMDB
    database (``view:<name>`` in the log's positions environment), written in the same write
    transaction that commits the replayer's position: exactly-once effects, no snapshot.

    Define ``apply(self, record, txn)``; optionally ``apply_batch(self, batch, txn)`` (then
    called instead, with RecordBatches) and ``digest(self, txn) -> bytes``. `txn` is an lmdb
    write Transaction whose default database is this view's: ``txn.get(key)``,
    ``txn.put(key, value)``, ``txn.delete(key)``, ``txn.cursor()`` read and write the view (and
    see the writes of earlier records not yet checkpointed). Don't commit or abort it, and don't
    keep it, or values read through it, past the call. `self.db` is the view's database handle.

    The default digest hashes every key and value (one pass over the view per checkpoint);
    override `digest` for a large view (for instance keep a running hash of what apply writes, in
    the view itself). Read a view from elsewhere with `Replayer.read()` or
    ``tidelog.replay.read_view(log, name)``.
    """

    db = None

    def apply(self, record: _core.Record, txn: Any) -> None:
        raise NotImplementedError(f"{type(self).__name__}.apply(record, txn)")

    def digest(self, txn: Any) -> bytes:
        """blake2b of every (key, value) of the view, in key order, length-prefixed."""
        h = hashlib.blake2b(digest_size=DIGEST_SIZE)
        update = h.update
        for k, v in txn.cursor(db=self.db).iternext():
            update(len(k).to_bytes(4, "little"))
            update(k)
            update(len(v).to_bytes(8, "little"))
            update(v)
        return h.digest()


@dataclass(frozen=True)
class DeterminismReport:
    """What verify_determinism found. True (as a bool) when the replicas agreed throughout."""
    deterministic: bool
    start: int                  # the first record replayed
    end: int                    # where the comparison stopped (the divergence, or the end)
    checkpoints: int            # digests compared
    checkpoint_every: int
    offset: Optional[int] = None    # first checkpoint offset whose digests differ
    since: Optional[int] = None     # last checkpoint offset where they agreed
    record: Optional[int] = None    # the first record after which a re-run's states differ

    def __bool__(self) -> bool:
        return self.deterministic

    def __str__(self):
        if self.deterministic:
            return (f"deterministic: two replicas agree at all {self.checkpoints} checkpoints "
                    f"over [{self.start}, {self.end}) (every {self.checkpoint_every} records)")
        since = "no earlier checkpoint" if self.since is None else f"agreed at {self.since}"
        where = (f"; record {self.record} is the first whose effect differs"
                 if self.record is not None else "")
        return (f"NOT deterministic: the replicas' states differ at checkpoint offset "
                f"{self.offset} ({since}){where}")


def _check_log(log):
    from tidelog.log import Log
    if not isinstance(log, Log):
        raise TypeError(f"log: expected a tidelog.Log (from tidelog.open), not "
                        f"{type(log).__name__}")
    if log.closed:
        raise LogClosedError(f"{log.path}: the log is closed")


def _check_machine(machine, what="machine"):
    if isinstance(machine, type):
        raise TypeError(f"{what}: expected a machine object, not the class {machine.__name__} "
                        f"(pass an instance: {machine.__name__}())")
    view = isinstance(machine, LmdbView)
    needed = ("apply",) if view else ("apply", "snapshot", "restore")
    for method in needed:
        if not callable(getattr(machine, method, None)):
            raise TypeError(
                f"{what}: {type(machine).__name__} has no {method}() method; a machine needs "
                f"apply(record), snapshot() and restore(snapshot), or subclasses "
                f"tidelog.LmdbView and defines apply(record, txn)")
    if view and type(machine).apply is LmdbView.apply:
        raise TypeError(f"{what}: {type(machine).__name__} does not define apply(record, txn)")
    return view


def _as_bytes(value, what):
    if isinstance(value, bytes):
        return value
    try:
        view = memoryview(value)
    except TypeError:
        raise TypeError(f"{what}: expected bytes, not {type(value).__name__}") from None
    if "O" in view.format:      # Python object pointers (a numpy object array): not state
        raise TypeError(f"{what}: expected bytes, not a buffer of Python objects "
                        f"({type(value).__name__} of format {view.format!r})")
    return bytes(view)


def _digest_of(machine, view, snap=None, txn=None):
    """The digest of a machine's state: its digest() when it has one, else blake2b of snap."""
    if view:
        d = machine.digest(txn)
    else:
        custom = getattr(machine, "digest", None)
        if custom is not None:
            d = custom()
        else:
            return hashlib.blake2b(snap, digest_size=DIGEST_SIZE).digest()
    d = _as_bytes(d, "digest()")
    if len(d) != DIGEST_SIZE:      # any length is fine: fold it to the stored size
        d = hashlib.blake2b(d, digest_size=DIGEST_SIZE).digest()
    return d


class MachineCall(NamedTuple):
    """Where a replay machine's own code raised: the exception carries this as
    ``exc.tidelog_machine_call`` (and, on Python 3.11+, as a note in its traceback)."""
    machine: str                # the machine's class name
    method: str                 # "apply", "apply_batch", "snapshot", "digest" or "restore"
    offset: Optional[int]       # the record (apply), the batch's first record (apply_batch),
                                # or the checkpoint's offset (snapshot, digest, restore)
    where: str                  # e.g. "at record offset 650"
    replayer: Optional[str]     # the replayer's name (None: ephemeral)

    def __str__(self):
        who = "" if self.replayer is None else f" (replayer {self.replayer!r})"
        return f"{self.machine}.{self.method}() raised {self.where}{who}"


def machine_call(exc):
    """The MachineCall of an exception raised by a replay machine's method, else None."""
    call = getattr(exc, "tidelog_machine_call", None)
    return call if isinstance(call, MachineCall) else None


def _blame(exc, machine, method, offset, where, replayer):
    """Mark `exc`, raised by machine.<method>, with the method and the record offset; the
    exception itself propagates unchanged (its type is the machine's business)."""
    if machine_call(exc) is not None or isinstance(exc, KeyboardInterrupt):
        return                              # said already (innermost call), or not its doing
    call = MachineCall(type(machine).__name__, method, offset, where, replayer)
    try:
        exc.tidelog_machine_call = call
    except (AttributeError, TypeError):     # an exception type without a __dict__
        return
    if hasattr(exc, "add_note"):
        exc.add_note(f"tidelog: {call}")


class Checkpoint(NamedTuple):
    """A replayer's stored checkpoint, as replayers(log) lists them."""
    kind: str                   # "snapshot" or "view"
    position: int
    time_ns: int                # when it was committed (ns since the epoch)
    checkpoint_every: int
    digest: Optional[bytes]     # of the state at `position` (None: digests=False)
    replica_of: Optional[str]
    agreed: Optional[int]       # a replica's last offset of agreement with replica_of
    verified: int               # ... and how far it has compared (-1: not yet)


def _unpack(raw):
    """The Checkpoint of a stored header."""
    if raw is None or len(raw) < HEADER.size:
        raise TidelogError("replayer checkpoint: truncated header")
    magic, fmt, kind, rlen, pos, verified, agreed, t, every, digest = HEADER.unpack_from(raw)
    if magic != MAGIC or fmt != FORMAT or kind not in KIND_NAMES:
        raise TidelogError(f"replayer checkpoint: unknown format (magic {magic!r}, format {fmt}, "
                           f"kind {kind}); written by a newer tidelog?")
    ref = bytes(raw[HEADER.size:HEADER.size + rlen]).decode("utf-8") if rlen else None
    return Checkpoint("view" if kind == KIND_VIEW else "snapshot", pos, t, every,
                      None if digest == NO_DIGEST else bytes(digest), ref,
                      None if agreed < 0 else agreed, verified)


def _dkey(prefix, offset):
    return prefix + OFFSET.pack(offset)


def _stored_digests(txn, db, prefix, start):
    """(offset, digest) of the name whose digest keys start with `prefix`, from offset `start`."""
    cur = txn.cursor(db=db)
    if not cur.set_range(_dkey(prefix, max(start, 0))):
        return
    n = len(prefix)
    for k, v in cur.iternext():
        if not k.startswith(prefix) or len(k) != n + 8:
            return
        yield OFFSET.unpack_from(k, n)[0], v


def _compare(txn, cp_db, dg_db, own, name, reference, verified, agreed, upto):
    """Compare `own` digests ((offset, digest) ascending, offsets > verified) with those of
    `reference` up to offset `upto`; returns the new (verified, agreed) and how many offsets were
    compared; ReplicaDivergedError at
    the first difference. An offset the reference has passed without a digest there is skipped;
    one it has not reached yet stops the comparison (to be resumed later)."""
    ref = check_name(reference, "replica_of")
    raw = txn.get(ref, db=cp_db)
    ref_pos = None if raw is None else _unpack(raw).position
    prefix = ref + b"\0"
    compared = 0
    for off, digest in own:
        if off > upto:
            break
        if off <= verified:
            continue
        theirs = txn.get(_dkey(prefix, off), db=dg_db)
        if theirs is None:
            if ref_pos is None or ref_pos < off:
                break
            verified = off
            continue
        if bytes(theirs) != bytes(digest):
            who = "an unnamed replica" if name is None else f"replica {name!r}"
            since = "never agreed before" if agreed < 0 else f"last agreed at {agreed}"
            lo = max(agreed, 0)
            raise ReplicaDivergedError(
                f"{who} diverged from {reference!r} at checkpoint offset {off}: the state after "
                f"the records below {off} has digest {bytes(digest).hex()}, {reference!r} had "
                f"{bytes(theirs).hex()} ({since}; the first differing record lies in "
                f"[{lo}, {off})). A machine must not read clocks, random numbers or anything "
                f"outside its records: check with tidelog.verify_determinism(log, factory)",
                offset=off, since=None if agreed < 0 else agreed, name=name, reference=reference,
                digest=bytes(digest), expected=bytes(theirs))
        verified = agreed = off
        compared += 1
    return (verified, agreed), compared


def _raised_by_core(exc):
    """Whether `exc` came straight out of tidelog's core (a cursor read), not out of a function
    the loop called: the first frame below the loop's own belongs to the extension module."""
    tb = exc.__traceback__
    below = None if tb is None else tb.tb_next
    return below is not None and below.tb_frame.f_globals.get("__name__") == _core.__name__


class _Alarm:
    """A thread that calls `brake()` once the deadline last given to set() has passed: it ends a
    long per-record step when a checkpoint (checkpoint_interval) or progress() is due, so the
    per-record loop never reads a clock. One per run() that needs it."""

    def __init__(self, brake):
        self._brake = brake
        self._cond = threading.Condition()
        self._due = None
        self._done = False
        self._thread = threading.Thread(target=self._main, name="tidelog-replay-alarm",
                                        daemon=True)
        self._thread.start()

    def set(self, due):
        """Brake at time.monotonic() `due` (inf: never), replacing the previous deadline."""
        with self._cond:
            earlier = self._due is None or due < self._due
            self._due = due
            if earlier:             # a later deadline: the thread finds out when it wakes
                self._cond.notify()

    def close(self):
        with self._cond:
            self._done = True
            self._cond.notify()
        self._thread.join()

    def _main(self):
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
        _check_log(log)
        view = _check_machine(machine)
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
        self.stopped_by = None          # the signal number that stopped the last run, if any
        self._view = view
        self._name_b = name_b
        self._prefix = None if name_b is None else name_b + b"\0"
        self._apply = machine.apply
        self._apply_batch = getattr(machine, "apply_batch", None)
        if not callable(self._apply_batch):
            self._apply_batch = None
        self._stop = False
        self._brake_step = None         # ends the running step (set by each step)
        self._braked = False
        self._running = False
        self._failed = None
        self._closed = False
        self._txn = None                # a view's open write transaction (between checkpoints)
        self._txn_env = None            # ... and the LmdbEnv it belongs to
        self._checkpointed = None       # position of the last checkpoint (stored or restored)
        self._verified = -1             # replica: digests compared through this offset
        self._agreed = -1               # replica: last offset where the digests were equal
        self._mem_digests = []          # ephemeral: [(offset, digest)] ascending
        self._last_snapshot = None      # ephemeral: the snapshot of the last checkpoint
        self._last_cp_time = time.monotonic()

        # LMDB handles (databases) belong to one environment, and a fork() child gets its own:
        # they are looked up (cached per environment) on each use, never kept here
        self._store = None
        self._tmp_env = None            # an ephemeral view's scratch environment
        if name is not None or replica_of is not None:
            self._store = store = log._positions()
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
            self._cur = log.cursor(start, durable_only=True)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ LMDB handles

    @property
    def _cp_db(self):
        return self._store.db(CHECKPOINTS_DB)

    @property
    def _dg_db(self):
        return self._store.db(DIGESTS_DB)

    @property
    def _view_env(self):
        return self._tmp_env if self.name is None else self._store.shared

    @property
    def _view_db(self):
        return self._view_env.db("view" if self.name is None else VIEW_DB_PREFIX + self.name)

    def _open_dbs(self):
        """Open (or look up) every handle this replayer uses before a transaction begins:
        opening a database takes a transaction of its own."""
        if self._store is not None:
            self._store.positions_db, self._cp_db, self._dg_db
        if self._view and (self._tmp_env is not None or self.name is not None):
            self.machine.db = self._view_db

    # ------------------------------------------------------------------ restore

    def _restore(self, start):
        """Load the checkpoint of self.name; returns the position to resume from."""
        store, name = self._store, self.name

        def load(txn):
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
        cp = _unpack(raw)
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
                _blame(exc, self.machine, "restore", cp_pos,
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
        return self._store.read(lambda txn: {o: bytes(d) for o, d in
                                             _stored_digests(txn, self._dg_db, self._prefix, 0)})

    def __repr__(self):
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

    def _brake(self):
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

    def _on_signal(self, signum, frame):
        self.stopped_by = signum
        self.stop()

    def _run(self, until, follow, progress):
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

    def _dirty(self):
        return self._cur.position != (self._start if self._checkpointed is None
                                      else self._checkpointed)

    def _apply_to(self, stop):
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

    def _regrow(self):
        """A view's map is full: drop its transaction, grow the map, rewind to the last
        checkpoint."""
        env = self._txn_env or self._view_env
        self._end_txn()
        env.grow()
        self._cur.seek(self._start if self._checkpointed is None else self._checkpointed)

    def _end_txn(self, commit=False):
        txn, self._txn = self._txn, None
        env, self._txn_env = self._txn_env, None
        if txn is not None:
            env.end(txn, commit)

    def _apply_range(self, stop):
        cur = self._cur
        n = stop - cur.position
        txn = self._begin() if self._view else None
        braked = False

        def brake():                # a closure cell: the cheapest flag a loop can look at
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
                    _blame(exc, machine, "apply_batch", at,
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
                    _blame(exc, machine, "apply", at, f"at record offset {at}", self.name)
                raise
        if cur.position != stop and not braked:
            raise TidelogError(f"replayer {self.name!r}: stopped at {cur.position} short of "
                               f"{stop}, below durable_offset")

    def _begin(self):
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

    def _fence(self, txn):
        """Raise unless the stored checkpoint and position are still the ones this replayer
        restored or wrote (another replayer of the same name would double-apply records)."""
        raw = txn.get(self._name_b, db=self._cp_db)
        stored = None if raw is None else _unpack(raw).position
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

    def _checkpoint_snapshot(self, pos):
        m = self.machine
        method = "snapshot"
        try:
            snap = _as_bytes(m.snapshot(), "snapshot()")
            method = "digest"
            digest = _digest_of(m, False, snap) if self.record_digests else None
        except BaseException as exc:
            _blame(exc, m, method, pos, f"at the checkpoint at offset {pos}", self.name)
            raise
        if self.name is None:
            self._remember(pos, digest)
            self._last_snapshot = snap
            return
        self._open_dbs()

        def write(txn):
            self._fence(txn)
            return self._write_checkpoint(txn, pos, digest, snap)

        self._verified, self._agreed = self._store.write(write)

    def _checkpoint_view(self, pos):
        while True:
            txn = self._begin()
            try:
                try:
                    digest = (_digest_of(self.machine, True, txn=txn) if self.record_digests
                              else None)
                except BaseException as exc:
                    _blame(exc, self.machine, "digest", pos, f"at the checkpoint at offset {pos}",
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

    def _remember(self, pos, digest):
        """An ephemeral checkpoint: keep the digest in memory, compare it with the reference."""
        if digest is None:
            return
        if self._mem_digests and self._mem_digests[-1][0] == pos:
            self._mem_digests[-1] = (pos, digest)
        else:
            self._mem_digests.append((pos, digest))
        if self.replica_of is not None:
            self._open_dbs()
            self._verified, self._agreed = self._store.read(lambda t: self._compare_in(t, pos))

    def _write_checkpoint(self, txn, pos, digest, snap):
        """Put digest, position and header (+ snapshot) into txn; returns the new
        (verified, agreed) of a replica, to take effect once txn commits."""
        verified = (self._verified, self._agreed)
        if digest is not None:
            txn.put(_dkey(self._prefix, pos), digest, db=self._dg_db)
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

    def _prune(self, txn, below):
        cur = txn.cursor(db=self._dg_db)
        if not cur.set_range(self._prefix):
            return
        while True:
            key = cur.key()
            if not key.startswith(self._prefix) or OFFSET.unpack_from(key, len(self._prefix))[0] >= below:
                return
            if not cur.delete():
                return

    def _own_digests(self, txn):
        if self.name is None:
            i = bisect.bisect_right(self._mem_digests, (self._verified, b"\xff" * DIGEST_SIZE))
            return iter(self._mem_digests[i:])
        return _stored_digests(txn, self._dg_db, self._prefix, self._verified + 1)

    def _compare_in(self, txn, upto):
        return _compare(txn, self._cp_db, self._dg_db, self._own_digests(txn), self.name,
                        self.replica_of, self._verified, self._agreed, upto)[0]

    def verify(self):
        """Compare this replica's digests with its reference's at every common checkpoint offset
        not compared yet (the reference may have caught up since the last checkpoint). Returns
        the last offset where they agree (None: none compared yet); ReplicaDivergedError at the
        first difference."""
        if self.replica_of is None:
            raise TypeError("verify: this replayer has no replica_of")
        self._check_usable(running_ok=True)
        self._open_dbs()
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
        return self._store.shared.reader(db=VIEW_DB_PREFIX + self.name)

    def _check_usable(self, running_ok=False):
        if self._closed:
            raise TidelogError(f"replayer {self.name!r}: closed")
        if self._failed is not None:
            raise TidelogError(
                f"replayer {self.name!r}: a previous run failed ({self._failed!r}) and left its "
                f"machine in an undefined state; make a new Replayer with a fresh machine to "
                f"resume from the last checkpoint ({self._checkpointed})")
        if self._running and not running_ok:
            raise TidelogError(f"replayer {self.name!r}: run() is already running")

    def _fail(self, exc):
        if self._failed is None:
            self._failed = exc
        self._end_txn()

    def close(self):
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

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------------- module functions

def _existing_dbs(log, *names):
    """(store, [whether it exists, per name]) without creating anything: reading never creates
    the positions store or a database in it. store is None when there is no store. (Handles
    are looked up inside each transaction: a lock-less reader's copy may change between.)"""
    store = log._positions(create=False)
    if store is None:
        return None, [False] * len(names)
    return store, [store.has_db(n) for n in names]


def check_replica(log, name, reference):
    """Compare the stored digests of replayer `name` with those of `reference` at every common
    checkpoint offset. Returns (offsets compared, last offset where they agree or None);
    ReplicaDivergedError at the first difference."""
    _check_log(log)
    name_b = check_name(name, "name")
    check_name(reference, "reference")
    store, (has_cp, has_dg) = _existing_dbs(log, CHECKPOINTS_DB, DIGESTS_DB)
    if not (has_cp and has_dg):
        return 0, None

    def compare(txn):
        cp_db, dg_db = store.db(CHECKPOINTS_DB), store.db(DIGESTS_DB)
        return _compare(txn, cp_db, dg_db, _stored_digests(txn, dg_db, name_b + b"\0", 0),
                        name, reference, -1, -1, 1 << 62)

    (_, agreed), n = store.read(compare)
    return n, None if agreed < 0 else agreed


def replayers(log: Log) -> dict[str, Checkpoint]:
    """{name: Checkpoint} of every replayer with a checkpoint in this log's positions store."""
    _check_log(log)
    store, (has_cp,) = _existing_dbs(log, CHECKPOINTS_DB)
    if not has_cp:
        return {}
    return store.read(lambda txn: {bytes(k).decode("utf-8"): _unpack(v) for k, v in
                                   txn.cursor(db=store.db(CHECKPOINTS_DB)) if b"\0" not in k})


def delete_replayer(log: Log, name: str) -> bool:
    """Forget replayer `name`: its position, checkpoint, digests and view. True if it had any.
    (A live Replayer of that name in this process must not be used afterwards.)"""
    _check_log(log)
    name_b = check_name(name, "name", existing=True)
    store = log._positions()
    cp_db, dg_db = store.db(CHECKPOINTS_DB), store.db(DIGESTS_DB)
    store.positions_db                  # opened before the write transaction, as the others
    view_key = VIEW_DB_PREFIX + name

    def delete(txn):
        found = store.delete(name, txn)
        found |= txn.delete(name_b, db=cp_db)
        txn.delete(name_b + SNAPSHOT_SUFFIX, db=cp_db)
        keys = [k for k, _ in _stored_digests(txn, dg_db, name_b + b"\0", 0)]
        for off in keys:
            txn.delete(_dkey(name_b + b"\0", off), db=dg_db)
        found |= bool(keys)
        if txn.get(view_key.encode(), db=None) is not None:    # a named db lives in the main db
            txn.drop(store.shared.db(view_key, txn=txn), delete=True)
            found = True
        return found

    try:
        return store.write(delete)
    finally:
        store.shared.forget_db(view_key)    # the handle is gone with the database


def read_view(log: Log, name: str) -> Any:
    """A read transaction on the view of LmdbView replayer `name` (default database the view),
    a context manager: ``with read_view(log, "counts") as txn: txn.get(b"u42")``. KeyError when
    there is no such view."""
    _check_log(log)
    check_name(name, "name", existing=True)
    store, (has_view,) = _existing_dbs(log, VIEW_DB_PREFIX + name)
    if not has_view:
        raise KeyError(f"no replayer view named {name!r} in {log.path}")
    return store.shared.reader(db=VIEW_DB_PREFIX + name)


def verify_determinism(log: Log, factory: Callable[[], Any], *, until: int | None = None,
                       checkpoint_every: int = 10_000, locate_record: bool = True,
                       raise_on_divergence: bool = True) -> DeterminismReport:
    """Replay the log into two fresh machines from `factory()` side by side, stepping both to each
    multiple of `checkpoint_every` (and to `until`, default the durable end) and comparing their
    digests there. Stores nothing: no positions, no checkpoints, nothing in the log's directory
    (two LmdbViews live in temporary LMDB environments outside the log, deleted at the end).

    Returns a DeterminismReport. At the first checkpoint offset whose digests differ, with
    `locate_record` (snapshot machines), the interval since the last agreement is re-run record
    by record in two more fresh machines, restored from the agreeing snapshot, comparing digests
    after each record, to name the first record whose effect differs (`report.record`; None if
    the re-run does not reproduce it). Then ReplicaDivergedError (with `.report`) unless
    `raise_on_divergence=False`."""
    _check_log(log)
    if not callable(factory):
        raise TypeError(f"factory: expected a callable that returns a fresh machine, not "
                        f"{type(factory).__name__}")
    checkpoint_every = _args.count(checkpoint_every, "checkpoint_every")
    start, durable = log.start_offset, log.durable_offset
    if until is None:
        until = durable
    elif not start <= (until := _args.offset(until, "until")) <= durable:
        raise ValueError(f"until: {until} is outside [start_offset, durable_offset] = "
                         f"[{start}, {durable}]")
    ma, mb = factory(), factory()
    view = _check_machine(ma, "factory()")
    if _check_machine(mb, "factory()") != view or ma is mb:
        raise TypeError("factory: must return a new machine of the same kind on every call")
    a = b = None
    try:
        a = Replayer(log, ma, name=None, checkpoint_every=checkpoint_every)
        b = Replayer(log, mb, name=None, checkpoint_every=checkpoint_every)
        pos, since, compared, agreed_snapshot = start, None, 0, None
        report = None
        while pos < until:
            cp = min(until, (pos // checkpoint_every + 1) * checkpoint_every)
            a.run(until=cp)
            b.run(until=cp)
            (oa, da), (ob, db) = a._mem_digests[-1], b._mem_digests[-1]
            assert oa == ob == cp, (oa, ob, cp)
            compared += 1
            if da != db:
                record = None
                if locate_record and not view:
                    record = _locate_record(log, factory, agreed_snapshot,
                                            start if since is None else since, cp)
                report = DeterminismReport(False, start, cp, compared, checkpoint_every,
                                           offset=cp, since=since, record=record)
                break
            since, pos = cp, cp
            if not view:
                agreed_snapshot = a._last_snapshot
        if report is None:
            report = DeterminismReport(True, start, pos, compared, checkpoint_every, since=since)
    finally:
        for r in (a, b):
            if r is not None:
                r.close()
    if not report and raise_on_divergence:
        raise ReplicaDivergedError(str(report), offset=report.offset, since=report.since,
                                   record=report.record, report=report)
    return report


def _locate_record(log, factory, snapshot, start, stop):
    """The first record in [start, stop) after which two fresh machines (restored from
    `snapshot`, or new when None) applying the same records have different digests, or None."""
    m1, m2 = factory(), factory()
    method, at = "restore", start
    try:
        if snapshot is not None:
            m1.restore(snapshot)
            m2.restore(snapshot)
        method = None                   # reading the log: not the machine's doing
        for rec in islice(log.cursor(start, durable_only=True), stop - start):
            at = rec.offset
            method = "apply"
            m1.apply(rec)
            m2.apply(rec)
            method = "snapshot"
            s1, s2 = _as_bytes(m1.snapshot(), "snapshot()"), _as_bytes(m2.snapshot(), "snapshot()")
            method = "digest"
            if _digest_of(m1, False, s1) != _digest_of(m2, False, s2):
                return rec.offset
            method = None
    except BaseException as exc:
        if method is not None:
            _blame(exc, m1, method, at,
                   f"at record offset {at} (locating the first differing record)", None)
        raise
    return None
