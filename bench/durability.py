"""Durability benchmarks (issue targets), interleaved in one process, medians of repeats:

  1. "batch" mode single-call appends of 100 B vs "none" mode (target >= 0.8x)
  2. sync after every 1000-record batch vs a raw file doing write + fdatasync (target >= 1.5x)
  3. "always" with 1 thread vs a raw file doing write + fdatasync per record (target >= 0.9x),
     and with 4 threads vs 1 thread (target >= 3x: group commit shares syncs)
  4. reopen after kill -9 with 1 GiB unsynced in the active segment (target <= 1 s)
  5. clean reopen of a log of 40 segments (target <= 50 ms)

  python bench/durability.py [--quick] [--dir DIR] [--batch-only] [--max-unsynced-bytes N]

--batch-only runs 1 and the gap measurement alone (for A/B runs of two builds);
--max-unsynced-bytes passes open()'s bound on unsynced bytes ("none": no bound; default: the
library's default, 4 MiB) to the "batch" mode logs.
"""
import argparse
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

import tidelog

VALUE = b"x" * 100
BATCH_OPTS = {}         # extra tidelog.open() keywords for the "batch" mode logs (main())


def fresh(d, name):
    p = os.path.join(d, name)
    shutil.rmtree(p, ignore_errors=True)
    return p


def t_append(d, mode, n):
    with tidelog.open(fresh(d, "a-" + mode), durability=mode,
                      **(BATCH_OPTS if mode == "batch" else {})) as log:
        app = log.append
        t = time.perf_counter()
        for _ in range(n):
            app(VALUE)
        return n / (time.perf_counter() - t)


