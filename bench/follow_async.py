"""follow_async wake-up latency: the waiter thread per log (now) against a worker thread of the
loop's default executor per waiting task (9cca872), interleaved A/B (ABBA) in one process.

    python bench/follow_async.py [--rounds 10] [--events 300] [--gap 500e-6]
                                                [--same-process]

A writer in a child process (with --same-process: a thread here) appends one record every `gap`
seconds (the follower has gone to sleep each time: the wake-up path); one follow_async task on a
readonly Log receives them. Latency = time.time_ns() when the
record reaches the task - the record's timestamp (taken by append). The "executor" variant is a
copy of 9cca872's waiting (loop.run_in_executor of the same core wait), kept here only to compare.
Prints p50 / p99 per variant (medians over rounds).
"""
import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

import tidelog
from tidelog import cursor as cursor_mod


async def executor_wait(log, position, durable, timeout):
    """9cca872's follow_async wait: one executor worker thread per waiting task."""
    if position < (log.durable_offset if durable else log.end_offset):
        return True
    loop = asyncio.get_running_loop()
    cancel = threading.Event()
    fut = loop.run_in_executor(None, log.wait_for, position, durable, timeout, 0.0, cancel)
    try:
        return await fut
    except asyncio.CancelledError:
        cancel.set()
        log.wake_sleepers()
        raise


WRITER = """
import sys, time, tidelog
log = tidelog.open(sys.argv[1], durability="none")
print("ready", flush=True)
for line in sys.stdin:
    n, gap = line.split()
    for i in range(int(n)):
        log.append(b"x" * 100)
        time.sleep(float(gap))
    print("done", flush=True)
"""


def one_round(log, writer, events, gap, variant):
    cursor_mod.wait_async = variant
    lat = []
    start = log.end_offset

    async def follower():
        async for rec in log.cursor(start).follow_async():
            lat.append(time.time_ns() - rec.timestamp)
            if len(lat) == events:
                return

    if writer is None:                   # --same-process: a writer thread here
        def write():
            for i in range(events):
                log.append(b"x" * 100)
                time.sleep(gap)
        t = threading.Thread(target=write)
        t.start()
        asyncio.run(follower())
        t.join()
    else:
        writer.stdin.write(f"{events} {gap}\n")
        writer.stdin.flush()
        asyncio.run(follower())
        writer.stdout.readline()
    return np.array(lat, dtype=np.int64)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--events", type=int, default=300)
    ap.add_argument("--gap", type=float, default=500e-6)
    ap.add_argument("--same-process", action="store_true",
                    help="the writer is a thread of this process (three threads share one GIL)")
    a = ap.parse_args()
    d = tempfile.mkdtemp()
    path = os.path.join(d, "log")
    variants = {"executor (9cca872)": executor_wait, "waiter thread": cursor_mod.wait_async}
    res = {k: [] for k in variants}
    writer = None
    try:
        if a.same_process:
            log = tidelog.open(path, durability="none")
        else:
            tidelog.open(path, durability="none").close()
            writer = subprocess.Popen([sys.executable, "-c", WRITER, path], text=True,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            assert writer.stdout.readline() == "ready\n"
            log = tidelog.open(path, readonly=True)
        with log:
            for r in range(a.rounds):
                order = list(variants.items())
                for name, fn in (order if r % 2 else order[::-1]):     # ABBA: no order bias
                    lat = one_round(log, writer, a.events, a.gap, fn)
                    res[name].append((np.percentile(lat, 50), np.percentile(lat, 99)))
    finally:
        cursor_mod.wait_async = variants["waiter thread"]
        if writer is not None:
            writer.stdin.close()
            writer.wait()
        shutil.rmtree(d)
    for name, r in res.items():
        r = np.array(r)
        print(f"{name:20s} p50 {np.median(r[:, 0]) / 1e3:7.1f} us   "
              f"p99 {np.median(r[:, 1]) / 1e3:7.1f} us   ({a.rounds} rounds x {a.events})")


if __name__ == "__main__":
    main()
