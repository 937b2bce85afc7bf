"""Tailing: wait / follow / follow_async, in this process and across processes, across segment
rolls and a writer's restart; sleepers are woken by the writer, not by a poll."""
import asyncio
import os
import resource
import threading
import time

import pytest

import tidelog
from conftest import run_python, spawn_python

FOLLOWER = """
import sys, tidelog
log = tidelog.open(sys.argv[1], readonly=True)
cur = log.cursor(0, durable_only=sys.argv[3] == "durable")
want = int(sys.argv[2])
print("ready", flush=True)
n = 0
for rec in cur.follow(timeout=30):
    assert rec.offset == n, (rec.offset, n)
    assert bytes(rec.value) == b"r%d" % n, (bytes(rec.value), n)
    n += 1
    if n == want:
        break
print("got", n, flush=True)
"""


def test_wait_returns_at_once_when_a_record_is_there(log):
    log.append(b"a")
    cur = log.cursor(0)
    assert cur.wait(0) is True
    next(cur)
    t = time.monotonic()
    assert cur.wait(0.05) is False
    assert time.monotonic() - t >= 0.04


def test_wait_argument_errors(log):
    cur = log.cursor(0)
    with pytest.raises(ValueError, match="timeout"):
        cur.wait(-1)
    with pytest.raises(TypeError, match="timeout"):
        cur.wait("1")
    with pytest.raises(ValueError, match="spin"):
        cur.wait(0, spin=-1)


def test_a_thread_is_woken_by_an_append(log):
    cur = log.cursor("latest")
    got = []
    t = threading.Thread(target=lambda: got.append(cur.wait(10, spin=0)))
    t.start()
    time.sleep(0.1)
    assert not got                      # asleep
    log.append(b"x")
    t.join(5)
    assert got == [True]


def test_close_wakes_a_sleeping_thread(log_path):
    lg = tidelog.open(log_path, durability="none")
    cur = lg.cursor("latest")
    err = []

    def waiter():
        try:
            cur.wait(None, spin=0)
        except tidelog.LogClosedError as e:
            err.append(e)
    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.1)
    lg.close()
    t.join(5)
    assert not t.is_alive() and len(err) == 1


def test_durable_only_waits_for_a_sync(log_path):
    lg = tidelog.open(log_path, durability="none")
    try:
        lg.append(b"x")
        cur = lg.cursor(0, durable_only=True)
        assert cur.wait(0.05) is False
        threading.Timer(0.1, lg.sync).start()
        assert cur.wait(5) is True
        assert next(cur).offset == 0
    finally:
        lg.close()


@pytest.mark.parametrize("mode", ["all", "durable"])
def test_follower_in_another_process_gets_every_record_across_rolls(log_path, mode):
    n = 3000
    lg = tidelog.open(log_path, durability="batch", segment_bytes=8192)
    lg.append(b"r0")
    p = spawn_python(FOLLOWER, log_path, n, mode)
    try:
        assert p.stdout.readline().strip() == "ready"
        i = 1
        while i < n:
            if i % 500 == 0:
                time.sleep(0.05)                    # let the follower fall asleep now and then
            if i % 7 == 0:
                k = min(20, n - i)
                lg.append_batch([b"r%d" % j for j in range(i, i + k)])
                i += k
            else:
                lg.append(b"r%d" % i)
                i += 1
        out, errs = p.communicate(timeout=60)
        assert p.returncode == 0, errs
        assert f"got {n}" in out
        assert len(lg.segments()) > 3            # (format v2: batches take less room)
    finally:
        p.kill()
        lg.close()


