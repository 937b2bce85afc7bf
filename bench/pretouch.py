"""The pretoucher (ext/tl_toucher.h) on and off, interleaved in one process, medians of repeats:
single-call appends of 100 B and 1 KiB (stored through the mapping: the thread's work) and
append_batch of 1000 x 100 B (written with pwrite: it should make no difference), all with
durability="none" into fresh logs.

  python bench/pretouch.py [--quick] [--repeat N] [--dir DIR]
"""
import argparse
import gc
import os
import shutil
import statistics
import tempfile
import time

import tidelog


def run(d, size, n, batch, pretouch):
    path = os.path.join(d, "log")
    shutil.rmtree(path, ignore_errors=True)
    values = [os.urandom(size) for _ in range(1000)]
    log = tidelog.open(path, durability="none")
    try:
        if not pretouch:
            log._pretouch_off()
        append, append_batch = log.append, log.append_batch
        t0 = time.perf_counter()
        for _ in range(n // 1000):
            if batch:
                append_batch(values)
            else:
                for v in values:
                    append(v)
        return (time.perf_counter() - t0) / n * 1e9
    finally:
        log.close()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a quarter of the records, 3 repeats")
    ap.add_argument("--repeat", type=int, default=None, help="repeats (default 5)")
    ap.add_argument("--dir", default=None, help="where the logs go (not tmpfs)")
    args = ap.parse_args(argv)
    repeat = args.repeat or (3 if args.quick else 5)
    scale = 4 if args.quick else 1
    rows = [("append 100 B", 100, 300000 // scale, False),
            ("append 1 KiB", 1024, 100000 // scale, False),
            ("append_batch 1000 x 100 B", 100, 400000 // scale, True)]
    d = tempfile.mkdtemp(prefix="tidelog-pretouch-", dir=args.dir)
    res = {(name, pt): [] for name, *_ in rows for pt in (False, True)}
    gc.disable()
    try:
        for _ in range(repeat):
            for name, size, n, batch in rows:
                for pt in (False, True):
                    res[name, pt].append(run(d, size, n, batch, pt))
    finally:
        gc.enable()
        shutil.rmtree(d, ignore_errors=True)
    print(f"tidelog bench/pretouch.py  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"durability='none'; ns per record, median (min..max) of {repeat} interleaved repeats\n")
    print(f"{'workload':28s} {'pretoucher off':>24s} {'on':>24s}   on/off")
    for name, *_ in rows:
        off, on = res[name, False], res[name, True]
        cell = lambda v: f"{statistics.median(v):7.1f} ({min(v):.0f}..{max(v):.0f})"
        print(f"{name:28s} {cell(off):>24s} {cell(on):>24s}   "
              f"x{statistics.median(on) / statistics.median(off):.2f}")


if __name__ == "__main__":
    main()
