#!/usr/bin/env python3
"""Replay throughput: the Replayer against a plain Python loop, and what checkpoints cost.

    python bench/replay.py [--quick] [--records N] [--repeat 7] [--clock wall|cpu] [--dir D]
                           [--json out.json]

One log of N fixed-size 16-byte records (two little-endian uint64: x, y), one segment, in the page
cache (durability="none", synced once). Rows, each in records per second:

    list loop        `for rec in records: m.apply(rec)` over the same Record objects held in a
                     list (read beforehand, not timed): the floor of any per-record Python fold
    Replayer apply   Replayer(log, Count()).run(): a trivial counting machine, apply per record
    Replayer apply_batch   the same through apply_batch: `n += len(v)`, `total += v["x"].sum()`
                     with v = batch.values_array(VALUE), zero-copy
    numpy in memory  the same sum over one in-memory array of all N records (a ceiling for
                     apply_batch: no log, no batches)
    checkpoint_every 1k, 10k, 100k   apply and apply_batch with a checkpoint (snapshot, digest,
                     position in one synced LMDB write transaction) every so many records; the
                     time of each checkpoint is measured directly (Replayer.checkpoint wrapped)

The replay rows use checkpoint_every larger than the log (one checkpoint, at the end: ~0.2 ms).
Repeats are interleaved (every row once per repeat, the order rotated each repeat) and the tables
show medians with the spread (min..max); ratios are of medians from this run. The positions store
is on the same file system as the log (`--dir`), so checkpoint cost includes its fdatasync.
`--clock cpu` times with this process's CPU time instead of the wall clock: steadier on a shared
machine, but blind to waiting (the checkpoint rows then leave out most of the fdatasync).
"""

import argparse
import gc
import json
import os
import platform
import shutil
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

VALUE = np.dtype([("x", "<u8"), ("y", "<u8")])     # 16 bytes per record
APPEND_CHUNK = 1 << 20                              # records per append_batch while filling
NEVER = 1 << 62                                     # checkpoint_every that never comes
clock = time.perf_counter


class Count:
    """The trivial counting machine: one attribute increment per record."""

    def __init__(self):
        self.n = 0

    def apply(self, rec):
        self.n += 1

    def snapshot(self):
        return struct.pack("<q", self.n)

    def restore(self, snap):
        (self.n,) = struct.unpack("<q", snap)