def batch_sync_gaps(d, seconds):
    """durability="batch" under a tight single-append loop: the time between successive advances
    of durable_offset, as the appending thread sees them (every 1000 appends)."""
    gaps = []
    with tidelog.open(fresh(d, "gaps"), durability="batch", sync_interval=0.005,
                      **BATCH_OPTS) as log:
        last_d, last_t = 0, time.monotonic()
        t0 = last_t
        app = log.append
        while time.monotonic() - t0 < seconds:
            for _ in range(1000):
                app(VALUE)
            now, dur = time.monotonic(), log.durable_offset
            if dur != last_d:
                gaps.append(now - last_t)
                last_d, last_t = dur, now
    gaps.sort()
    return gaps[len(gaps) // 2], gaps[int(len(gaps) * 0.99)], gaps[-1], len(gaps)


def t_batch_sync(d, nbatches):
    vals = [VALUE] * 1000
    with tidelog.open(fresh(d, "bs"), durability="none") as log:
        t = time.perf_counter()
        for _ in range(nbatches):
            log.append_batch(vals)
            log.sync()
        return nbatches * 1000 / (time.perf_counter() - t)


def raw_batch_sync(d, nbatches):
    p = fresh(d, "raw-bs")
    frame = struct.pack("<I", len(VALUE)) + VALUE
    with open(p, "wb") as f:
        t = time.perf_counter()
        for _ in range(nbatches):
            f.write(b"".join([frame] * 1000))
            f.flush()
            os.fdatasync(f.fileno())
        r = nbatches * 1000 / (time.perf_counter() - t)
    os.unlink(p)
    return r


def t_always(d, threads, per_thread):
    with tidelog.open(fresh(d, "al%d" % threads), durability="always") as log:
        def work():
            for _ in range(per_thread):
                log.append(VALUE)
        ths = [threading.Thread(target=work) for _ in range(threads)]
        t = time.perf_counter()
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        return threads * per_thread / (time.perf_counter() - t)


def raw_always(d, n):
    p = fresh(d, "raw-al")
    frame = struct.pack("<I", len(VALUE)) + VALUE
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    t = time.perf_counter()
    for _ in range(n):
        os.write(fd, frame)
        os.fdatasync(fd)
    r = n / (time.perf_counter() - t)
    os.close(fd)
    os.unlink(p)
    return r


KILLED_WRITER = """
import sys, tidelog
log = tidelog.open(sys.argv[1], durability="none", segment_bytes=int(sys.argv[2]))
chunk = [b"y" * 1000] * 1000
total = int(sys.argv[3])
while log.end_offset * 1032 < total:
    log.append_batch(chunk)
print("ready", log.end_offset, log.durable_offset, flush=True)
sys.stdin.read()
"""


def reopen_after_kill(d, unsynced_bytes):
    p = fresh(d, "killed")
    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, p, str(unsynced_bytes + (64 << 20)),
                              str(unsynced_bytes)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    line = child.stdout.readline().split()
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    t = time.perf_counter()
    log = tidelog.open(p, durability="none")
    dt = time.perf_counter() - t
    end = log.end_offset
    log.close()
    shutil.rmtree(p)
    return dt, int(line[1]), end


def clean_reopen(d, nseg, repeats):
    p = fresh(d, "forty")
    with tidelog.open(p, durability="none", segment_bytes=1 << 22) as log:
        while len(log.segments()) < nseg:
            log.append_batch([VALUE] * 10000)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        log = tidelog.open(p, durability="none")
        times.append(time.perf_counter() - t)
        n = len(log.segments())
        log.close()
    shutil.rmtree(p)
    return statistics.median(times), min(times), max(times), n


def med(xs):
    return statistics.median(xs), min(xs), max(xs)


def fmt(x):
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.1f}k"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--batch-only", action="store_true")
    ap.add_argument("--max-unsynced-bytes", default=None)
    a = ap.parse_args(argv)
    if a.max_unsynced_bytes is not None:
        BATCH_OPTS["max_unsynced_bytes"] = (None if a.max_unsynced_bytes == "none"
                                            else int(a.max_unsynced_bytes))
    q = 8 if a.quick else 1
    d = tempfile.mkdtemp(prefix="tidelog-dur-", dir=a.dir)
    print(f"tidelog bench/durability.py  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"command: python bench/durability.py {' '.join(argv or sys.argv[1:])}")
    print(f"data in {d}; repeats {a.repeat} interleaved; records/s median (min..max)")
    with tidelog.open(fresh(d, "probe")) as probe:
        print(f"tidelog from {os.path.dirname(tidelog.__file__)}; batch mode max_unsynced_bytes "
              f"{BATCH_OPTS.get('max_unsynced_bytes', getattr(probe, 'max_unsynced_bytes', 'n/a (no bound)'))}")
    try:
        rows = {k: [] for k in ("none", "batch", "bsync", "raw_bsync", "al1", "al4", "raw_al")}
        for _ in range(a.repeat):
            rows["none"].append(t_append(d, "none", 400_000 // q))
            rows["batch"].append(t_append(d, "batch", 400_000 // q))
            if a.batch_only:
                continue
            rows["bsync"].append(t_batch_sync(d, 200 // q))
            rows["raw_bsync"].append(raw_batch_sync(d, 200 // q))
            rows["al1"].append(t_always(d, 1, 2000 // q))
            rows["raw_al"].append(raw_always(d, 2000 // q))
            rows["al4"].append(t_always(d, 4, 2000 // q))
        m = {k: med(v) for k, v in rows.items() if v}

        def line(label, k, ref=None, target=None):
            r = f"  x{m[k][0] / m[ref][0]:.2f} of {ref}" if ref else ""
            tg = f"  (target {target})" if target else ""
            print(f"{label:<44} {fmt(m[k][0]):>8} ({fmt(m[k][1])}..{fmt(m[k][2])}){r}{tg}")
        print()
        line("append 100 B, durability=none", "none")
        line("append 100 B, durability=batch", "batch", "none", ">= 0.8x")
        if a.batch_only:
            med_g, p99_g, max_g, n_g = batch_sync_gaps(d, 3 / q)
            print(f"durability=batch (sync_interval 5 ms) under a tight append loop: {n_g} syncs, "
                  f"gap median {med_g * 1e3:.1f} ms, p99 {p99_g * 1e3:.1f} ms, max {max_g * 1e3:.1f} ms")
            return
        line("batch of 1000 + sync(), tidelog", "bsync", "raw_bsync", ">= 1.5x")
        line("batch of 1000 + fdatasync, raw file", "raw_bsync")
        line("durability=always, 1 thread", "al1", "raw_al", ">= 0.9x")
        line("write + fdatasync per record, raw file", "raw_al")
        line("durability=always, 4 threads", "al4", "al1", ">= 3x")
        med_g, p99_g, max_g, n_g = batch_sync_gaps(d, 3 / q)
        print(f"durability=batch (sync_interval 5 ms) under a tight append loop: {n_g} syncs, "
              f"gap median {med_g * 1e3:.1f} ms, p99 {p99_g * 1e3:.1f} ms, max {max_g * 1e3:.1f} ms")
        print()
        gib = (1 << 30) // q
        dt, written, end = reopen_after_kill(d, gib)
        print(f"reopen after kill -9, {gib >> 20} MiB unsynced in the active segment: {dt * 1e3:.0f} ms "
              f"(kept {end} of {written} records)  (target <= 1 s)")
        mt, lo, hi, n = clean_reopen(d, 40, 10)
        print(f"clean reopen of a log of {n} segments: {mt * 1e3:.1f} ms median ({lo * 1e3:.1f}..{hi * 1e3:.1f})  (target <= 50 ms)")
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
