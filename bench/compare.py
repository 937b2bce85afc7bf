#!/usr/bin/env python3
"""tidelog against its peers, interleaved in one process.

    python bench/compare.py [--quick] [--sizes 100,1024] [--repeat 5] [--json out.json]

Systems: tidelog; a framed raw file (buffered ``open(path, "wb")``, a 4-byte little-endian
length before each value); sqlite3 (WAL); py-lmdb (8-byte big-endian integer keys,
append=True); mmapq when it is importable. Workloads per value size:

    append   single-call append loop (one call per record)
    batch    append_batch of 1000 (each peer's natural batch), the same 1000 values re-sent
    distinct append_batch of 1000 distinct values each call (tidelog and the raw file only)
    sync     a batch of 1000, then make it durable, repeated
    scan     full sequential scan, one memoryview (or bytes) per record, len() of each
    read     random read(offset)

plus a size-independent table for numpy: fixed-size 64-byte records appended 1000 rows per
call from a 2-D uint8 array, and scanned back as one numpy array (GB/s).

Every cell is records per second: the median over the repeats and the spread (min..max).
Repeats are interleaved: each repeat runs every workload for every system (round-robin, the
order of the systems rotated each repeat), so slow drift of the machine hits all systems alike.
Ratios are of medians from this one run. Only the timed region counts: opening and closing
(tidelog's close() syncs), preparing the data of scan/read, and deleting files are outside it.
"""

import argparse
import datetime
import gc
import json
import os
import platform
import random
import shutil
import sqlite3
import statistics
import struct
import sys
import tempfile
import time

import numpy as np

try:
    import tidelog
except ImportError:          # run from a checkout without installing: use ../src
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
    import tidelog

import lmdb

try:
    import mmapq
    from mmapq import NextMove, PollResult
except Exception:            # optional peer
    mmapq = None

