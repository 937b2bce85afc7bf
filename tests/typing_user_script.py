"""A user's script over tidelog's public API, written as a typed application would use it.

tests/test_typing.py runs it (so it is real code that works) and checks it with `mypy --strict`
(so the package's types -- the _core.pyi stub and the annotated modules -- describe that API and
leave nothing untyped). Not collected by pytest (no test_ prefix). Argument: a scratch directory.
"""
from __future__ import annotations

import asyncio
import os
import pickle
import struct
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

import tidelog
import tidelog.replay


def write(path: Path) -> tuple[int, int]:
    log: tidelog.Log = tidelog.open(path, durability="batch", segment_bytes=1 << 16,
                                    sync_interval=0.005, retain_bytes=None, retain_seconds=None,
                                    max_unsynced_bytes=4 << 20)
    with log:
        off: int = log.append(b'{"user": 7}', key=b"user-7")
        log.append(bytearray(b"x"), timestamp=time.time_ns())
        log.append(memoryview(b"y"), key=None, timestamp=np.int64(time.time_ns()))
        first: int = log.append_batch([b"a", b"b", b"c"], keys=[b"k", None, b"k"])
        log.append_batch(np.arange(100, dtype=np.int64),
                         timestamps=np.full(100, time.time_ns(), dtype=np.int64))
        log.append_batch((bytes([i]) for i in range(10)), atomic=False)
        durable: int = log.sync()
        ok: bool = log.wait_durable(off, timeout=1.0)
        assert ok and durable == log.end_offset
        n: int = len(log)
        assert n == log.end_offset - log.start_offset == log.durable_offset
        assert log.durability == "batch" and not log.readonly and not log.closed
        assert log.failure is None and log.segment_bytes == 1 << 16 and log.path == os.path.abspath(path)
        return off, first


def read(path: Path, off: int, first: int) -> None:
    log = tidelog.open(os.fspath(path), readonly=True)
    try:
        rec: tidelog.Record = log.read(off)
        offset: int = rec.offset
        ts: int = rec.timestamp
        key: bytes | None = rec.key
        value: memoryview = rec.value
        assert (offset, key, bytes(value), bytes(rec), len(rec)) == (off, b"user-7", b'{"user": 7}',
                                                                     b'{"user": 7}', 11)
        assert ts > 0
        cur: tidelog.Cursor = log.cursor("earliest")
        for r in cur:
            assert isinstance(r.offset, int)
        cur.seek(first + 3)
        cur.seek("latest")
        cur.seek(np.int64(first))
        batch: tidelog.RecordBatch = cur.read_batch(max_records=65536, max_bytes=None)
        offsets: npt.NDArray[np.int64] = batch.offsets
        stamps: npt.NDArray[np.int64] = batch.timestamps
        first_value: memoryview = batch.values[0]
        some: list[memoryview] = batch.values[0:2]
        keys: list[bytes | None] = batch.keys
        assert len(batch) == len(offsets) == len(stamps) == len(keys) and batch.nbytes > 0
        assert bytes(first_value) == b"a" and len(some) == 2
        assert [bytes(v) for v in batch.values] == [bytes(r.value) for r in batch]
        assert batch[0].offset == first
        cur.seek(first + 3)
        ints = cur.read_batch(100).values_array(np.int64)
        assert ints.tolist() == list(range(100))
        at: int = log.offset_for_time(0)
        cur.seek_time(0)
        assert at == log.start_offset == cur.position
        assert cur.wait(timeout=0.0, spin=0.0)
        for r in log.cursor(first).follow(timeout=0.01):
            pass
        for b in log.cursor(first).follow_batches(timeout=0.01, max_records=10):
            assert len(b) <= 10
        segments: list[tuple[int, str]] = log.segments()
        assert segments[0][0] == 0
        whole: tidelog.RecordBatch = log.read_batch(first, 3, max_bytes=None)
        assert [bytes(v) for v in whole.values] == [b"a", b"b", b"c"]
        copy: tidelog.Record = pickle.loads(pickle.dumps(log.read(off)))
        assert copy == log.read(off) and hash(copy) == hash(log.read(off))
        again: tidelog.RecordBatch = pickle.loads(pickle.dumps(whole))
        assert again.keys == whole.keys
        stats: dict[str, Any] = log.stats()
        assert stats["records"] == len(log)
        with log.cursor(first) as polling:
            got: tidelog.RecordBatch = polling.poll(timeout=0.0, max_records=2, max_bytes=None)
            assert len(got) == 2 and not polling.closed
        assert polling.closed
    finally:
        log.close()


