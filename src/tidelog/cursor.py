"""Cursor: a position in a log; Record and RecordBatch come from the core."""

import time

from tidelog import _core
from tidelog.errors import OffsetOutOfRangeError

__all__ = ["Cursor", "Record", "RecordBatch"]

Record = _core.Record
RecordBatch = _core.RecordBatch


class Cursor(_core.CursorCore):
    """Iterate records from a position; read_batch for zero-copy batches. Get one from
    Log.cursor()."""

    name = None

    def _resolve(self, where, name):
        log = self.log
        if where == "earliest":
            return log.start_offset
        if where == "latest":
            return log.end_offset
        if isinstance(where, bool) or not isinstance(where, int):
            raise TypeError(f"{name}: expected an int offset, 'earliest' or 'latest', "
                            f"not {where!r}")
        return where

    def seek(self, offset):
        """Move to `offset`, which must lie in [start_offset, end_offset]."""
        offset = self._resolve(offset, "offset")
        start, end = self.log.start_offset, self.log.end_offset
        if not start <= offset <= end:
            raise OffsetOutOfRangeError(f"offset {offset} is outside [{start}, {end}]")
        self._set_position(offset)

    def wait(self, timeout=None):
        """Block until a record at self.position exists (True) or `timeout` seconds pass (False).
        Interim implementation: polls with a backoff of at most 1 ms."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 1e-5
        while True:
            limit = self.log.durable_offset if self.durable_only else self.log.end_offset
            if self.position < limit:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(delay if deadline is None else min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 1e-3)

    def follow(self, timeout=None):
        """Yield records as the writer appends; stop after `timeout` seconds without a new one."""
        while True:
            for rec in self:
                yield rec
            if not self.wait(timeout):
                return

    def commit(self, offset=None):
        """Durably store this named cursor's position (or `offset`, which must lie in
        [start_offset, durable_offset]); on stable storage when it returns."""
        if self.name is None:
            raise TypeError("commit: an anonymous cursor has no stored position; open one with "
                            "log.cursor(name=...)")
        if offset is None:
            offset = self.position
        self.log._positions().put(self.name, self.log._check_commit_offset(offset))
        return offset

    def __repr__(self):
        name = "" if self.name is None else f" {self.name!r}"
        return f"<tidelog.Cursor{name} at {self.position} of {self.log.path!r}>"
