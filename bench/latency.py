"""Tailing across processes: append -> a follower in another process receives it.

    python bench/latency.py [--events 100000] [--rows ROWS] [--png bench/latency.png]

The writer is opened with tidelog.open()'s defaults, the settings a user gets ("batch"
durability: the flusher thread syncs every 5 ms meanwhile; 256 MiB segments), except in the rows
that say otherwise. Measurements, each with the writer in this process and the follower in a
child process (both on this machine, so one clock: latency = the follower's time.time_ns() when
the record reaches its loop - the record's timestamp, taken by append):

1. latency, "stream": an append every 20 us; the follower spins between records (its default
   spin of 50 us covers the gap). Also with durability="none", whose writer has the pretoucher
   thread (ext/tl_toucher.h), and the same with the pretoucher turned off (`_pretouch_off()`).
2. latency, "sleeping": an append every 500 us; the follower has gone to sleep on the futex each
   time, so this is the wake-up path; and the same with the follower spinning for 1 ms
   (`follow(spin=1e-3)`) before it sleeps: the latency/CPU knob.
3. throughput: the writer appends single records as fast as it can while the follower follows
   with follow_batches(); the follower's sustained rate and how far behind it ends.
4. commit(): durable position commits per second (LMDB, synced).

--rows picks latency rows by key (stream, none, none-nopretouch, sleeping, spin; default all)
and --no-extras skips 3 and 4 (for A/B runs of the latency rows alone).

Anonymous cursors ("uncommitted mode": every appended record, not only durable ones). The plot
is a histogram of both latency runs on log axes.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np

import tidelog

FOLLOWER = textwrap.dedent("""
    import sys, time, numpy as np, tidelog
    log = tidelog.open(sys.argv[1], readonly=True)
    n = int(sys.argv[2])
    cur = log.cursor(0)
    lat = np.zeros(n, np.int64)
    print("ready", flush=True)
    i = 0
    now = time.time_ns
    t0 = None
    if sys.argv[4] == "records":
        for rec in cur.follow(timeout=30, spin=float(sys.argv[5])):
            lat[i] = now() - rec.timestamp
            if t0 is None:
                t0 = time.perf_counter()
            i += 1
            if i == n:
                break
    else:
        for b in cur.follow_batches(timeout=30):
            if t0 is None:
                t0 = time.perf_counter()
            i += len(b)
            if i >= n:
                break
    t1 = time.perf_counter()
    np.save(sys.argv[3], lat[:min(i, n)])
    print(i, t1 - t0, time.time_ns(), flush=True)
