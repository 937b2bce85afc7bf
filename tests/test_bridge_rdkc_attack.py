"""tidelog.bridge._rdkc attacked as a hostile caller would: threads racing its lifecycle, and
what it holds ahead of the caller. Each test here failed (a crash, a hang, or what it names)
before the fix it guards; what would kill the interpreter runs in a child process, so a crash
is a failed test, not a lost run."""
import os
import subprocess
import sys
import textwrap

from bridgekit import kafka_mock, tansu  # noqa: F401


def run(code, tmp_path, timeout=120):
    """`code` in a child interpreter with this one's path: (returncode, stdout, stderr)."""
    path = [os.path.dirname(__file__)] + sys.path
    code = f"import sys\nsys.path[:0] = {path!r}\n" + textwrap.dedent(code)
    r = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code],
                       capture_output=True, text=True, timeout=timeout, cwd=tmp_path)
    return r.returncode, r.stdout, r.stderr


def test_close_while_another_thread_is_in_assign_raises_not_crashes(kafka_mock, tmp_path):
    """assign() released the GIL (stopping the pump) without marking the Consumer busy: a
    close() from another thread meanwhile destroyed the handle, and assign() then gave
    rd_kafka_assign a NULL handle (a segfault), the two also joining the pump's thread twice.
    Now close() raises as it does while take() waits, and the handle stays whole."""
    code = f"""
        import threading, time
        from tidelog.bridge import _rdkc
        assert _rdkc.load() is None
        raised = 0
        for _ in range(5):
            c = _rdkc.Consumer({{"bootstrap.servers": {kafka_mock.bootstrap!r},
                                 "group.id": "t"}}, "race", 0)
            c.assign(0)
            c.take(1, 0.05, True, [], [], [], [], [])       # (the pump running)
            errs = []
            def loop():
                try:
                    for i in range(3000):
                        c.assign(i % 7)
                except ValueError as e:                      # closed between two calls
                    errs.append(e)
            t = threading.Thread(target=loop)
            t.start()
            time.sleep(0.05)
            while t.is_alive():
                try:
                    c.close()
                    break
                except RuntimeError as e:
                    assert "another thread" in str(e), e
                    raised += 1
            t.join()
            c.close()
        print("ok", raised > 0)
    """
    rc, out, err = run(code, tmp_path)
    assert rc == 0 and out.split() == ["ok", "True"], (rc, out, err[-2000:])


def test_the_pump_holds_a_bounded_number_of_bytes_ahead(tansu, tmp_path):
    """The pump took messages off librdkafka's queue while its ring had room for 8,192 of
    them, whatever their size: with queued.max.messages.kbytes=1024 (librdkafka's own bound on
    what it holds ahead: 1 MB) a consumer that took one 256 KB message grew by the whole
    topic (75 MB here; 8 GB of 1 MB messages). Now the ring takes no more once it holds
    RING_BYTES (32 MiB) or that setting's bytes, if less; take() asking for more messages than
    fit does not wait for them, and every message still comes, in order."""
    code = f"""
        import time
        from test_bridge_kafka import produce
        from tidelog.bridge import _rdkc
        assert _rdkc.load() is None
        def rss():
            return int(open("/proc/self/statm").read().split()[1]) * 4096
        big = [b"%d" % i + b"x" * (256 << 10) for i in range(300)]
        for j in range(0, 300, 50):
            produce({tansu.bootstrap!r}, "big", 0, [(None, v, 1, []) for v in big[j:j + 50]])
        c = _rdkc.Consumer({{"bootstrap.servers": {tansu.bootstrap!r}, "group.id": "t",
                             "queued.max.messages.kbytes": "1024",
                             "fetch.queue.backoff.ms": "10"}}, "big", 0)
        c.assign(0)
        cols = ([], [], [], [], [])
        while not cols[0]:
            c.take(1, 10, True, *cols)
        before = rss()
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and rss() - before < 40 << 20:
            time.sleep(0.1)
        print("grew", (rss() - before) >> 20)
        for _ in range(200):
            if len(cols[0]) >= 300:
                break
            c.take(300, 2, True, *cols)
        assert cols[0] == list(range(300)), cols[0]
        assert cols[1] == big
        c.close()
    """
    rc, out, err = run(code, tmp_path)
    assert rc == 0, (rc, out, err[-2000:])
    grew = int(out.split()[1])
    assert grew < 40, f"{grew} MB more after one message taken"


LOOKUPS = {     # how confluent_kafka.cimpl's file is found, made to fail: why load() says not
    "missing": ("raise ImportError('No module named confluent_kafka.cimpl')",
                "confluent-kafka is not installed"),
    "no file": ("return None", "has no file"),
    "not loaded": ("import json; return json.__file__", "cannot be opened"),
    "no librdkafka in it": ("import tidelog._core as c; return c.__file__",
                            "librdkafka has no rd_kafka_version"),
    "broken": ("raise OSError('a broken install')", "OSError: a broken install"),
    "not a path": ("return 5", "TypeError"),
}


