"""Cursor: a position in a log; Record and RecordBatch come from the core. Also the asyncio
waiting of follow_async: AsyncWaiter, one waiter thread per log (and per offset it watches) that
wakes every task waiting on that log, so no waiting task holds a thread of a shared pool."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, Literal, SupportsIndex, Union

from tidelog import _args, _core
from tidelog.errors import OffsetOutOfRangeError

if TYPE_CHECKING:
    from typing import NoReturn

    from typing_extensions import Self, TypeAlias

    from tidelog.log import Log

    #: a cursor position: an offset, or "earliest" / "latest"
    Where: TypeAlias = Union[SupportsIndex, Literal["earliest", "latest"]]

__all__ = ["Cursor", "Record", "RecordBatch"]

DEFAULT_SPIN = 50e-6     # seconds a waiting cursor spins before it sleeps (latency vs. CPU)
WAITER_LINGER = 5.0      # seconds an idle waiter thread stays for the next wait before it exits

Record = _core.Record
RecordBatch = _core.RecordBatch


class Cursor(_core.CursorCore):
    """A position in a log: iterate it for :class:`Record` objects, or call :meth:`read_batch`
    for zero-copy batches. Get one from :meth:`Log.cursor`.

    ``position`` (int) is the offset of the next record it yields. Iterating yields records
    until it reaches the end offset as of each step (it keeps up with appends meanwhile), then
    stops; :meth:`follow` waits for more. Anonymous cursors see every appended record; named
    ones (and ``durable_only=True``) only durable records. Reading raises
    :exc:`OffsetOutOfRangeError` when the position fell below `start_offset` (retention),
    :exc:`CorruptLogError` at damage, :exc:`LogClosedError` once the log is closed.

    A cursor is for one thread at a time, as a Kafka consumer is: close(), commit() and
    committed() may come from another thread, but threads reading one cursor may each get the
    same records (never a wrong or damaged one); give each reading thread its own cursor."""

    #: the subscriber name of a named cursor (Log.cursor(name=...)), None for an anonymous one
    name: str | None = None

    if TYPE_CHECKING:
        @property
        def log(self) -> Log: ...

    def resolve_offset(self, where: object, name: str = "offset") -> int:
        """`where` (an int offset, "earliest" or "latest") as an int offset for this cursor, or
        TypeError naming `name`. (Log.cursor uses it for its `start`.)"""
        log = self.log
        if isinstance(where, str) and where == "earliest":
            return log.start_offset
        if isinstance(where, str) and where == "latest":   # durable-only: the latest durable
            return log.durable_offset if self.durable_only else log.end_offset
        try:
            return _args.integer(where, name)
        except TypeError:
            raise TypeError(f"{name}: expected an int offset, 'earliest' or 'latest', "
                            f"not {where!r}") from None

    def seek(self, offset: Where) -> None:
        """Move to `offset`: an int, ``"earliest"`` (`start_offset`) or ``"latest"``
        (`end_offset`; `durable_offset` for a durable-only cursor).

        An int must lie in ``[start_offset, end_offset]``, else :exc:`OffsetOutOfRangeError`
        (retention moving `start_offset` meanwhile shows on the next read)."""
        self._check_usable()
        named = offset in ("earliest", "latest") if isinstance(offset, str) else False
        offset = self.resolve_offset(offset, "offset")
        start, end = self.log.start_offset, self.log.end_offset
        if not named and not start <= offset <= end:
            raise OffsetOutOfRangeError(f"offset {offset} is outside [{start}, {end}]")
        self._set_position(offset)

    def seek_time(self, timestamp_ns: SupportsIndex) -> None:
        """Move to the first record with a timestamp >= `timestamp_ns` (int, nanoseconds since
        the epoch), or to the end when there is none."""
        self.seek(self.log.offset_for_time(_args.offset(timestamp_ns, "timestamp_ns")))

    def wait(self, timeout: float | None = None, *, spin: float = DEFAULT_SPIN) -> bool:
        """Block until a record at self.position exists (True) or `timeout` seconds pass (False;
        None: no limit). Spins for `spin` seconds first, then sleeps until the writer (in any
        process) publishes: a futex on the shared control page, so an idle follower uses no CPU.
        A named (durable-only) cursor waits for the record to be durable."""
        timeout = _args.timeout(timeout)
        spin = _args.seconds(spin, "spin", allow_zero=True)
        self._check_usable()
        woke = self.log.wait_for(self.position, self.durable_only, timeout, spin,
                                  self._cancel_event())
        self._check_usable()            # close() from another thread ended the wait
        return woke

    def follow(self, timeout: float | None = None, *,
               spin: float = DEFAULT_SPIN) -> Iterator[Record]:
        """Yield records as the writer appends, across segment rolls and writer restarts; stop
        after `timeout` seconds without a new record (None: never)."""
        timeout = _args.timeout(timeout)
        spin = _args.seconds(spin, "spin", allow_zero=True)
        self._check_usable()
        return self._follow(timeout, spin)

    def _follow(self, timeout: float | None, spin: float) -> Iterator[Record]:
        while True:
            for rec in self:
                yield rec
            if not self.wait(timeout, spin=spin):
                return

    def follow_batches(self, timeout: float | None = None, *, max_records: SupportsIndex = 65536,
                       max_bytes: SupportsIndex | None = None,
                       spin: float = DEFAULT_SPIN) -> Iterator[RecordBatch]:
        """follow() a batch at a time: yields non-empty RecordBatches (zero-copy, one segment
        each) as the writer appends; the way for a consumer to keep up with a fast writer."""
        timeout = _args.timeout(timeout)
        max_records = _args.count(max_records, "max_records")
        max_bytes = None if max_bytes is None else _args.count(max_bytes, "max_bytes")
        spin = _args.seconds(spin, "spin", allow_zero=True)
        self._check_usable()
        return self._follow_batches(timeout, max_records, max_bytes, spin)

    def _follow_batches(self, timeout: float | None, max_records: int, max_bytes: int | None,
                        spin: float) -> Iterator[RecordBatch]:
        while True:
            batch = self.read_batch(max_records, max_bytes)
            if len(batch):
                yield batch
            elif not self.wait(timeout, spin=spin):
                return

    def follow_async(self, timeout: float | None = None, *,
                     yield_every: SupportsIndex = 1024) -> AsyncIterator[Record]:
        """follow() for asyncio: an async iterator that never blocks the event loop and holds no
        thread of a shared pool while it waits (one waiter thread per log wakes every waiting
        task; see AsyncWaiter); yields to the loop every `yield_every` records. Cancelling the
        task, or the loop shutting down, ends the wait at once."""
        timeout = _args.timeout(timeout)
        yield_every = _args.count(yield_every, "yield_every")
        self._check_usable()
        return self._follow_async(timeout, yield_every)

    async def _follow_async(self, timeout: float | None,
                            yield_every: int) -> AsyncIterator[Record]:
        n = 0
        while True:
            for rec in self:
                yield rec
                n += 1
                if n % yield_every == 0:
                    await asyncio.sleep(0)
            if not await wait_async(self.log, self.position, self.durable_only, timeout):
                return

    def commit(self, offset: SupportsIndex | None = None) -> int:
        """Durably store this named cursor's position (or `offset`, an int) under its name and
        return the offset stored; on stable storage when it returns.

        The offset must lie in ``[start_offset, durable_offset]`` (a committed position never
        runs ahead of what survives a power loss), else ValueError. TypeError for an anonymous
        cursor (no name)."""
        if self.name is None:
            raise TypeError("commit: an anonymous cursor has no stored position; open one with "
                            "log.cursor(name=...)")
        self._check_usable()
        offset = self.log.check_commit_offset(self.position if offset is None else offset)
        self.log.position_store().put(self.name, offset)
        return offset

    # ------------------------------------------------ Arrow (tidelog.arrow; the tidelog[arrow] extra)

    def read_arrow(self, max_records: SupportsIndex | None = None, *, value_type: object = None,
                   headers: bool | None = None) -> Any:
        """The next records as a ``pyarrow.Table``, and move past them: columns ``offset``
        (int64), ``timestamp`` (timestamp[ns, UTC]), ``key`` (binary, null where a record has
        none), ``value`` (binary) and ``headers`` (list of (name, value) structs) when some
        record has headers (`headers` True/False: always/never). One chunk per frame of the log
        (a run of single appends is one chunk).

        `max_records` (int, at least 1; None: up to the end as of the call, the durable end for
        a durable-only cursor). An empty table means the cursor was at the end.

        Zero-copy: the key and value buffers of records written by ``append_batch`` are the
        mapped segment itself, kept alive by the table (it outlives ``log.close()`` and
        retention); values of single appends are copied, once per run (they are not columnar
        on disk). Every record has passed its CRC check: at damage the records before it come
        first, and the next call raises :exc:`CorruptLogError` (as :meth:`read_batch`).

        `value_type`: an Arrow fixed-width type (``pa.float64()``, ``pa.binary(16)``,
        ``pa.list_(pa.int32(), 3)``, ...) or a numpy dtype: the ``value`` column is then of that
        type, zero-copy; a structured dtype makes a struct column (one copy per field: Arrow
        stores fields column by column). ValueError unless every value has the type's size.
        Needs pyarrow (``pip install 'tidelog[arrow]'``)."""
        from tidelog import arrow
        self._check_usable()
        return arrow.read_arrow(self, None if max_records is None else
                                _args.count(max_records, "max_records"), value_type, headers)

    def scan_arrow(self, stop: SupportsIndex | None = None, *,
                   batch_records: SupportsIndex = 65536, value_type: object = None,
                   headers: bool = False) -> Any:
        """A ``pyarrow.RecordBatchReader`` of the records from this cursor's position up to
        `stop` (an offset; None: the end, or the durable end for a durable-only cursor, as of the
        call), moving the cursor as it is read: commit() a named cursor after it. Batches as
        :meth:`read_arrow`'s chunks (one per frame, at most `batch_records` records each); the
        schema has a ``headers`` column only when `headers` is True. See
        :meth:`Log.scan_arrow`."""
        from tidelog import arrow
        self._check_usable()
        return arrow.scan_arrow(self, None if stop is None else _args.offset(stop, "stop"),
                                _args.count(batch_records, "batch_records"), value_type, headers)

    # ------------------------------------------------ the shapes of Kafka consumers and sqlite3

    def poll(self, timeout: float | None = None, max_records: SupportsIndex = 65536, *,
             max_bytes: SupportsIndex | None = None) -> RecordBatch:
        """The next records as a :class:`RecordBatch`, as a Kafka consumer's poll: what is there
        now (up to `max_records` records of one segment, about `max_bytes` bytes of values; None:
        no limit), else wait up to `timeout` seconds (None: until a record comes; 0: do not
        wait) for the first to come. An empty batch means the timeout passed. The position
        moves past what it returns.

        A named cursor polls durable records only, as it reads. close() of the cursor from
        another thread ends a waiting poll with :exc:`LogClosedError` (at once on a writer's
        log, within a second on a reader's); so does close() of the log."""
        timeout = _args.timeout(timeout)
        max_records = _args.count(max_records, "max_records")
        max_bytes = None if max_bytes is None else _args.count(max_bytes, "max_bytes")
        cancel = self._cancel_event()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            batch = self.read_batch(max_records, max_bytes)
            if len(batch):
                return batch
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return batch
            self.log.wait_for(self.position, self.durable_only, left, DEFAULT_SPIN, cancel)
            self._check_usable()

    def _cancel_event(self) -> threading.Event:
        """The Event close() sets to end this cursor's waits (made on first use); raises if the
        cursor is closed, also by a close() that ran before the event existed."""
        self._check_usable()
        cancel: threading.Event | None = self.__dict__.get("_cancel")
        if cancel is None:
            cancel = self.__dict__.setdefault("_cancel", threading.Event())
        self._check_usable()
        return cancel

    def committed(self) -> int | None:
        """The position (int) last committed under this named cursor's name (by any cursor or
        process with that name), or None when there is none; not this cursor's current
        position. TypeError for an anonymous cursor."""
        if self.name is None:
            raise TypeError("committed: an anonymous cursor has no stored position; open one "
                            "with log.cursor(name=...)")
        self._check_usable()
        return self.log.positions().get(self.name)

    def close(self) -> None:
        """Stop using the cursor: every later read, seek, wait, poll or commit raises
        :exc:`LogClosedError`; a poll, wait or follow waiting in another thread ends with it (at
        once on a writer's log, within a second on a reader's; follow_async at its next record).
        Idempotent. A named cursor's committed position stays (close() does not commit: call
        commit() first); the log stays open. `position` and `closed` can still be read."""
        self._mark_closed()
        cancel = self.__dict__.get("_cancel")
        log = self.log
        if cancel is not None:
            cancel.set()
            if log is not None and not log.closed and not log.inherited_copy:
                log.wake_sleepers()    # a wait asleep on a writer's log: look at once

    def __enter__(self) -> Self:
        self._check_usable()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> NoReturn:
        raise TypeError("a tidelog Cursor cannot be pickled (it reads a log this process "
                        "opened): send its position (and name), and open a cursor in the other "
                        "process; records and batches pickle")

    def __repr__(self) -> str:
        name = "" if self.name is None else f" {self.name!r}"
        return f"<tidelog.Cursor{name} at {self.position} of {self.log.path!r}>"


class AsyncWaiter:
    """Wakes the asyncio tasks that wait for one log's end_offset (durable_offset when
    `durable`) to pass their positions, in any number of event loops.

    Owns `_waiting` ({future: (loop, position)}), `_thread`, `_seen` and `_kick`, all under
    `_cond`'s lock. The thread (a daemon: it never delays interpreter exit, and it is no
    executor's worker, so loop shutdown never waits for it) repeats: look at the offset `v`,
    settle every future whose position is below it (through its loop's call_soon_threadsafe),
    then sleep in the core's futex wait until the offset passes `v` (the GIL released). Every
    future still registered has a position >= `v` -- a task registers only after it saw the
    offset <= its position, and re-checks after registering -- so the first change any of them
    needs wakes the thread. A registration below `v` (the offset went back: a writer restarted
    after a crash) kicks it. A future cancelled or timed out is dropped on its loop; when none
    is left the thread is kicked off the log (it holds only a weak reference between waits, so
    a dropped log is still collected) and exits after WAITER_LINGER seconds without work.
    close() of the log wakes the thread, which fails every future with LogClosedError."""

    def __init__(self, log: Log, durable: bool) -> None:
        self._ref = weakref.ref(log)
        self._durable = durable
        self._cond = threading.Condition(threading.Lock())
        self._waiting: dict[asyncio.Future[bool], tuple[asyncio.AbstractEventLoop, int]] = {}
        self._thread: threading.Thread | None = None
        self._seen: int | None = None   # the offset the thread sleeps to see passed, or None
        self._kick = threading.Event()

    def _offset(self, log: Log) -> int:
        return log.durable_offset if self._durable else log.end_offset

    def add(self, fut: asyncio.Future[bool], loop: asyncio.AbstractEventLoop,
            position: int) -> None:
        """Register `fut` to get True once the offset passes `position`."""
        log = self._ref()
        with self._cond:
            self._waiting[fut] = (loop, position)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tidelog-async-waiter",
                                                daemon=True)
                self._thread.start()
            elif self._seen is not None and position < self._seen:
                self._wake(log)
            self._cond.notify()
        assert log is not None                  # (the caller holds it)
        if position < self._offset(log):        # it moved meanwhile: no need to wait
            with self._cond:
                self._waiting.pop(fut, None)
            if not fut.done():
                fut.set_result(True)

    def discard(self, fut: asyncio.Future[bool]) -> None:
        """Forget `fut` (done, cancelled or timed out); called on its loop. The last one
        cancelled or timed out sends the thread off the log."""
        with self._cond:
            if self._waiting.pop(fut, None) is not None and not self._waiting:
                if self._seen is not None:
                    self._wake(self._ref())     # let go of the log now

    def _wake(self, log: Log | None) -> None:
        self._kick.set()
        if log is not None:
            log.wake_sleepers()

    def _run(self) -> None:
        idle = False                # the last look found no task to wake
        while True:
            with self._cond:
                if idle and not self._waiting:
                    self._cond.wait(WAITER_LINGER)
                    if not self._waiting:
                        self._thread = None
                        return
                self._kick.clear()
                log = self._ref()
                settle, error = [], None
                try:
                    if log is None:
                        raise ReferenceError("the log was collected")
                    v = self._seen = self._offset(log)
                except BaseException as e:      # closed (LogClosedError) or gone
                    error, settle = e, list(self._waiting.items())
                    self._waiting.clear()
                    self._thread = self._seen = None
                else:
                    for fut, (loop, position) in list(self._waiting.items()):
                        if position < v:
                            del self._waiting[fut]
                            settle.append((fut, (loop, position)))
                idle = not settle and not self._waiting
            for fut, (loop, _) in settle:
                _settle_soon(loop, fut, True, error)
            if error is not None:
                return
            try:
                if not idle:
                    # also when the tasks just woken have not come back yet: they register
                    # while this sleeps (no wake-up of this thread needed), as a follower does
                    # after each record; with nobody waiting, only for WAITER_LINGER
                    assert log is not None      # (else error was set above)
                    log.wait_for(v, self._durable, None if self._waiting else WAITER_LINGER,
                                  0.0, self._kick)
            except BaseException as e:          # closed, or the writer failed (durable)
                with self._cond:
                    settle = list(self._waiting.items())
                    self._waiting.clear()
                    self._thread = self._seen = None
                for fut, (loop, _) in settle:
                    _settle_soon(loop, fut, True, e)
                return
            finally:
                self._seen = None
                del log


