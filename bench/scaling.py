"""How cost grows with the log: append and scan throughput for logs of 1, 10 and 100 segments and
one of 10 GB; open time against the number of segments; memory (RSS) while scanning.

    python bench/scaling.py [--dir DIR] [--big-gb 10] [--quick]

Records of 1 KiB written with append_batch of 1000 (durability="none", then close(), which
syncs: not timed); scans by a readonly handle with read_batch + values_array (every record
CRC-checked), the page cache warm (the log was just written) unless the machine evicted it.
RSS is sampled from /proc/self/status after every batch of the scan: a Log keeps at most 4
sealed segments mapped, so it stays bounded however long the log.
"""
import argparse
import os
import shutil
import statistics
import tempfile
import time

import numpy as np

import tidelog

RECORD = 1024
BATCH = 1000


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


FRAME = RECORD + 32          # bytes a record takes in a segment (header, no key)


def batches_per_segment(segment_bytes):
    return max(1, (segment_bytes - 64) // FRAME // BATCH)    # an atomic batch fits a segment


def build(path, n_batches, segment_bytes):
    arr = np.frombuffer(os.urandom(RECORD * BATCH), np.uint8).reshape(BATCH, RECORD)
    log = tidelog.open(path, durability="none", segment_bytes=segment_bytes)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        log.append_batch(arr)
    t = time.perf_counter() - t0
    nseg = len(log.segments())
    log.close()
    return n_batches * BATCH, t, nseg


def scan(path):
    log = tidelog.open(path, readonly=True)
    try:
        base = rss_mb()
        peak = base
        cur = log.cursor(0)
        n = 0
        acc = 0
        t0 = time.perf_counter()
        while True:
            b = cur.read_batch()
            if not len(b):
                break
            a = b.values_array(np.dtype((np.void, RECORD)))
            acc += len(a)
            n += len(b)
            r = rss_mb()
            if r > peak:
                peak = r
        t = time.perf_counter() - t0
        assert acc == n
        return n, t, base, peak
    finally:
        log.close()


def open_times(d, nseg, repeat=7):
    path = os.path.join(d, f"open{nseg}")
    seg = 1 << 20
    arr = np.zeros((BATCH, RECORD), np.uint8)
    with tidelog.open(path, durability="none", segment_bytes=seg) as log:
        while True:
            log.append_batch(arr[: (seg - 64) // FRAME])        # one segment's worth
            if len(log.segments()) >= nseg:
                break
    w, r = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        tidelog.open(path, segment_bytes=seg).close()
        w.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with tidelog.open(path, readonly=True) as log:
            log.read(log.end_offset - 1)
        r.append(time.perf_counter() - t0)
    shutil.rmtree(path, ignore_errors=True)
    return statistics.median(w), statistics.median(r)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=None, help="where the logs go (not tmpfs)")
    ap.add_argument("--big-gb", type=float, default=10.0, help="size of the big log (GB)")
    ap.add_argument("--quick", action="store_true", help="segments of 8 MiB, a 1 GB big log")
    args = ap.parse_args()
    seg = (8 << 20) if args.quick else (64 << 20)
    big = (1 << 30) if args.quick else int(args.big_gb * 1e9)
    d = tempfile.mkdtemp(prefix="tidelog-scaling-", dir=args.dir)
    print(f"tidelog {tidelog.__version__} bench/scaling.py  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"records of {RECORD} B, append_batch of {BATCH} (numpy 2-D), durability='none'; "
          f"scan = read_batch + values_array; data in {d}")
    try:
        print(f"\n{'log':<28}{'segments':>9}{'GB':>7}{'append GB/s':>13}{'scan GB/s':>11}"
              f"{'RSS before MB':>15}{'RSS peak MB':>13}")
        k = batches_per_segment(seg)
        cases = [(f"1 segment of {seg >> 20} MiB", k, seg),
                 (f"10 segments of {seg >> 20} MiB", 10 * k, seg),
                 (f"100 segments of {seg >> 20} MiB", 100 * k, seg),
                 (f"{big / 1e9:.0f} GB, 256 MiB segments", int(big // (RECORD * BATCH)), 256 << 20)]
        for name, nb, sb in cases:
            path = os.path.join(d, "log")
            n, t_app, nseg = build(path, nb, sb)
            gb = n * RECORD / 1e9
            n2, t_scan, base, peak = scan(path)
            assert n2 == n
            print(f"{name:<28}{nseg:>9}{gb:>7.2f}{gb / t_app:>13.2f}{gb / t_scan:>11.2f}"
                  f"{base:>15.0f}{peak:>13.0f}", flush=True)
            shutil.rmtree(path, ignore_errors=True)
        print(f"\n{'segments':>9}{'writer open ms':>16}{'reader open + read ms':>23}")
        for nseg in (1, 10, 100, 1000) if not args.quick else (1, 10, 100):
            w, r = open_times(d, nseg)
            print(f"{nseg:>9}{w * 1e3:>16.2f}{r * 1e3:>23.2f}", flush=True)
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