def test_when_librdkafka_cannot_be_found_the_ingest_reads_through_confluent_kafka(kafka_mock,
                                                                                  tmp_path):
    """However the lookup of confluent-kafka's librdkafka fails (no cimpl, no file, a file
    not loaded or without the functions, an exception other than ImportError, a path that is
    not one), load() says why and the ingest reads through confluent-kafka's Messages: every
    message, no traceback. (An OSError or a TypeError came out of load() and ended the
    ingest.)"""
    from test_bridge_kafka import produce
    produce(kafka_mock.bootstrap, "ld", 0, [(None, b"v%d" % i, 1 + i, []) for i in range(10)])
    for case, (body, why) in LOOKUPS.items():
        code = f"""
            def lookup():
                {body}
            from tidelog.bridge import _rdkc
            _rdkc._library_path = lookup
            import tidelog, tidelog.bridge
            from tidelog.bridge import kafka
            print(kafka.fast_unavailable())
            n = tidelog.bridge.ingest({kafka_mock.url("ld")!r}, {str(tmp_path / case)!r})
            with tidelog.open({str(tmp_path / case)!r}, readonly=True) as log:
                assert [bytes(log.read(o).value) for o in range(n)] == \\
                    [b"v%d" % i for i in range(10)]
            print(n)
        """
        rc, out, err = run(code, tmp_path)
        assert rc == 0 and err == "", (case, rc, out, err[-2000:])
        first, n = out.splitlines()
        assert why in first and n == "10", (case, out)


def test_a_finalizer_run_while_take_makes_its_columns_cannot_reenter_it(kafka_mock, tmp_path):
    """take() makes Python objects (header tuples and lists: the cyclic GC may run between
    them, and with it any finalizer): one that called take() on the same Consumer took into
    the buffer the outer take() was reading (its messages destroyed twice: 'double free or
    corruption', an abort), one that called close() destroyed the handle while the outer held
    messages of it (rd_kafka_destroy waited for them: a hang). The Consumer stays busy until
    take() has given its messages back: the inner call raises, the outer takes on."""
    code = f"""
        import gc, time
        from test_bridge_kafka import produce
        from tidelog.bridge import _rdkc
        assert _rdkc.load() is None
        produce({kafka_mock.bootstrap!r}, "re", 0,
                [(None, b"v%d" % i, 1 + i, [("h", b"%d" % i), ("g", b"")]) for i in range(1200)])
        for inner in ("take", "close"):
            c = _rdkc.Consumer({{"bootstrap.servers": {kafka_mock.bootstrap!r},
                                 "group.id": "t"}}, "re", 0)
            c.assign(0)
            c.take(1, 10, True, [], [], [], [], [])
            said = []

            class Inner:
                def __init__(self):
                    self.me = self          # (a cycle: only the collector frees it)

                def __del__(self):
                    try:
                        if inner == "take":
                            c.take(500, 0, True, [], [], [], [], [])
                        else:
                            c.close()
                        said.append("ran")
                    except RuntimeError as e:
                        said.append(str(e))
            cols = ([], [], [], [], [])
            gc.collect()
            gc.set_threshold(100)           # (a collection within the first ~30 messages)
            Inner()
            taken = c.take(1000, 20, True, *cols)[0]
            gc.set_threshold(700)
            assert said == ["the Kafka consumer is in use by another thread"], said
            assert taken == 1000 and cols[0] == list(range(1, 1001)), cols[0][:5]
            assert cols[1] == [b"v%d" % i for i in range(1, 1001)]
            c.close()
        print("ok")
    """
    rc, out, err = run(code, tmp_path, timeout=60)
    assert rc == 0 and out.strip() == "ok", (rc, out, err[-2000:])


def test_packed_columns_shrunk_or_exported_during_take_never_show_stale_bytes(kafka_mock,
                                                                              tmp_path):
    """take(..., ends) grows `values` once and cuts it back after; a gc.callbacks hook run
    meanwhile (header tuples are made per message) may shrink it, or hold a view of it. Shrunk:
    RuntimeError, and the bytearray is left as the hook left it (was: grown back,
    uninitialized - the bytes of freed objects in the caller's bytearray). Exported, then a
    header name that is not text: the cut is refused (BufferError) and the bytes take() did
    not fill are zeros (were what the memory held before: here a 'Q' the caller had deleted)."""
    code = f"""
        import gc
        from bridgekit import kafka_produce_raw
        from tidelog.bridge import _rdkc
        assert _rdkc.load() is None
        kafka_produce_raw({kafka_mock.bootstrap!r}, "gc", 0,
                          [(b"v%03d" % i, [(b"h", b"1"), (b"g", b"2")]) for i in range(40)]
                          + [(b"bad!", [(b"\\xff", b"3")])] + [(b"late", [])] * 5)
        for case in ("shrunk", "exported"):
            c = _rdkc.Consumer({{"bootstrap.servers": {kafka_mock.bootstrap!r},
                                 "group.id": "t"}}, "gc", 0)
            c.assign(0)
            vals = bytearray(b"Q" * 10000)
            del vals[6000:]                  # (the bytes stay allocated, past its size)
            ends = bytearray(8)
            held = []

            def hook(phase, info):
                if phase == "start" and not held:
                    held.append(vals.clear() if case == "shrunk" else memoryview(vals))
            gc.collect()
            gc.set_threshold(10)
            gc.callbacks.append(hook)
            try:
                c.take(46, 20, True, [], vals, [], [], [], ends)
            except Exception as e:
                print(case, type(e).__name__)
            finally:
                gc.callbacks.remove(hook)
                gc.set_threshold(700)
            if case == "shrunk":
                print(len(vals))
            else:
                print(b"Q" in vals[6000:], len(vals) > 6000)
            held.clear()
            c.close()
    """
    rc, out, err = run(code, tmp_path, timeout=60)
    assert rc == 0, (rc, out, err[-2000:])
    assert out.split("\n")[:4] == ["shrunk RuntimeError", "0", "exported BufferError",
                                   "False True"], out