def _settle(fut: asyncio.Future[bool], result: bool, error: BaseException | None) -> None:
    if not fut.done():
        if error is None:
            fut.set_result(result)
        else:
            fut.set_exception(error)


def _settle_soon(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[bool], result: bool,
                 error: BaseException | None = None) -> None:
    try:
        loop.call_soon_threadsafe(_settle, fut, result, error)
    except RuntimeError:        # the loop is closed: nobody waits for it any more
        pass


_waiters_lock = threading.Lock()
_waiters: weakref.WeakKeyDictionary[Log, list[AsyncWaiter | None]] = weakref.WeakKeyDictionary()     # log -> [AsyncWaiter of end_offset, of durable_offset]


def _waiter_for(log: Log, durable: bool) -> AsyncWaiter:
    with _waiters_lock:
        pair = _waiters.get(log)
        if pair is None:
            pair = _waiters[log] = [None, None]
        w = pair[durable]
        if w is None:
            w = pair[durable] = AsyncWaiter(log, durable)
        return w


def _after_fork_in_child() -> None:
    """A fork child has none of the waiter threads (nor can it trust their locks): start over."""
    global _waiters_lock, _waiters
    _waiters_lock = threading.Lock()
    _waiters = weakref.WeakKeyDictionary()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


async def wait_async(log: Log, position: int, durable: bool, timeout: float | None) -> bool:
    """True once `log`'s end_offset (durable_offset when `durable`) is past `position`, False
    after `timeout` seconds (None: no limit). Waits on the log's AsyncWaiter, never in a pool."""
    if position < (log.durable_offset if durable else log.end_offset):
        return True
    if timeout is not None and timeout <= 0:
        return False
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[bool] = loop.create_future()
    waiter = _waiter_for(log, bool(durable))
    timer = None if timeout is None else loop.call_later(timeout, _settle, fut, False, None)
    try:
        waiter.add(fut, loop, position)
        return await fut
    finally:
        if timer is not None:
            timer.cancel()
        waiter.discard(fut)
