#!/usr/bin/env python3
"""The log as Arrow: read_arrow against building the same table per record, and DuckDB over
scan_arrow.

    python bench/arrow.py [--records N] [--size B] [--repeat 5] [--big] [--dir D] [--json out.json]

One log of N records (default 1M) of B bytes (default 100), keyed by one of 1000 users, appended
with append_batch in chunks of 10,000 (frames of up to 1 MiB: the columnar layout), durability
"none", synced once, in the page cache. Rows, in records per second:

    per record       the table built from the records one by one: for rec in cursor, its
                     offset, timestamp, key and bytes(rec.value) into lists, then pa.table()
    read_arrow       cursor.read_arrow(): the same table, one chunk per frame, zero-copy
    read_arrow f8    read_arrow(value_type=...) of a log of 8-byte values (the first 8 bytes of
                     every value of the same log are not a float: this row uses its own log of
                     N float64 records) - typed column, zero-copy
    per record 1x1, read_arrow 1x1   the same two over a log of N single appends (one frame
                     per record: not columnar on disk, so read_arrow copies values and keys, once
                     per run of them)
    duckdb count     duckdb.sql("select count(*) from reader"), reader = log.scan_arrow()
    duckdb sum       ... sum(octet_length(value))
    duckdb group     ... key, count(*) group by key (1000 groups)

With --big the DuckDB rows use a log of 10 M records (the issue's size; ~1.5 GB on disk, about a
minute to fill) and the per-record rows keep N. Repeats are interleaved (every row once per repeat,
order rotated), medians with min..max; the ratio is of medians from this run.
"""

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

try:
    import tidelog
except ImportError:          # run from a checkout without installing: use ../src
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
    import tidelog

CHUNK = 10_000          # records per append_batch while filling
USERS = 1000            # distinct keys
BIG = 10_000_000        # --big: records of the DuckDB rows' log
clock = time.perf_counter


def fill(path, n, size, keys=True, numpy_values=False, singles=False):
    rng = np.random.default_rng(1)
    with tidelog.open(path, durability="none", segment_bytes=1 << 30) as log:
        if singles:
            body = rng.integers(0, 256, (n, size), dtype=np.uint8)
            users = rng.integers(0, USERS, n)
            for i in range(n):
                log.append(body[i].tobytes(), key=b"u%04d" % users[i])
            log.sync()
            return
        for lo in range(0, n, CHUNK):
            k = min(CHUNK, n - lo)
            if numpy_values:
                log.append_batch(np.arange(lo, lo + k, dtype=np.float64))
                continue
            body = rng.integers(0, 256, (k, size), dtype=np.uint8)
            values = [r.tobytes() for r in body]
            log.append_batch(values, keys=[b"u%04d" % u for u in rng.integers(0, USERS, k)]
                             if keys else None)
        log.sync()


def per_record(log, pa):
    offsets, stamps, keys, values = [], [], [], []
    for rec in log.cursor():
        offsets.append(rec.offset)
        stamps.append(rec.timestamp)
        keys.append(rec.key)
        values.append(bytes(rec.value))
    return pa.table({"offset": pa.array(offsets, pa.int64()),
                     "timestamp": pa.array(stamps, pa.timestamp("ns", "UTC")),
                     "key": pa.array(keys, pa.binary()), "value": pa.array(values, pa.binary())})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--big", action="store_true", help=f"DuckDB rows over {BIG:,} records")
    ap.add_argument("--dir", default=None, help="where the temporary logs go")
    ap.add_argument("--json", default=None, help="write the medians here")
    a = ap.parse_args()
    import duckdb
    import pyarrow as pa

    root = tempfile.mkdtemp(prefix="tidelog-bench-arrow-", dir=a.dir)
    try:
        t0 = clock()
        small, typed = os.path.join(root, "small"), os.path.join(root, "f8")
        fill(small, a.records, a.size)
        fill(typed, a.records, 8, keys=False, numpy_values=True)
        singles = os.path.join(root, "singles")
        fill(singles, a.records, a.size, singles=True)
        big = small
        n_big = a.records
        if a.big:
            big, n_big = os.path.join(root, "big"), BIG
            fill(big, BIG, a.size)
        print(f"filled in {clock() - t0:.1f} s: {a.records:,} records of {a.size} B "
              f"(DuckDB rows: {n_big:,}); pyarrow {pa.__version__}, duckdb {duckdb.__version__}, "
              f"{platform.python_implementation()} {platform.python_version()}")
        logs = {p: tidelog.open(p, readonly=True) for p in {small, typed, big, singles}}

        def duck(sql):
            def run():
                reader = logs[big].scan_arrow()   # noqa: F841 (DuckDB finds it by name)
                return duckdb.sql(sql.replace("R", "reader")).fetchall()
            return run

        rows = {
            "per record": (a.records, lambda: per_record(logs[small], pa)),
            "read_arrow": (a.records, lambda: logs[small].cursor().read_arrow()),
            "read_arrow f8": (a.records,
                              lambda: logs[typed].cursor().read_arrow(value_type=np.float64)),
            "per record 1x1": (a.records, lambda: per_record(logs[singles], pa)),
            "read_arrow 1x1": (a.records, lambda: logs[singles].cursor().read_arrow()),
            "duckdb count": (n_big, duck("select count(*) from R")),
            "duckdb sum": (n_big, duck("select sum(octet_length(value)) from R")),
            "duckdb group": (n_big, duck("select key, count(*) from R group by key")),
        }
        # the answers agree before anything is timed
        t_ref, t_new = rows["per record"][1](), rows["read_arrow"][1]()
        assert all(t_ref.column(c).equals(t_new.column(c)) for c in t_ref.column_names), \
            "read_arrow differs from the records"
        del t_ref, t_new
        assert rows["duckdb count"][1]() == [(n_big,)]
        names = list(rows)
        times = {k: [] for k in names}
        for r in range(a.repeat):
            order = names[r % len(names):] + names[:r % len(names)]
            for k in order:
                gc.collect()
                t = clock()
                out = rows[k][1]()
                times[k].append(clock() - t)
                del out
        med = {}
        print(f"{'row':<16}{'records':>12}{'median s':>11}{'records/s':>16}   min..max s")
        for k in names:
            n = rows[k][0]
            m = statistics.median(times[k])
            med[k] = n / m
            print(f"{k:<16}{n:>12,}{m:>11.4f}{n / m:>16,.0f}   "
                  f"{min(times[k]):.4f}..{max(times[k]):.4f}")
        ratio = med["read_arrow"] / med["per record"]
        print(f"read_arrow / per record: {ratio:,.0f}x (target >= 20x)")
        ratio1 = med["read_arrow 1x1"] / med["per record 1x1"]
        print(f"single appends (copied, once per run): read_arrow / per record: {ratio1:,.1f}x")
        for lg in logs.values():
            lg.close()
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"records": a.records, "size": a.size, "big": n_big,
                           "records_per_s": med, "ratio": ratio, "ratio_singles": ratio1},
                          f, indent=1)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