async def follow_async(path: Path) -> int:
    with tidelog.open(path, readonly=True) as log:
        seen = 0
        async for rec in log.cursor(0).follow_async(timeout=0.01, yield_every=64):
            seen += 1
        return seen


def subscribers(path: Path) -> None:
    with tidelog.open(path) as log:
        cur = log.cursor(name="indexer", durable_only=True)
        for _ in cur:
            pass
        committed: int = cur.commit()
        stored: int | None = cur.committed()
        assert stored == committed
        cur.commit(offset=0)
        assert cur.name == "indexer" and committed == log.end_offset
        positions: dict[str, int] = log.positions()
        lags: dict[str, int] = log.lag()
        info: dict[str, tuple[int, int]] = log.position_info()
        assert positions == {"indexer": 0} and lags["indexer"] == log.end_offset
        assert info["indexer"][0] == 0
        log.set_position("indexer", 1)
        log.delete_position("indexer")
        start: int = log.truncate_before(0)
        assert start == log.start_offset


def errors(path: Path) -> None:
    try:
        tidelog.open(path)
        tidelog.open(path)      # a second writer
    except tidelog.LogLockedError as e:
        problem: tidelog.TidelogError = e
        assert str(problem)
    try:
        with tidelog.open(path, readonly=True) as log:
            log.read(10**9)
    except tidelog.OffsetOutOfRangeError as e:
        assert isinstance(e, IndexError)
    try:
        tidelog.open(path / "missing", create=False)
    except tidelog.LogNotFoundError as e:
        assert isinstance(e, FileNotFoundError)
    damage: tidelog.CorruptLogError = tidelog.CorruptLogError("x", path="p", position=1, offset=2)
    where: tuple[str | None, int | None, int | None] = (damage.path, damage.position, damage.offset)
    assert where == ("p", 1, 2)
    kinds: list[type[tidelog.TidelogError]] = [
        tidelog.LogClosedError, tidelog.LogFailedError, tidelog.FormatVersionError,
        tidelog.LogFullError, tidelog.NotALogError, tidelog.LogForkedError]
    assert all(issubclass(k, tidelog.TidelogError) for k in kinds)
    version: str = tidelog.__version__
    assert version


class Counter:                      # a snapshot machine
    def __init__(self) -> None:
        self.n = 0

    def apply(self, record: tidelog.Record) -> None:
        self.n += 1

    def snapshot(self) -> bytes:
        return struct.pack("<q", self.n)

    def restore(self, snap: bytes) -> None:
        (self.n,) = struct.unpack("<q", snap)


class Keys(tidelog.LmdbView):         # a view machine
    def apply(self, record: tidelog.Record, txn: Any) -> None:
        txn.put(b"%d" % record.offset, record.key or b"")


def replay(path: Path) -> None:
    with tidelog.open(path, readonly=True) as log:
        counter = Counter()
        rep = tidelog.Replayer(log, counter, name="counter", checkpoint_every=50)
        position: int = rep.run()
        assert position == rep.position == log.durable_offset == counter.n + log.start_offset
        rep.stop()
        assert rep.run(follow=True) == position       # stopped before it began
        at: int = rep.checkpoint()
        assert rep.checkpoint_position == at
        digests: dict[int, bytes] = rep.digests()
        assert digests
        view = tidelog.Replayer(log, Keys(), name="keys")
        view.run(until=10)
        assert sorted(tidelog.replay.replayers(log)) == ["counter", "keys"]
        assert tidelog.replay.delete_replayer(log, "keys")
        report: tidelog.DeterminismReport = tidelog.verify_determinism(log, Counter,
                                                                       checkpoint_every=50)
        assert report and report.deterministic


def main() -> None:
    path = Path(sys.argv[1]) / "events.log"
    off, first = write(path)
    read(path, off, first)
    assert asyncio.run(follow_async(path)) > 0
    subscribers(path)
    replay(path)
    errors(path)
    print("ok")


if __name__ == "__main__":
    main()