class CountBatch(Count):
    """Counting (and summing x) through apply_batch and a zero-copy values_array."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def apply_batch(self, batch):
        v = batch.values_array(VALUE)
        self.n += len(v)
        self.total += int(v["x"].sum())

    def snapshot(self):
        return struct.pack("<qQ", self.n, self.total & ((1 << 64) - 1))


def make_log(directory, n):
    path = os.path.join(directory, "log")
    log = tidelog.open(path, durability="none", segment_bytes=max(64 << 20, n * 64))
    a = np.zeros(n, VALUE)
    a["x"] = np.arange(n, dtype=np.uint64) % 1000
    a["y"] = np.arange(n, dtype=np.uint64)
    for i in range(0, n, APPEND_CHUNK):
        log.append_batch(a[i:i + APPEND_CHUNK])
    log.sync()
    return log, a


class Bench:
    def __init__(self, log, array, n):
        self.log, self.array, self.n = log, array, n
        self.records = list(log.cursor(0))
        assert len(self.records) == n
        self.runs = 0
        self.checkpoint_times = {}      # checkpoint_every -> [seconds of each checkpoint]

    def _replay(self, cls, every):
        self.runs += 1
        name = f"bench-{self.runs}"
        m = cls()
        rep = tidelog.Replayer(self.log, m, name=name, checkpoint_every=every)
        times = self.checkpoint_times.setdefault((cls.__name__, every), [])
        checkpoint = rep.checkpoint

        def timed_checkpoint():
            t = clock()
            checkpoint()
            times.append(clock() - t)
        rep.checkpoint = timed_checkpoint
        t0 = clock()
        end = rep.run()
        t = clock() - t0
        assert end == self.n and m.n == self.n, (end, m.n)
        tidelog.replay.delete_replayer(self.log, name)
        return t

    def list_loop(self):
        m = Count()
        apply = m.apply
        records = self.records
        t0 = clock()
        for rec in records:
            apply(rec)
        t = clock() - t0
        assert m.n == self.n
        return t

    def numpy_in_memory(self):
        t0 = clock()
        total = int(self.array["x"].sum())
        n = len(self.array)
        t = clock() - t0
        assert n == self.n and total >= 0
        return t


def rows(b, everies):
    out = [("list loop (apply per Record in a list)", b.list_loop),
           ("Replayer apply", lambda: b._replay(Count, NEVER)),
           ("Replayer apply_batch (values_array)", lambda: b._replay(CountBatch, NEVER)),
           ("numpy sum, one in-memory array", b.numpy_in_memory)]
    for e in everies:
        out.append((f"apply, checkpoint_every {e:,}", lambda e=e: b._replay(Count, e)))
        out.append((f"apply_batch, checkpoint_every {e:,}", lambda e=e: b._replay(CountBatch, e)))
    return out


def fmt_rate(r):
    return f"{r / 1e6:8.2f}M"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=None,
                    help="records in the log (default 4,000,000; --quick 1,000,000)")
    ap.add_argument("--repeat", type=int, default=None, help="repeats (default 7; --quick 3)")
    ap.add_argument("--quick", action="store_true", help="fewer records and repeats")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall: time.perf_counter (default); cpu: time.process_time")
    ap.add_argument("--dir", default=None, help="where the temporary log goes")
    ap.add_argument("--json", default=None, help="write every sample and the medians here")
    args = ap.parse_args(argv)
    global clock
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    n = args.records or (1_000_000 if args.quick else 4_000_000)
    repeat = args.repeat or (3 if args.quick else 7)
    everies = [1_000, 10_000, 100_000]

    tmp = tempfile.mkdtemp(prefix="tidelog-bench-replay-", dir=args.dir)
    samples = {}
    try:
        log, array = make_log(tmp, n)
        b = Bench(log, array, n)
        table = rows(b, everies)
        for name, _ in table:
            samples[name] = []
        print(f"{n:,} records of 16 bytes, {repeat} interleaved repeats ...", file=sys.stderr)
        for r in range(repeat):
            order = table[r % len(table):] + table[:r % len(table)]
            for name, fn in order:
                gc.collect()
                samples[name].append(fn())
            print(f"  repeat {r + 1}/{repeat} done", file=sys.stderr)
        log.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in samples.items()}
    rate = {k: n / v for k, v in med.items()}
    base = rate["list loop (apply per Record in a list)"]
    print(f"\nreplay throughput: {n:,} records x 16 B, median of {repeat} "
          f"({args.clock} clock; Python {platform.python_version()}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs, tidelog {tidelog.__version__})\n")
    print(f"{'row':<42}{'records/s':>12}  {'spread (min..max)':<22}{'vs list loop':>13}")
    for name, _ in table:
        if "checkpoint_every" in name:
            continue
        lo, hi = n / max(samples[name]), n / min(samples[name])
        print(f"{name:<42}{fmt_rate(rate[name]):>12}  {fmt_rate(lo).strip():>9}.."
              f"{fmt_rate(hi).strip():<11}{rate[name] / base:>12.2f}x")

    print(f"\ncheckpoint cost (a checkpoint: snapshot + digest + position, one synced LMDB "
          f"write transaction)\n")
    print(f"{'machine':<13}{'checkpoint_every':>17}{'checkpoints':>13}{'records/s':>12}"
          f"{'vs none':>9}{'ms/checkpoint median':>22}{'p99':>8}{'share of run':>14}")
    cp_stats = {}
    for kind, cls, ref in (("apply", Count, "Replayer apply"),
                           ("apply_batch", CountBatch, "Replayer apply_batch (values_array)")):
        for e in everies:
            name = f"{kind}, checkpoint_every {e:,}"
            cps = n // e
            ts = sorted(b.checkpoint_times[(cls.__name__, e)])
            mid, p99 = statistics.median(ts), ts[min(len(ts) - 1, int(len(ts) * 0.99))]
            share = sum(ts) / len(samples[name]) / med[name]
            cp_stats[name] = {"median_ms": mid * 1e3, "p99_ms": p99 * 1e3, "share": share}
            print(f"{kind:<13}{e:>17,}{cps:>13,}{fmt_rate(rate[name]):>12}"
                  f"{rate[name] / rate[ref]:>8.2f}x{mid * 1e3:>22.3f}{p99 * 1e3:>8.2f}"
                  f"{share:>13.0%}")
    targets = [("per-record apply >= 0.5x the list loop",
                rate["Replayer apply"] / base, 0.5, "x"),
               ("apply_batch >= 50M records/s",
                rate["Replayer apply_batch (values_array)"] / 1e6, 50, "M/s")]
    print()
    for what, got, want, unit in targets:
        print(f"target {what}: {got:.2f}{unit} -> {'met' if got >= want else 'MISSED'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"records": n, "repeat": repeat, "clock": args.clock,
                       "samples_s": samples, "median_s": med, "checkpoints": cp_stats,
                       "records_per_s": rate}, f, indent=1)


if __name__ == "__main__":
    main()
