"""Cursor: a position in a log; Record and RecordBatch come from the core."""

import asyncio
import threading

from tidelog import _args, _core
from tidelog.errors import OffsetOutOfRangeError

__all__ = ["Cursor", "Record", "RecordBatch"]

DEFAULT_SPIN = 50e-6     # seconds a waiting cursor spins before it sleeps (latency vs. CPU)

Record = _core.Record
RecordBatch = _core.RecordBatch


class Cursor(_core.CursorCore):
    """Iterate records from a position; read_batch for zero-copy batches. Get one from
    Log.cursor()."""

    name = None

    def _resolve(self, where, name):
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

    def seek(self, offset):
        """Move to `offset`, which must lie in [start_offset, end_offset] ("earliest" and
        "latest" always do: retention moving start_offset meanwhile shows on the next read)."""
        named = offset in ("earliest", "latest") if isinstance(offset, str) else False
        offset = self._resolve(offset, "offset")
        start, end = self.log.start_offset, self.log.end_offset
        if not named and not start <= offset <= end:
            raise OffsetOutOfRangeError(f"offset {offset} is outside [{start}, {end}]")
        self._set_position(offset)

    def seek_time(self, timestamp_ns):
        """Move to the first record with timestamp >= timestamp_ns (the end if none)."""
        self.seek(self.log.offset_for_time(_args.offset(timestamp_ns, "timestamp_ns")))

    def wait(self, timeout=None, *, spin=DEFAULT_SPIN):
        """Block until a record at self.position exists (True) or `timeout` seconds pass (False;
        None: no limit). Spins for `spin` seconds first, then sleeps until the writer (in any
        process) publishes: a futex on the shared control page, so an idle follower uses no CPU.
        A named (durable-only) cursor waits for the record to be durable."""
        timeout = _args.timeout(timeout)
        spin = _args.seconds(spin, "spin", allow_zero=True)
        return self.log._wait_for(self.position, self.durable_only, timeout, spin)

    def follow(self, timeout=None, *, spin=DEFAULT_SPIN):
        """Yield records as the writer appends, across segment rolls and writer restarts; stop
        after `timeout` seconds without a new record (None: never)."""
        timeout = _args.timeout(timeout)
        spin = _args.seconds(spin, "spin", allow_zero=True)
        return self._follow(timeout, spin)

    def _follow(self, timeout, spin):
        while True:
            for rec in self:
                yield rec
            if not self.wait(timeout, spin=spin):
                return

    def follow_batches(self, timeout=None, *, max_records=65536, max_bytes=None,
                       spin=DEFAULT_SPIN):
        """follow() a batch at a time: yields non-empty RecordBatches (zero-copy, one segment
        each) as the writer appends; the way for a consumer to keep up with a fast writer."""
        timeout = _args.timeout(timeout)
        max_records = _args.count(max_records, "max_records")
        max_bytes = None if max_bytes is None else _args.count(max_bytes, "max_bytes")
        spin = _args.seconds(spin, "spin", allow_zero=True)
        return self._follow_batches(timeout, max_records, max_bytes, spin)

    def _follow_batches(self, timeout, max_records, max_bytes, spin):
        while True:
            batch = self.read_batch(max_records, max_bytes)
            if len(batch):
                yield batch
            elif not self.wait(timeout, spin=spin):
                return

    def follow_async(self, timeout=None, *, yield_every=1024):
        """follow() for asyncio: an async iterator that never blocks the event loop (it waits in
        a worker thread, cancellable) and yields to the loop every `yield_every` records."""
        timeout = _args.timeout(timeout)
        yield_every = _args.count(yield_every, "yield_every")
        return self._follow_async(timeout, yield_every)

    async def _follow_async(self, timeout, yield_every):
        loop = asyncio.get_running_loop()
        n = 0
        while True:
            for rec in self:
                yield rec
                n += 1
                if n % yield_every == 0:
                    await asyncio.sleep(0)
            if not await self._wait_async(loop, timeout):
                return

    async def _wait_async(self, loop, timeout):
        if self.position < (self.log.durable_offset if self.durable_only else self.log.end_offset):
            return True
        cancel = threading.Event()
        fut = loop.run_in_executor(None, self.log._wait_for, self.position, self.durable_only,
                                   timeout, 0.0, cancel)
        try:
            return await fut
        except asyncio.CancelledError:
            cancel.set()
            self.log._wake_sleepers()       # the worker thread returns at once
            raise

    def commit(self, offset=None):
        """Durably store this named cursor's position (or `offset`, which must lie in
        [start_offset, durable_offset]); on stable storage when it returns."""
        if self.name is None:
            raise TypeError("commit: an anonymous cursor has no stored position; open one with "
                            "log.cursor(name=...)")
        offset = self.log._check_commit_offset(self.position if offset is None else offset)
        self.log._positions().put(self.name, offset)
        return offset

    def __repr__(self):
        name = "" if self.name is None else f" {self.name!r}"
        return f"<tidelog.Cursor{name} at {self.position} of {self.log.path!r}>"