BATCH = 1000                 # records per batch in every batch workload
NP_RECORD = 64               # bytes per record in the numpy workloads
NP_DTYPE = np.dtype([("w", "<u8", (NP_RECORD // 8,))])   # 64 bytes, touched as 8 uint64
FRAME = struct.Struct("<I")  # raw file: length prefix
KEY = struct.Struct(">Q")    # lmdb: integer keys that sort like integers
LMDB_MAP_SIZE = 1 << 35      # address space only; the file grows with the data

clock = time.perf_counter

WORKLOADS = [
    ("append", "append: 1 call/record"),
    ("batch", "append_batch of 1000"),
    ("distinct", "append_batch, distinct records"),
    ("sync", "batch 1000 + sync each"),
    ("sync1", "sync after every record"),
    ("scan", "full scan"),
    ("iter", "iterate record by record"),
    ("read", "random read(offset)"),
]
# issue 13's targets, judged from the ratios of this one run: (table, workload) -> (peer, at
# least this ratio of tidelog's median to the peer's; peer None: at least this many records/s)
TARGETS = {
    ("100", "distinct"): ("raw", 3.0),
    ("100", "read"): (None, 2e6),
    ("65536", "scan"): ("lmdb", 0.8),
    ("numpy64", "np_batch"): ("raw", 1.5),
    ("numpy64", "np_scan"): ("raw", 3.0),
}

NP_WORKLOADS = [
    ("np_batch", "numpy append 1000x64B"),
    ("np_scan", "numpy scan (array)"),
]


# ------------------------------------------------------------------------------------ systems

class NotApplicable(Exception):
    """The system has no such operation (printed as n/a)."""


class System:
    name = "?"
    label = "?"
    settings = ""            # how it is configured: durability of each row

    def iter(self, d, n):
        """Record by record: a peer's scan already is (tidelog's scan goes by batches)."""
        return self.scan(d, n)

    def distinct(self, d, chunks, n):
        raise NotApplicable("not measured")


class Tidelog(System):
    name = "tidelog"
    label = "tidelog"
    options = {}             # extra keyword arguments for tidelog.open() (--tidelog-option)
    settings = ('durability="none" (page cache; survives a process crash, not a power loss); '
                'sync row: durability="none" + log.sync() after each batch (fdatasync); '
                'scan/read through a second handle opened readonly=True')

    def _open(self, d):
        return tidelog.open(os.path.join(d, "log"), **{"durability": "none", **self.options})

    def append(self, d, values, n):
        log = self._open(d)
        try:
            append = log.append
            t0 = clock()
            for _ in range(n // len(values)):
                for v in values:
                    append(v)
            t = clock() - t0
            assert log.end_offset == n
        finally:
            log.close()
        return t

    def batch(self, d, values, n):
        log = self._open(d)
        try:
            append_batch = log.append_batch
            t0 = clock()
            for _ in range(n // len(values)):
                append_batch(values)
            t = clock() - t0
            assert log.end_offset == n
        finally:
            log.close()
        return t

    def distinct(self, d, chunks, n):
        """chunks: n // 1000 lists of 1000 distinct values (made before the clock starts)."""
        log = self._open(d)
        try:
            append_batch = log.append_batch
            t0 = clock()
            for values in chunks:
                append_batch(values)
            t = clock() - t0
            assert log.end_offset == n
        finally:
            log.close()
        return t

    def sync(self, d, values, n):
        log = self._open(d)
        try:
            append_batch, sync = log.append_batch, log.sync
            t0 = clock()
            for _ in range(n // len(values)):
                append_batch(values)
                sync()
            t = clock() - t0
            assert log.durable_offset == n
        finally:
            log.close()
        return t

    def sync1(self, d, values, n):
        log = self._open(d)
        try:
            append, sync = log.append, log.sync
            t0 = clock()
            for i in range(n):
                append(values[i % len(values)])
                sync()
            t = clock() - t0
            assert log.durable_offset == n
        finally:
            log.close()
        return t

    def prepare(self, d, values, n):
        log = self._open(d)
        try:
            for _ in range(n // len(values)):
                log.append_batch(values)
        finally:
            log.close()

    def iter(self, d, n):
        log = tidelog.open(os.path.join(d, "log"), readonly=True)
        try:
            count = 0
            t0 = clock()
            for rec in log.cursor():
                len(rec.value)
                count += 1
            t = clock() - t0
        finally:
            log.close()
        assert count == n, (count, n)
        return t

    def scan(self, d, n):
        log = tidelog.open(os.path.join(d, "log"), readonly=True)
        try:
            count = 0
            t0 = clock()
            cur = log.cursor()
            read_batch = cur.read_batch
            while True:
                b = read_batch()
                if not len(b):
                    break
                for v in b.values:
                    len(v)
                    count += 1
            t = clock() - t0
        finally:
            log.close()
        assert count == n, (count, n)
        return t

    def read(self, d, offsets):
        log = tidelog.open(os.path.join(d, "log"), readonly=True)
        try:
            read = log.read
            t0 = clock()
            for o in offsets:
                len(read(o).value)
            t = clock() - t0
        finally:
            log.close()
        return t

    def np_batch(self, d, arr, n):
        log = self._open(d)
        try:
            append_batch = log.append_batch
            rows = arr.shape[0]
            t0 = clock()
            for _ in range(n // rows):
                append_batch(arr)
            t = clock() - t0
            assert log.end_offset == n
        finally:
            log.close()
        return t

    def np_prepare(self, d, arr, n):
        self.np_batch(d, arr, n)

    def np_scan(self, d, n):
        log = tidelog.open(os.path.join(d, "log"), readonly=True)
        try:
            count = 0
            t0 = clock()
            cur = log.cursor()
            while True:
                b = cur.read_batch(65536)
                if not len(b):
                    break
                a = b.values_array(NP_DTYPE)
                a["w"].sum(dtype=np.uint64)   # touch every byte
                count += len(a)
            t = clock() - t0
        finally:
            log.close()
        assert count == n, (count, n)
        return t


class RawFile(System):
    name = "raw"
    label = "raw file"
    settings = ('buffered open(path, "wb") (default buffer), frame = 4-byte LE length + value; '
                'timed up to f.flush() (page cache); batch = all frames joined, one write(); '
                'sync row: flush + os.fsync after each batch; read = os.pread from an offsets list')

    @staticmethod
    def _path(d):
        return os.path.join(d, "data.bin")

    def append(self, d, values, n):
        pack = FRAME.pack
        with open(self._path(d), "wb") as f:
            write = f.write
            t0 = clock()
            for _ in range(n // len(values)):
                for v in values:
                    write(pack(len(v)))
                    write(v)
            f.flush()
            t = clock() - t0
        return t

    @staticmethod
    def _frames(values, pack=FRAME.pack):
        parts = []
        add = parts.append
        for v in values:
            add(pack(len(v)))
            add(v)
        return b"".join(parts)

    def batch(self, d, values, n):
        frames = self._frames
        with open(self._path(d), "wb") as f:
            write = f.write
            t0 = clock()
            for _ in range(n // len(values)):
                write(frames(values))
            f.flush()
            t = clock() - t0
        return t

    def distinct(self, d, chunks, n):
        frames = self._frames
        with open(self._path(d), "wb") as f:
            write = f.write
            t0 = clock()
            for values in chunks:
                write(frames(values))
            f.flush()
            t = clock() - t0
        return t

    def sync(self, d, values, n):
        frames = self._frames
        fsync = os.fsync
        with open(self._path(d), "wb") as f:
            write, flush, fd = f.write, f.flush, f.fileno()
            t0 = clock()
            for _ in range(n // len(values)):
                write(frames(values))
                flush()
                fsync(fd)
            t = clock() - t0
        return t

    def sync1(self, d, values, n):
        pack, fdatasync = FRAME.pack, os.fdatasync
        with open(self._path(d), "wb") as f:
            write, flush, fd = f.write, f.flush, f.fileno()
            t0 = clock()
            for i in range(n):
                v = values[i % len(values)]
                write(pack(len(v)))
                write(v)
                flush()
                fdatasync(fd)
            t = clock() - t0
        return t

    def prepare(self, d, values, n):
        with open(self._path(d), "wb") as f:
            for _ in range(n // len(values)):
                f.write(self._frames(values))
        # the offsets list a reader of this format keeps (built outside the timed region)
        pos, positions, lengths = 0, [], []
        for _ in range(n // len(values)):
            for v in values:
                positions.append(pos + 4)
                lengths.append(len(v))
                pos += 4 + len(v)
        self._index = (positions, lengths)

    def scan(self, d, n):
        unpack_from = FRAME.unpack_from
        with open(self._path(d), "rb") as f:
            count = 0
            t0 = clock()
            data = f.read()
            mv = memoryview(data)
            end = len(data)
            pos = 0
            while pos < end:
                ln = unpack_from(data, pos)[0]
                pos += 4
                len(mv[pos:pos + ln])
                pos += ln
                count += 1
            t = clock() - t0
            mv.release()
        assert count == n, (count, n)
        return t

    def read(self, d, offsets):
        positions, lengths = self._index
        pread = os.pread
        fd = os.open(self._path(d), os.O_RDONLY)
        try:
            t0 = clock()
            for o in offsets:
                len(pread(fd, lengths[o], positions[o]))
            t = clock() - t0
        finally:
            os.close(fd)
        return t

    def np_batch(self, d, arr, n):
        # fixed-size records need no framing: the file is the array
        with open(self._path(d), "wb") as f:
            write = f.write
            rows = arr.shape[0]
            t0 = clock()
            for _ in range(n // rows):
                write(arr)
            f.flush()
            t = clock() - t0
        return t

    def np_prepare(self, d, arr, n):
        self.np_batch(d, arr, n)

    def np_scan(self, d, n):
        with open(self._path(d), "rb") as f:
            t0 = clock()
            a = np.frombuffer(f.read(), NP_DTYPE)
            a["w"].sum(dtype=np.uint64)       # touch every byte
            t = clock() - t0
        assert len(a) == n
        return t


class Sqlite(System):
    name = "sqlite"
    label = "sqlite3 WAL"
    settings = ("journal_mode=WAL, synchronous=NORMAL (NOT durable per commit: a power loss can "
                "lose the last commits); table (id INTEGER PRIMARY KEY, value BLOB); "
                "append = one INSERT per record inside one transaction; batch = executemany in "
                "one transaction; sync row: synchronous=FULL, one transaction per batch")
    INSERT = "INSERT INTO t(value) VALUES (?)"

    @staticmethod
    def _connect(d, synchronous="NORMAL"):
        con = sqlite3.connect(os.path.join(d, "db.sqlite"), isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute(f"PRAGMA synchronous={synchronous}")
        con.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, value BLOB NOT NULL)")
        return con

    def append(self, d, values, n):
        con = self._connect(d)
        try:
            execute, sql = con.execute, self.INSERT
            t0 = clock()
            execute("BEGIN")
            for _ in range(n // len(values)):
                for v in values:
                    execute(sql, (v,))
            execute("COMMIT")
            t = clock() - t0
        finally:
            con.close()
        return t

    def _batches(self, con, values, n):
        execute, executemany, sql = con.execute, con.executemany, self.INSERT
        t0 = clock()
        for _ in range(n // len(values)):
            execute("BEGIN")
            executemany(sql, zip(values))
            execute("COMMIT")
        return clock() - t0

    def batch(self, d, values, n):
        con = self._connect(d)
        try:
            return self._batches(con, values, n)
        finally:
            con.close()

    def sync(self, d, values, n):
        con = self._connect(d, "FULL")
        try:
            return self._batches(con, values, n)
        finally:
            con.close()

    def sync1(self, d, values, n):
        con = self._connect(d, "FULL")
        try:
            execute, sql = con.execute, self.INSERT
            t0 = clock()
            for i in range(n):
                execute(sql, (values[i % len(values)],))      # autocommit: one txn each
            return clock() - t0
        finally:
            con.close()

    def prepare(self, d, values, n):
        con = self._connect(d)
        try:
            self._batches(con, values, n)
        finally:
            con.close()

    def scan(self, d, n):
        con = self._connect(d)
        try:
            count = 0
            t0 = clock()
            for (v,) in con.execute("SELECT value FROM t ORDER BY id"):
                len(v)
                count += 1
            t = clock() - t0
        finally:
            con.close()
        assert count == n, (count, n)
        return t

    def read(self, d, offsets):
        con = self._connect(d)
        try:
            execute, sql = con.execute, "SELECT value FROM t WHERE id = ?"
            t0 = clock()
            for o in offsets:
                len(execute(sql, (o + 1,)).fetchone()[0])
            t = clock() - t0
        finally:
            con.close()
        return t

    def np_batch(self, d, arr, n):
        con = self._connect(d)
        try:
            execute, executemany, sql = con.execute, con.executemany, self.INSERT
            rows, size = arr.shape
            t0 = clock()
            for _ in range(n // rows):
                flat = memoryview(arr).cast("B")
                execute("BEGIN")
                executemany(sql, [(flat[i:i + size],) for i in range(0, rows * size, size)])
                execute("COMMIT")
            t = clock() - t0
        finally:
            con.close()
        return t

    def np_prepare(self, d, arr, n):
        self.np_batch(d, arr, n)

    def np_scan(self, d, n):
        con = self._connect(d)
        try:
            t0 = clock()
            data = b"".join([v for (v,) in con.execute("SELECT value FROM t ORDER BY id")])
            a = np.frombuffer(data, NP_DTYPE)
            a["w"].sum(dtype=np.uint64)       # touch every byte
            t = clock() - t0
        finally:
            con.close()
        assert len(a) == n
        return t


class Lmdb(System):
    name = "lmdb"
    label = "py-lmdb"
    settings = ("sync=False, metasync=False (MDB_NOSYNC; no writemap): not durable per commit; "
                "keys 8-byte big-endian offsets built in the timed region; append=True; "
                "append = cursor.put per record inside one write txn; batch = putmulti in one txn; "
                "sync row: sync=True (the default: fsync at every commit); reads with buffers=True")

    @staticmethod
    def _env(d, sync=False):
        return lmdb.open(os.path.join(d, "lmdb"), map_size=LMDB_MAP_SIZE, sync=sync,
                         metasync=sync, max_dbs=0)

    def append(self, d, values, n):
        env = self._env(d)
        try:
            pack = KEY.pack
            t0 = clock()
            with env.begin(write=True) as txn:
                put = txn.cursor().put
                i = 0
                for _ in range(n // len(values)):
                    for v in values:
                        put(pack(i), v, append=True)
                        i += 1
            t = clock() - t0
        finally:
            env.close()
        return t

    @staticmethod
    def _batches(env, values, n, pack=KEY.pack):
        k = len(values)
        t0 = clock()
        for b in range(n // k):
            base = b * k
            with env.begin(write=True) as txn:
                txn.cursor().putmulti([(pack(base + j), v) for j, v in enumerate(values)],
                                      append=True)
        return clock() - t0

    def batch(self, d, values, n):
        env = self._env(d)
        try:
            return self._batches(env, values, n)
        finally:
            env.close()

    def sync(self, d, values, n):
        env = self._env(d, sync=True)
        try:
            return self._batches(env, values, n)
        finally:
            env.close()

    def sync1(self, d, values, n):
        env = self._env(d, sync=True)
        try:
            pack = KEY.pack
            t0 = clock()
            for i in range(n):
                with env.begin(write=True) as txn:
                    txn.put(pack(i), values[i % len(values)], append=True)
            return clock() - t0
        finally:
            env.close()

    def prepare(self, d, values, n):
        env = self._env(d)
        try:
            self._batches(env, values, n)
        finally:
            env.close()

    def scan(self, d, n):
        env = self._env(d)
        try:
            count = 0
            t0 = clock()
            with env.begin(buffers=True) as txn:
                for v in txn.cursor().iternext(keys=False, values=True):
                    len(v)
                    count += 1
            t = clock() - t0
        finally:
            env.close()
        assert count == n, (count, n)
        return t

    def read(self, d, offsets):
        env = self._env(d)
        try:
            pack = KEY.pack
            t0 = clock()
            with env.begin(buffers=True) as txn:
                get = txn.get
                for o in offsets:
                    len(get(pack(o)))
            t = clock() - t0
        finally:
            env.close()
        return t

    def np_batch(self, d, arr, n):
        env = self._env(d)
        try:
            pack = KEY.pack
            rows, size = arr.shape
            t0 = clock()
            for b in range(n // rows):
                flat = memoryview(arr).cast("B")
                base = b * rows
                with env.begin(write=True) as txn:
                    txn.cursor().putmulti(
                        [(pack(base + j), flat[j * size:(j + 1) * size]) for j in range(rows)],
                        append=True)
            t = clock() - t0
        finally:
            env.close()
        return t

    def np_prepare(self, d, arr, n):
        self.np_batch(d, arr, n)

    def np_scan(self, d, n):
        env = self._env(d)
        try:
            t0 = clock()
            with env.begin(buffers=True) as txn:
                data = b"".join(txn.cursor().iternext(keys=False, values=True))
            a = np.frombuffer(data, NP_DTYPE)
            a["w"].sum(dtype=np.uint64)       # touch every byte
            t = clock() - t0
        finally:
            env.close()
        assert len(a) == n
        return t


class Mmapq(System):
    name = "mmapq"
    label = "mmapq"
    settings = ("IndexedQueue (append = appender.append, commits each); batch = IndexedBatchQueue "
                "start_batch/append x1000/commit; no sync call in its Python API (sync row n/a); "
                "scan = IndexedPoller.poll (one callback per record, bytes copy: its only "
                "sequential API); read = IndexedReader.read_view")

    def append(self, d, values, n):
        q = mmapq.IndexedQueue.create(d, "q")
        a = q.create_appender()
        try:
            append = a.append
            t0 = clock()
            for _ in range(n // len(values)):
                for v in values:
                    append(v)
            t = clock() - t0
        finally:
            a.close()
            q.close()
        return t

    def batch(self, d, values, n):
        q = mmapq.IndexedBatchQueue.create(d, "b")
        a = q.create_appender()
        try:
            start = a.start_batch
            t0 = clock()
            for _ in range(n // len(values)):
                w = start()
                add = w.append
                for v in values:
                    add(v)
                w.commit()
            t = clock() - t0
        finally:
            a.close()
            q.close()
        return t

    def sync(self, d, values, n):
        raise NotApplicable("no sync/flush in mmapq's Python API")

    sync1 = sync

    def prepare(self, d, values, n):
        q = mmapq.IndexedQueue.create(d, "q")
        a = q.create_appender()
        try:
            for _ in range(n // len(values)):
                for v in values:
                    a.append(v)
        finally:
            a.close()
            q.close()

    def scan(self, d, n):
        q = mmapq.IndexedQueue.create(d, "q")
        p = q.create_poller()
        count = [0]

        def handler(index, appender_id, data):
            len(data)
            count[0] += 1
            return NextMove.ADVANCE

        try:
            poll, advanced = p.poll, PollResult.ADVANCED
            t0 = clock()
            while poll(handler) == advanced:
                pass
            t = clock() - t0
        finally:
            p.close()
            q.close()
        assert count[0] == n, (count[0], n)
        return t

    def read(self, d, offsets):
        q = mmapq.IndexedQueue.create(d, "q")
        r = q.create_reader()
        try:
            read_view = r.read_view
            t0 = clock()
            for o in offsets:
                len(read_view(o))
            t = clock() - t0
        finally:
            r.close()
            q.close()
        return t

    def np_batch(self, d, arr, n):
        raise NotApplicable("not measured")

    np_prepare = np_batch

    def np_scan(self, d, n):
        raise NotApplicable("not measured")


# ------------------------------------------------------------------------------------ sizing

def counts(size, quick):
    """Records per cell for one value size: bounded in bytes and in count, multiples of 1000."""
    div = 8 if quick else 1

    def c(budget, cap, floor):
        n = min(cap, max(floor, budget // size)) // div
        return max(BATCH, (n // BATCH) * BATCH)

    return {
        "append": c(96 << 20, 300_000, 2_000),
        "batch": c(160 << 20, 400_000, 2_000),
        "distinct": c(64 << 20, 200_000, 2_000),
        "sync": c(40 << 20, 100_000, 2_000),
        "sync1": 500 if quick else 2_000,
        "scan": c(256 << 20, 300_000, 4_000),
        "read": c(256 << 20, 100_000, 4_000),
    }


def np_count(quick):
    return 100_000 if quick else 500_000


# ------------------------------------------------------------------------------------ running

def run_cell(fn, *args):
    gc.collect()
    gc.disable()
    try:
        return fn(*args)
    finally:
        gc.enable()


def fresh_dir(root):
    return tempfile.mkdtemp(dir=root)


def measure_size(systems, size, n, repeat, root, rng, results, errors, log, read_seconds):
    values = [rng.randbytes(size) for _ in range(BATCH)]
    # the distinct row's records: every one its own bytes object, made once per size
    pool = [rng.randbytes(size) for _ in range(n["distinct"])]
    chunks = [pool[i:i + BATCH] for i in range(0, n["distinct"], BATCH)]
    res = {wl: {s.name: [] for s in systems} for wl, _ in WORKLOADS}
    wall = {s.name: 0.0 for s in systems}     # every second a system costs, set-up included
    # data sets for scan and read: written once per system, read in every repeat
    data_dirs = {}
    offsets = [rng.randrange(n["scan"]) for _ in range(n["read"])]
    n_read = {}
    for s in systems:
        t_sys = clock()
        d = fresh_dir(root)
        try:
            run_cell(s.prepare, d, values, n["scan"])
            data_dirs[s.name] = d
            # a warm-up read, which also bounds the reads of a slow system to ~read_seconds
            k = min(1000, len(offsets))
            t = run_cell(s.read, d, offsets[:k])
            n_read[s.name] = min(len(offsets), max(k, int(k / t * read_seconds) // 1000 * 1000))
        except NotApplicable:
            pass
        except Exception as e:
            errors.append(f"{s.name} {size} B prepare: {type(e).__name__}: {e}")
        wall[s.name] += clock() - t_sys
    for r in range(repeat):
        t_rep = clock()
        order = systems[r % len(systems):] + systems[:r % len(systems)]
        for wl, _ in WORKLOADS:
            for s in order:
                key = f"{s.name} {size} B {wl}"
                t_sys = clock()
                try:
                    if wl in ("scan", "iter", "read"):
                        if s.name not in data_dirs:
                            continue
                        d = data_dirs[s.name]
                        if wl in ("scan", "iter"):
                            count = n["scan"]
                            t = run_cell(getattr(s, wl), d, count)
                        else:
                            count = n_read[s.name]
                            t = run_cell(s.read, d, offsets[:count])
                    else:
                        count = n[wl]
                        d = fresh_dir(root)
                        try:
                            t = run_cell(getattr(s, wl), d,
                                         chunks if wl == "distinct" else values, count)
                        finally:
                            shutil.rmtree(d, ignore_errors=True)
                except NotApplicable:
                    res[wl][s.name] = None
                    continue
                except Exception as e:
                    errors.append(f"{key}: {type(e).__name__}: {e}")
                    continue
                finally:
                    wall[s.name] += clock() - t_sys
                if res[wl][s.name] is not None:
                    res[wl][s.name].append(count / t)
        log(f"  {size} B: repeat {r + 1}/{repeat} done in {clock() - t_rep:.1f} s")
    for d in data_dirs.values():
        shutil.rmtree(d, ignore_errors=True)
    log("  wall seconds per system (set-up and close included): " +
        ", ".join(f"{k} {v:.1f}" for k, v in wall.items()))
    results[str(size)] = res
    return n_read


def measure_numpy(systems, n, repeat, root, rng, results, errors, log):
    arr = np.frombuffer(rng.randbytes(BATCH * NP_RECORD), np.uint8).reshape(BATCH, NP_RECORD)
    res = {wl: {s.name: [] for s in systems} for wl, _ in NP_WORKLOADS}
    data_dirs = {}
    for s in systems:
        d = fresh_dir(root)
        try:
            run_cell(s.np_prepare, d, arr, n)
            data_dirs[s.name] = d
        except NotApplicable:
            shutil.rmtree(d, ignore_errors=True)
        except Exception as e:
            errors.append(f"{s.name} numpy prepare: {type(e).__name__}: {e}")
    for r in range(repeat):
        order = systems[r % len(systems):] + systems[:r % len(systems)]
        for wl, _ in NP_WORKLOADS:
            for s in order:
                try:
                    if wl == "np_scan":
                        if s.name not in data_dirs:
                            raise NotApplicable()
                        t = run_cell(s.np_scan, data_dirs[s.name], n)
                    else:
                        d = fresh_dir(root)
                        try:
                            t = run_cell(s.np_batch, d, arr, n)
                        finally:
                            shutil.rmtree(d, ignore_errors=True)
                except NotApplicable:
                    res[wl][s.name] = None
                    continue
                except Exception as e:
                    errors.append(f"{s.name} numpy {wl}: {type(e).__name__}: {e}")
                    continue
                if res[wl][s.name] is not None:
                    res[wl][s.name].append(n / t)
    log(f"  numpy: {repeat} repeats done")
    for d in data_dirs.values():
        shutil.rmtree(d, ignore_errors=True)
    results["numpy64"] = res


# ------------------------------------------------------------------------------------ output

def fmt_rate(x):
    if x is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            v = x / scale
            return f"{v:.3g}{unit}" if v < 100 else f"{v:.0f}{unit}"
    return f"{x:.3g}"


def fmt_ratio(x):
    if x is None:
        return "-"
    return f"x{x:.2f}" if x < 10 else f"x{x:.1f}"


def summary(samples):
    if not samples:
        return None
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "samples": samples}


def ratio(a, b):
    if a is None or b is None or not b["median"]:
        return None
    return a["median"] / b["median"]


def target_status(table, wl, st):
    """Issue 13's target for this row and whether this run meets it ("" when none)."""
    if (table, wl) not in TARGETS:
        return ""
    peer, need = TARGETS[(table, wl)]
    tl = st.get("tidelog") if isinstance(st.get("tidelog"), dict) else None
    if peer is None:
        got = tl["median"] if tl else None
        what = f">= {fmt_rate(need)}/s"
    else:
        p = st.get(peer)
        got = ratio(tl, p) if isinstance(p, dict) else None
        what = f">= x{need:g} {peer}"
    if got is None:
        return what + ": not measured"
    return what + (": met" if got >= need else ": MISSED")


def print_table(title, workloads, res, systems, scale=1.0, unit="rec/s", out=print,
                table=None):
    names = [s.name for s in systems]
    labels = {s.name: s.label for s in systems}
    stats = {wl: {nm: (summary(res[wl][nm]) if res[wl][nm] is not None else "n/a")
                  for nm in names} for wl, _ in workloads}
    head = (["workload"] + [labels[nm] for nm in names] + ["tidelog/lmdb", "tidelog/sqlite"]
            + ["target (issue 13)"])
    rows = []
    for wl, label in workloads:
        st = stats[wl]
        raw = st.get("raw") if isinstance(st.get("raw"), dict) else None
        row = [label]
        for nm in names:
            c = st[nm]
            if c == "n/a":
                row.append("n/a")
            elif c is None:
                row.append("error")
            else:
                cell = (f"{fmt_rate(c['median'] * scale)} ({fmt_rate(c['min'] * scale)}.."
                        f"{fmt_rate(c['max'] * scale)})")
                if nm != "raw":
                    cell += f" {fmt_ratio(ratio(c, raw))}"
                row.append(cell)
        tl = st.get("tidelog") if isinstance(st.get("tidelog"), dict) else None
        for peer in ("lmdb", "sqlite"):
            p = st.get(peer)
            row.append(fmt_ratio(ratio(tl, p)) if isinstance(p, dict) else "-")
        row.append(target_status(table, wl, st))
        rows.append(row)
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    out(title)
    out("  (" + unit + ": median (min..max) over the repeats; xN = ratio of medians to the raw "
        "file in this run)")
    line = " | ".join(h.ljust(w) for h, w in zip(head, widths))
    out(line)
    out("-+-".join("-" * w for w in widths))
    for r in rows:
        out(" | ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    out("")
    return stats


def fs_type(path):
    path = os.path.realpath(path)
    best, kind = "", "?"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and (path == parts[1] or path.startswith(
                        parts[1].rstrip("/") + "/")) and len(parts[1]) > len(best):
                    best, kind = parts[1], f"{parts[2]} on {parts[0]}"
    except OSError:
        pass
    return kind


def source_state():
    """Which tidelog is measured: the git commit of its checkout (and whether it has local
    changes), and the build time of the compiled core."""
    state = {"module": os.path.dirname(os.path.abspath(tidelog.__file__))}
    try:
        from tidelog import _core
        state["core_built"] = datetime.datetime.fromtimestamp(
            os.path.getmtime(_core.__file__), datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except Exception:
        pass
    try:
        import subprocess
        top = subprocess.run(["git", "-C", state["module"], "rev-parse", "--show-toplevel"],
                             capture_output=True, text=True, timeout=10)
        if top.returncode == 0:
            desc = subprocess.run(["git", "-C", top.stdout.strip(), "describe", "--always",
                                   "--dirty"], capture_output=True, text=True, timeout=10)
            state["git"] = desc.stdout.strip()
    except Exception:
        pass
    return state


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "tidelog": tidelog.__version__,
        "numpy": np.__version__,
        "lmdb": f"py-lmdb {lmdb.__version__} (LMDB {'.'.join(map(str, lmdb.version()))})",
        "sqlite": sqlite3.sqlite_version,
        "mmapq": getattr(mmapq, "__version__", "installed") if mmapq else "not installed",
        "tidelog_source": source_state(),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="1/8 of the records and 3 repeats (< 60 s)")
    ap.add_argument("--sizes", default="16,100,1024,65536",
                    help="value sizes in bytes, comma-separated (default 16,100,1024,65536)")
    ap.add_argument("--repeat", type=int, default=None,
                    help="repeats per cell (default 5; 3 with --quick)")
    ap.add_argument("--no-numpy", action="store_true", help="skip the numpy table")
    ap.add_argument("--no-mmapq", action="store_true", help="leave mmapq out even if installed")
    ap.add_argument("--dir", default=None,
                    help="where to make the temporary directory (default: the system's)")
    ap.add_argument("--tidelog-option", action="append", default=[], metavar="KEY=VALUE",
                    help="extra keyword for tidelog.open() of the writers, e.g. "
                         "segment_bytes=67108864 (VALUE is a Python literal); repeatable")
    ap.add_argument("--json", metavar="PATH", help="save every sample and the summary as JSON")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if any(s < 1 for s in sizes):
        ap.error("--sizes: every size must be at least 1 byte")
    repeat = args.repeat or (3 if args.quick else 5)
    if repeat < 1:
        ap.error("--repeat: at least 1")

    import ast
    for opt in args.tidelog_option:
        key, sep, value = opt.partition("=")
        if not sep or not key.isidentifier():
            ap.error(f"--tidelog-option: expected KEY=VALUE, not {opt!r}")
        try:
            Tidelog.options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            Tidelog.options[key] = value
    systems = [Tidelog(), RawFile(), Sqlite(), Lmdb()]
    if mmapq is not None and not args.no_mmapq:
        systems.append(Mmapq())

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    root = tempfile.mkdtemp(prefix="tidelog-compare-", dir=args.dir)
    m = machine()
    started = datetime.datetime.now(datetime.timezone.utc)
    header = [
        f"tidelog compare.py  {started.strftime('%Y-%m-%d %H:%M UTC')}",
        f"command: python bench/compare.py {' '.join(argv if argv is not None else sys.argv[1:])}",
        f"machine: {m['cpu']}, {m['cpus']} CPUs; {m['platform']}",
        f"python {m['python']} ({m['implementation']}); tidelog {m['tidelog']}; numpy {m['numpy']}; "
        f"{m['lmdb']}; sqlite {m['sqlite']}; mmapq {m['mmapq']}",
        f"tidelog from {m['tidelog_source'].get('module')} (git {m['tidelog_source'].get('git', '?')}, "
        f"core built {m['tidelog_source'].get('core_built', '?')})"
        + (f"; tidelog.open options {Tidelog.options}" if Tidelog.options else ""),
        f"data in {root} ({fs_type(root)})",
        f"repeats: {repeat} (interleaved); gc disabled inside each cell; records per second",
    ]
    for line in header:
        print(line)
    if "tmpfs" in fs_type(root):
        print("WARNING: the data directory is on tmpfs: sync costs nothing there")
    print("settings:")
    for s in systems:
        print(f"  {s.label}: {s.settings}")
    print(flush=True)

    results, errors, tables, read_counts = {}, [], {}, {}
    rng = random.Random(20261126)
    t_all = clock()
    try:
        for size in sizes:
            n = counts(size, args.quick)
            log(f"value size {size} B: records per cell {n}")
            n_read = measure_size(systems, size, n, repeat, root, rng, results, errors, log,
                                  0.1 if args.quick else 0.3)
            read_counts[str(size)] = n_read
            fewer = ", ".join(f"{k} {v}" for k, v in n_read.items() if v < n["read"])
            title = (f"== values of {size} B ==  records per cell: append {n['append']}, "
                     f"batch {n['batch']}, distinct {n['distinct']}, sync {n['sync']} ({n['sync'] // BATCH} syncs), "
                     f"scan {n['scan']}, read {n['read']}"
                     + (f" (fewer for slow readers: {fewer})" if fewer else ""))
            tables[str(size)] = print_table(title, WORKLOADS, results[str(size)], systems,
                                            table=str(size))
            sys.stdout.flush()
        if not args.no_numpy:
            n = np_count(args.quick)
            log(f"numpy: {n} records of {NP_RECORD} B")
            measure_numpy(systems, n, repeat, root, rng, results, errors, log)
            np_sys = [s for s in systems if s.name != "mmapq"]
            title = (f"== numpy: {NP_RECORD}-byte records, 2-D uint8 array of {BATCH} rows per "
                     f"call, {n} records ({n * NP_RECORD / 1e6:.0f} MB) ==  (raw file: the array "
                     f"bytes, no framing; sqlite/lmdb: one row per record)")
            tables["numpy64"] = print_table(title, NP_WORKLOADS, results["numpy64"], np_sys,
                                            scale=NP_RECORD,
                                            unit="bytes of values per second (G = GB/s)",
                                            table="numpy64")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    elapsed = clock() - t_all
    print(f"total time {elapsed:.0f} s")
    if errors:
        print("errors:")
        for e in errors:
            print("  " + e)
    if args.json:
        doc = {"started": started.isoformat(), "machine": m, "argv": sys.argv[1:],
               "repeat": repeat, "batch": BATCH, "elapsed_s": elapsed,
               "settings": {s.name: s.settings for s in systems},
               "counts": {str(s): counts(s, args.quick) for s in sizes},
               "read_counts": read_counts, "numpy_records": np_count(args.quick),
               "results": {size: {wl: {nm: (summary(v) if v is not None else None)
                                       for nm, v in per.items()}
                                  for wl, per in res.items()}
                           for size, res in results.items()},
               "errors": errors}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
        print(f"saved {args.json}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