""")


def with_follower(path, n, out, mode, spin, opts, write, pretouch=True):
    """A writer log (tidelog.open(path, **opts)) and a follower child (FOLLOWER in `mode`)
    reading n records; write(log) runs once the follower is ready. Returns (write's result,
    records the follower got, seconds from its first record to its last, its time.time_ns() at
    the end, and the pretoucher's (bytes populated, errno) or None)."""
    log = tidelog.open(path, **opts)
    if not pretouch:
        log._pretouch_off()
    touched = None
    p = subprocess.Popen([sys.executable, "-c", FOLLOWER, path, str(n), out, mode, str(spin)],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        result = write(log)
        touched = log._pretoucher
        line = p.stdout.readline().split()
        p.wait(60)
    finally:
        p.kill()
        log.close()
    return result, int(line[0]), float(line[1]), int(line[2]), touched


def follow_run(path, n, gap, out, spin, opts, pretouch=True):
    """The writer paces n appends `gap` seconds apart; returns the follower's latencies (ns)."""
    def paced(log):
        value = b"x" * 100
        clock = time.perf_counter
        t0 = clock()
        for _ in range(n):
            due = clock() + gap
            log.append(value)
            while clock() < due:
                pass
        return clock() - t0
    t_write, got, secs, _, touched = with_follower(path, n, out, "records", spin, opts, paced,
                                                   pretouch)
    return np.load(out), t_write, got, secs, touched


def throughput_run(path, n):
    """Single-call appends at full speed with a follower in another process."""
    def full_speed(log):
        value = b"x" * 100
        append = log.append
        t0 = time.perf_counter()
        for _ in range(n):
            append(value)
        return time.perf_counter() - t0, time.time_ns()
    (t_write, end_ns), got, secs, done_ns, _ = with_follower(
        path, n, os.path.join(os.path.dirname(path), "tput.npy"), "batches", 0.0, {},
        full_speed)
    return n / t_write, got / secs, (done_ns - end_ns) / 1e6


def commit_rate(path, n):
    with tidelog.open(path, durability="none") as log:
        log.append_batch([b"x"] * n)
        log.sync()
        cur = log.cursor(name="bench")
        t0 = time.perf_counter()
        for i in range(1, n + 1):
            cur.commit(i)
        return n / (time.perf_counter() - t0)


def pct(a):
    return [np.percentile(a, q) / 1000 for q in (50, 99, 99.9)] + [a.max() / 1000]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--throughput-events", type=int, default=2_000_000)
    ap.add_argument("--png", default=os.path.join(os.path.dirname(__file__), "latency.png"))
    ap.add_argument("--rows", default="stream,none,none-nopretouch,sleeping,spin")
    ap.add_argument("--no-extras", action="store_true")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="tidelog-latency-")
    none = {"durability": "none"}
    table = {"stream": ("stream (20 us gap)", 20e-6, 50e-6, {}, True),
             "none": ("stream, none", 20e-6, 50e-6, none, True),
             "none-nopretouch": ("stream, none, no pretouch", 20e-6, 50e-6, none, False),
             "sleeping": ("sleeping (500 us gap)", 500e-6, 50e-6, {}, True),
             "spin": ("500 us gap, spin=1 ms", 500e-6, 1e-3, {}, True)}
    try:
        rows = []
        runs = {}
        for key in args.rows.split(","):
            name, gap, spin, opts, pretouch = table[key]
            lat, t_write, got, secs, touched = follow_run(os.path.join(tmp, key), args.events, gap,
                                                 os.path.join(tmp, "lat.npy"), spin, opts,
                                                 pretouch)
            assert got == args.events, (got, args.events)
            runs[name] = lat
            p50, p99, p999, mx = pct(lat)
            rows.append((name, len(lat), p50, p99, p999, mx,
                         "-" if touched is None else f"{touched[0] / 1e6:.1f}"))
        print(f"tidelog {tidelog.__version__}, cross-process tail latency, 100 B records, "
              f"anonymous cursor, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
        print(f"{'run':<27}{'events':>8}{'p50 us':>9}{'p99 us':>9}{'p99.9 us':>10}{'max us':>9}"
              f"{'pretouched MB':>15}")
        for r in rows:
            print(f"{r[0]:<27}{r[1]:>8}{r[2]:>9.1f}{r[3]:>9.1f}{r[4]:>10.1f}{r[5]:>9.1f}{r[6]:>15}")
        if args.no_extras:
            return
        w, f, behind = throughput_run(os.path.join(tmp, "tput"), args.throughput_events)
        print(f"\nfull-speed single appends: writer {w / 1e6:.2f} M/s, follower in another "
              f"process {f / 1e6:.2f} M/s ({f / w:.2f}x), finished {behind:.1f} ms after the writer")
        c = commit_rate(os.path.join(tmp, "commit"), 2000)
        print(f"commit(): {c:,.0f} durable commits/s (LMDB write transaction, synced)")
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("(matplotlib not installed: no plot)")
            return
        fig, ax = plt.subplots(figsize=(8, 4.5))
        bins = np.logspace(-0.5, 4, 120)
        for name, lat in runs.items():
            ax.hist(lat / 1000, bins=bins, histtype="step", label=name, linewidth=1.4)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("append -> follower in another process (us)")
        ax.set_ylabel("events")
        ax.set_title(f"tidelog tail latency, {args.events} events per run")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.png, dpi=110)
        print(f"plot: {args.png}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