def test_follower_survives_a_writer_crash_and_restart(log_path):
    """A writer killed -9 looks like 'no new data'; the follower continues with the next writer."""
    n = 400
    p = spawn_python(FOLLOWER, log_path, n, "all")
    # the follower needs the log to exist: create it first
    tidelog.open(log_path, segment_bytes=8192).close()
    p.kill()
    p.wait()
    p = spawn_python(FOLLOWER, log_path, n, "all")
    try:
        assert p.stdout.readline().strip() == "ready"
        run_python("""
            import os, sys, tidelog
            log = tidelog.open(sys.argv[1], durability="none", segment_bytes=8192)
            for i in range(200):
                log.append(b"r%d" % i)
            os.kill(os.getpid(), 9)
        """, log_path, check=False)
        time.sleep(0.2)
        with tidelog.open(log_path, segment_bytes=8192) as lg:
            assert lg.end_offset == 200                 # a process crash keeps the page cache
            for i in range(200, n):
                lg.append(b"r%d" % i)
            out, errs = p.communicate(timeout=60)
        assert p.returncode == 0, errs
        assert f"got {n}" in out
    finally:
        p.kill()


def test_an_idle_follower_uses_no_cpu(log_path):
    """A follower with nothing to read sleeps in the kernel (a futex), not in a poll loop. A
    poll loop burns CPU in every wait, while a sleeper's CPU time is near zero but may be inflated
    by the machine's other load now and then: the least of three waits must be near zero."""
    with tidelog.open(log_path) as lg:
        lg.append(b"x")
        out = run_python("""
            import resource, sys, time, tidelog
            log = tidelog.open(sys.argv[1], readonly=True)
            cur = log.cursor("latest")
            for _ in range(3):
                r0 = resource.getrusage(resource.RUSAGE_SELF)
                t = time.monotonic()
                assert cur.wait(1.0) is False
                r1 = resource.getrusage(resource.RUSAGE_SELF)
                cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
                print(cpu, time.monotonic() - t)
        """, log_path).stdout.split()
        cpus, walls = [float(x) for x in out[0::2]], [float(x) for x in out[1::2]]
        assert len(cpus) == 3 and min(walls) >= 0.9
        assert min(cpus) < 0.03, f"idle waits of 1 s burned {cpus} s of CPU"


def test_follow_timeout_stops(log):
    log.append(b"a")
    t = time.monotonic()
    assert [bytes(r.value) for r in log.cursor(0).follow(timeout=0.1)] == [b"a"]
    assert time.monotonic() - t < 5


def test_follow_async_does_not_block_the_loop(log):
    async def main():
        ticks = 0
        got = []
        stop = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.005)

        async def producer():
            for i in range(50):
                log.append(b"%d" % i)
                await asyncio.sleep(0.004)

        async def consumer():
            async for rec in log.cursor(0).follow_async(timeout=1.0):
                got.append(int(bytes(rec.value)))
            stop.set()

        await asyncio.gather(ticker(), producer(), consumer())
        return ticks, got
    ticks, got = asyncio.run(main())
    assert got == list(range(50))
    assert ticks > 50        # the loop ran while the consumer waited


def test_follow_async_can_be_cancelled(log):
    async def main():
        cur = log.cursor("latest")

        async def consume():
            async for _ in cur.follow_async():
                pass
        task = asyncio.create_task(consume())
        await asyncio.sleep(0.1)
        task.cancel()
        t = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - t
    t0 = time.monotonic()
    asyncio.run(main())          # returns: the executor thread did not stay blocked
    assert time.monotonic() - t0 < 5


def test_readonly_wait_durable_sleeps_until_the_writer_syncs(log_path):
    with tidelog.open(log_path, durability="none") as lg:
        lg.append(b"x")
        r = tidelog.open(log_path, readonly=True)
        try:
            assert r.wait_durable(0, timeout=0.05) is False
            threading.Timer(0.1, lg.sync).start()
            assert r.wait_durable(0, timeout=5) is True
        finally:
            r.close()


def test_follow_batches_yields_every_record_once(log_path):
    with tidelog.open(log_path, durability="none", segment_bytes=8192) as lg:
        cur = lg.cursor(0)
        seen = []

        def consume():
            for b in cur.follow_batches(timeout=1.0, max_records=37):
                assert len(b) > 0
                seen.extend(b.offsets.tolist())
        t = threading.Thread(target=consume)
        t.start()
        for i in range(2000):
            lg.append(b"%d" % i)
            if i % 300 == 0:
                time.sleep(0.01)
        t.join(30)
        assert seen == list(range(2000))
