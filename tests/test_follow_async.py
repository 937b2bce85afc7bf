"""follow_async at scale: waiting tasks hold no thread of a shared pool (the loop's default
executor stays free), many tasks on many logs all progress, and loop shutdown or interpreter
exit never waits for a pending follower. Anything that could hang runs in a subprocess with a
generous timeout: a hang fails the test instead of stalling the suite."""

import asyncio
import gc
import os
import subprocess
import sys
import textwrap
import threading
import weakref

import pytest

import tidelog

HANG_TIMEOUT = 120      # seconds: far beyond what the scripts need; only a hang reaches it


def run_script(body, *args):
    src = textwrap.dedent(body)
    proc = subprocess.run([sys.executable, "-c", src, *args], capture_output=True, text=True,
                          timeout=HANG_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("readonly", [False, True])
def test_hundred_followers_on_ten_logs_progress_and_to_thread_runs(tmp_path, readonly):
    out = run_script("""
        import asyncio, os, sys, threading
        import tidelog

        root, readonly = sys.argv[1], sys.argv[2] == "ro"
        writers = [tidelog.open(os.path.join(root, str(i)), durability="none")
                   for i in range(10)]
        logs = ([tidelog.open(w.path, readonly=True) for w in writers] if readonly
                else writers)
        N = 3

        async def follower(log, named):
            cur = log.cursor("latest", durable_only=named)
            got = []
            async for rec in cur.follow_async():
                got.append(bytes(rec.value))
                if len(got) == N:
                    return got

        def append_all():
            for k in range(N):
                for i, w in enumerate(writers):
                    w.append(b"%d-%d" % (i, k))
                for w in writers:
                    w.sync()
            return "appended"

        async def main():
            tasks = [asyncio.create_task(follower(log, j % 2 == 1))
                     for log in logs for j in range(10)]
            await asyncio.sleep(0)         # every task runs up to its first wait
            await asyncio.sleep(0)
            # the default executor (a few workers on this machine) must be free for others
            assert await asyncio.to_thread(lambda: 42) == 42
            assert await asyncio.to_thread(append_all) == "appended"
            results = await asyncio.gather(*tasks)
            for t, got in enumerate(results):
                i = t // 10
                assert got == [b"%d-%d" % (i, k) for k in range(N)], (t, got)
            waiters = [th for th in threading.enumerate() if th.name == "tidelog-async-waiter"]
            assert len(waiters) <= 2 * len(logs), len(waiters)

        asyncio.run(main())
        print("ok", flush=True)
        """, str(tmp_path), "ro" if readonly else "rw")
    assert out.strip() == "ok"


@pytest.mark.parametrize("readonly", [False, True])
def test_asyncio_run_returns_with_followers_pending(tmp_path, readonly):
    out = run_script("""
        import asyncio, os, sys
        import tidelog

        root, readonly = sys.argv[1], sys.argv[2] == "ro"
        writers = [tidelog.open(os.path.join(root, str(i))) for i in range(10)]
        logs = ([tidelog.open(w.path, readonly=True) for w in writers] if readonly
                else writers)

        async def follower(log):
            async for rec in log.cursor("latest").follow_async():
                pass

        async def main():
            for log in logs:
                for _ in range(10):
                    asyncio.create_task(follower(log))
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            print("leaving", flush=True)      # 100 followers still wait: run() cancels them

        asyncio.run(main())
        print("ok", flush=True)
        """, str(tmp_path), "ro" if readonly else "rw")
    assert out.split() == ["leaving", "ok"]


def test_interpreter_exits_with_a_follower_never_cancelled(tmp_path):
    # the loop is neither closed nor are its tasks cancelled: nothing may keep the process alive
    out = run_script("""
        import asyncio, os, sys
        import tidelog

        log = tidelog.open(os.path.join(sys.argv[1], "a"))

        async def follower():
            async for rec in log.cursor("latest").follow_async():
                pass

        loop = asyncio.new_event_loop()
        tasks = [loop.create_task(follower()) for _ in range(10)]
        loop.run_until_complete(asyncio.sleep(0.1))
        print("exiting", flush=True)
        """, str(tmp_path))
    assert out.strip() == "exiting"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, HANG_TIMEOUT))


def test_timeout_ends_the_iteration(log):
    log.append(b"a")

    async def main():
        return [bytes(r.value) async for r in log.cursor(0).follow_async(timeout=0.05)]

    assert run(main()) == [b"a"]


def test_close_while_waiting_raises_log_closed(log):
    async def main():
        async def follower():
            async for _ in log.cursor("latest").follow_async():
                pass

        task = asyncio.create_task(follower())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        await asyncio.to_thread(log.close)
        with pytest.raises(tidelog.LogClosedError):
            await task

    run(main())


def test_named_follower_waits_for_durable(tmp_path):
    log = tidelog.open(str(tmp_path / "d"), durability="none")
    try:
        async def main():
            cur = log.cursor("latest", name="n")
            got = []

            async def follower():
                async for rec in cur.follow_async():
                    got.append(rec.offset)
                    return

            task = asyncio.create_task(follower())
            await asyncio.sleep(0)
            log.append(b"x")                       # not durable yet: the follower keeps waiting
            await asyncio.sleep(0.05)
            assert got == [] and not task.done()
            await asyncio.to_thread(log.sync)
            await task
            return got

        assert run(main()) == [0]
    finally:
        log.close()


def test_cancelled_followers_let_the_log_go(tmp_path):
    # the waiter thread holds the log only while someone waits: a dropped log is collected
    log = tidelog.open(str(tmp_path / "g"))
    ref = weakref.ref(log)

    async def main():
        tasks = []
        for _ in range(5):
            async def follower():
                async for _ in log.cursor("latest").follow_async():
                    pass
            tasks.append(asyncio.create_task(follower()))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    run(main())
    log.close()
    del log
    for _ in range(200):           # the kicked thread lets go within its wait slice
        gc.collect()
        if ref() is None:
            break
        threading.Event().wait(0.05)
    assert ref() is None


def test_followers_in_two_loops_on_one_log(log):
    results = {}

    def in_thread(key):
        async def main():
            got = []
            async for rec in log.cursor(0).follow_async(timeout=HANG_TIMEOUT):
                got.append(rec.offset)
                if len(got) == 20:
                    return got
        results[key] = asyncio.run(main())

    threads = [threading.Thread(target=in_thread, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for i in range(20):
        log.append(b"%d" % i)
    for t in threads:
        t.join(HANG_TIMEOUT)
    assert results == {0: list(range(20)), 1: list(range(20))}
