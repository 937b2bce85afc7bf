"""tidelog.eventsourcing against the eventsourcing library's SQLite backend (file database, WAL,
synchronous=FULL), one process, rounds interleaved (tidelog, SQLite, tidelog, ...), medians:

  1. per-insert latency of one event, application and process recorder, 1 thread
  2. inserts per second of one event each, application and process recorder, 8 threads
  3. select_notifications of 10,000 events (one call, limit 10,000)
  4. select_events of one aggregate with 1,000 events

  python bench/eventsourcing.py [--rounds 5] [--inserts 2000] [--dir DIR] [--before FILE]

--before FILE adds a third backend, "before": an earlier tidelog.eventsourcing loaded from FILE
(a single-module version, e.g. `git show REV:src/tidelog/eventsourcing.py > FILE`), interleaved
with the others in every round: an A/B of two builds in one process, under the same load.
"""
import argparse
import importlib.util
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from uuid import uuid4

# this file's name shadows the library when run as a script: drop bench/ from the path
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]

from eventsourcing.persistence import StoredEvent, Tracking
from eventsourcing.sqlite import (SQLiteApplicationRecorder, SQLiteDatastore,
                                  SQLiteProcessRecorder)

from tidelog.eventsourcing import (TidelogApplicationRecorder, TidelogProcessRecorder,
                                   TidelogStore)

STATE = b'{"amount": 100, "note": "' + b"x" * 60 + b'"}'


def ev(oid, v):
    return StoredEvent(originator_id=oid, originator_version=v, topic="bench:Event", state=STATE)


def load_before(path):
    """An earlier tidelog.eventsourcing (one file) as a module of its own."""
    spec = importlib.util.spec_from_file_location("tidelog_eventsourcing_before", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


class Backends:
    def __init__(self, root, before=None):
        self.root = root
        self.n = 0
        self.before = before

    def make(self, kind, process):
        self.n += 1
        if kind in ("tidelog", "before"):
            mod = self.before if kind == "before" else None
            acquire = mod.TidelogStore.acquire if mod else TidelogStore.acquire
            store = acquire(os.path.join(self.root, f"t{self.n}"))
            if mod:
                cls = mod.TidelogProcessRecorder if process else mod.TidelogApplicationRecorder
            else:
                cls = TidelogProcessRecorder if process else TidelogApplicationRecorder
            return cls(store)
        db = os.path.join(self.root, f"s{self.n}.db")
        ds = SQLiteDatastore(db)
        cls = SQLiteProcessRecorder if process else SQLiteApplicationRecorder
        r = cls(ds)
        r.create_table()
        return r

    @staticmethod
    def close(r):
        if hasattr(r, "store"):
            r.close()
        else:
            r.datastore.close()


def latency_1t(r, n, process):
    """Median per-insert latency (µs) of n one-event inserts."""
    lat = []
    for i in range(n):
        e = [ev(uuid4(), 1)]
        t = time.perf_counter()
        if process:
            r.insert_events(e, tracking=Tracking("up", i + 1))
        else:
            r.insert_events(e)
        lat.append(time.perf_counter() - t)
    return statistics.median(lat) * 1e6


def throughput_8t(r, n, process, threads=8):
    """Inserts per second of `threads` threads doing n one-event inserts in all."""
    per = n // threads
    start = threading.Barrier(threads + 1)

    def work(k):
        start.wait()
        for i in range(per):
            e = [ev(uuid4(), 1)]
            if process:
                r.insert_events(e, tracking=Tracking(f"up{k}", i + 1))
            else:
                r.insert_events(e)

    ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    return per * threads / (time.perf_counter() - t0)


def fill_notifications(r, total=10_000, per_insert=100):
    for _ in range(total // per_insert):
        r.insert_events([ev(uuid4(), 1) for _ in range(per_insert)])


def fill_aggregate(r, versions=1_000, per_insert=100):
    oid = uuid4()
    for v0 in range(1, versions + 1, per_insert):
        r.insert_events([ev(oid, v) for v in range(v0, v0 + per_insert)])
    return oid


def timed(fn, reps=5):
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--inserts", type=int, default=2000, help="inserts per latency round")
    ap.add_argument("--dir", default=None, help="where the stores go (default: a temp dir)")
    ap.add_argument("--before", default=None, metavar="FILE",
                    help="also run an earlier tidelog.eventsourcing loaded from FILE")
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="tl-es-bench-", dir=args.dir)
    b = Backends(root, load_before(args.before) if args.before else None)
    kinds = ["tidelog", "sqlite"] + (["before"] if args.before else [])
    with sqlite3.connect(os.path.join(root, "probe.db")) as c:
        c.execute("PRAGMA journal_mode=WAL")
        sync = c.execute("PRAGMA synchronous").fetchone()[0]
    print(f"sqlite {sqlite3.sqlite_version}, WAL, PRAGMA synchronous={sync} (2 = FULL); "
          f"dir {root}; {os.cpu_count()} CPUs", flush=True)
    res = {}
    try:
        for rnd in range(args.rounds):
            for kind in kinds[rnd % len(kinds):] + kinds[:rnd % len(kinds)]:
                for process in (False, True):
                    name = "process" if process else "application"
                    r = b.make(kind, process)
                    res.setdefault((f"1 thread, {name} recorder: µs per insert", kind), []).append(
                        latency_1t(r, args.inserts, process))
                    b.close(r)
                    r = b.make(kind, process)
                    res.setdefault((f"8 threads, {name} recorder: inserts/s", kind), []).append(
                        throughput_8t(r, args.inserts * 2, process))
                    b.close(r)
                r = b.make(kind, False)
                fill_notifications(r)
                got = []
                res.setdefault(("select_notifications(10,000): ms", kind), []).append(
                    timed(lambda: got.append(len(r.select_notifications(1, 10_000)))) * 1e3)
                assert set(got) == {10_000}, got
                oid = fill_aggregate(r)
                got = []
                res.setdefault(("select_events(1,000 versions): ms", kind), []).append(
                    timed(lambda: got.append(len(r.select_events(oid)))) * 1e3)
                assert set(got) == {1_000}, got
                b.close(r)
            print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows = sorted({k for k, _ in res}, key=lambda k: list(res).index((k, "tidelog")))
    extra = " before | before vs SQLite |" if args.before else ""
    print(f"\n| measure (median of {args.rounds} interleaved rounds) | tidelog | SQLite | ratio |"
          + extra)
    print("|---|---|---|---|" + ("---|---|" if args.before else ""))
    for row in rows:
        t, s = statistics.median(res[(row, "tidelog")]), statistics.median(res[(row, "sqlite")])
        ratio = (lambda a: s / a) if ("µs" in row or "ms" in row) else (lambda a: a / s)
        line = f"| {row} | {t:,.1f} | {s:,.1f} | {ratio(t):.2f}x tidelog |"
        if args.before:
            o = statistics.median(res[(row, "before")])
            line += f" {o:,.1f} | {ratio(o):.2f}x |"
        print(line)


if __name__ == "__main__":
    main()
