"""tidelog.bridge._rdkc, the Kafka ingest's reading loop in C on confluent-kafka's librdkafka: it
loads here (the test extra installs confluent-kafka), its columns are what the confluent path
makes, and no misuse crashes the interpreter: settings librdkafka refuses, use after close, a
second close, a forked child touching its parent's handle, odd sizes and timeouts, a cluster
that cannot be reached (the error noted, nothing written to stderr)."""
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from bridgekit import free_port, kafka_mock, kafka_produce_raw  # noqa: F401
from test_bridge_kafka import produce


def rdkc():
    from tidelog.bridge import _rdkc
    assert _rdkc.load() is None, _rdkc.load()
    return _rdkc


def consumer(bootstrap, topic, partition=0, **extra):
    settings = {"bootstrap.servers": bootstrap, "group.id": "t", "enable.auto.commit": "false",
                "enable.partition.eof": "true", "auto.offset.reset": "error"}
    settings.update(extra)
    return rdkc().Consumer(settings, topic, partition)


def take_all(c, n, start=0):
    """Columns of messages start.. until n were taken (or PARTITION_EOF), and the events."""
    cols = ([], [], [], [], [])
    events = []
    c.assign(start)
    for _ in range(200):
        taken, size, marked, ev = c.take(1000, 0.2, True, *cols)
        events += ev
        if len(cols[0]) >= n or any(e[0] == "_PARTITION_EOF" for e in ev):
            break
    return cols, events


def test_it_loads_on_confluent_kafkas_librdkafka():
    """load() finds the librdkafka confluent-kafka mapped and every function it needs; the
    ingest reads through it unless told otherwise."""
    from tidelog.bridge import kafka
    assert rdkc().load() is None
    assert kafka.fast_unavailable() is None
    os.environ[kafka.FAST_ENV] = "confluent"
    try:
        assert kafka.fast_unavailable() == f"{kafka.FAST_ENV}=confluent"
    finally:
        del os.environ[kafka.FAST_ENV]


def test_columns_are_what_the_confluent_path_makes(kafka_mock):
    """Values (a null one b""), keys (None stays None), timestamps in ns, headers as lists of
    (str, bytes) with a null value b"" (None without headers), offsets; `marked` only for a
    batch with a tidelog-timestamp header; the value bytes summed."""
    items = [(None, b"a", 1_600_000_000_001, [("h", b"1")]),
             (b"k", b"", 1_600_000_000_002, []),
             (b"", b"ccc", 1_600_000_000_003, [("x", None), ("\u00e9", b"\xff"), ("x", b"2")])]
    produce(kafka_mock.bootstrap, "cols", 0, items)
    c = consumer(kafka_mock.bootstrap, "cols")
    try:
        (offs, vals, keys, tss, hs), events = take_all(c, 3)
        assert offs == [0, 1, 2]
        assert vals == [b"a", b"", b"ccc"]
        assert keys == [None, b"k", b""]
        assert tss == [(1_600_000_000_000 + i) * 10**6 for i in (1, 2, 3)]
        assert hs == [[("h", b"1")], None, [("x", b""), ("\u00e9", b"\xff"), ("x", b"2")]]
        assert all(e[0] == "_PARTITION_EOF" for e in events)
        c.assign(0)
        cols = ([], [], [], [], [])
        got = c.take(3, 5, True, *cols)
        assert got[:3] == (3, 4, False)
        assert c.watermarks(10) == (0, 3)
        assert c.cached_watermarks()[1] in (-1, 3)
    finally:
        c.close()
    produce(kafka_mock.bootstrap, "stamp", 0, [(None, b"v", 5, [("tidelog-timestamp", b"7")])])
    c = consumer(kafka_mock.bootstrap, "stamp")
    try:
        cols = ([], [], [], [], [])
        c.assign(0)
        taken, size, marked, _ = c.take(1, 10, True, *cols)
        assert (taken, size, marked) == (1, 1, True)
        assert cols[4] == [[("tidelog-timestamp", b"7")]]     # (the ingest takes it back)
    finally:
        c.close()


def test_packed_values_are_the_list_values_back_to_back(kafka_mock):
    """take(..., ends): the values go into one bytearray back to back (a null value adds
    nothing), each one's end (int64) into `ends`, the other columns as without it; a second
    take appends to both; what append_batch(value_offsets=) makes of them is the list's."""
    import numpy as np
    items = [(None, b"a", 1_600_000_000_001, [("h", b"1")]),
             (b"k", b"", 1_600_000_000_002, []),
             (b"", b"ccc", 1_600_000_000_003, []),
             (None, b"dddd", 1_600_000_000_004, [])]
    produce(kafka_mock.bootstrap, "packed", 0, items)
    c = consumer(kafka_mock.bootstrap, "packed")
    try:
        c.assign(0)
        offs, vals, keys, tss, hs, ends = [], bytearray(b"pre"), [], [], [], bytearray(8)
        taken = 0
        for _ in range(100):
            taken += c.take(3 - taken, 0.2, True, offs, vals, keys, tss, hs, ends)[0]
            if taken == 3:
                break
        assert offs == [0, 1, 2] and keys == [None, b"k", b""]
        assert bytes(vals) == b"preaccc"
        assert np.frombuffer(ends, np.int64).tolist() == [0, 4, 4, 7]
        assert hs == [[("h", b"1")], None, None]
        for _ in range(100):
            if c.take(1, 0.2, True, offs, vals, keys, tss, hs, ends)[0]:
                break
        assert bytes(vals) == b"preacccdddd" and offs == [0, 1, 2, 3]
        assert np.frombuffer(ends, np.int64).tolist() == [0, 4, 4, 7, 11]
        with pytest.raises(TypeError):
            c.take(1, 0, True, [], [], [], [], [], bytearray())     # list values with ends
        with pytest.raises(TypeError):
            c.take(1, 0, True, [], bytearray(), [], [], [])         # bytearray without ends
    finally:
        c.close()


def test_a_header_name_not_utf8_is_an_exception_naming_its_offset(kafka_mock):
    """(Bytes on the wire: librdkafka takes any.) UnreadableHeader(offset), the messages
    before it taken, and the consumer usable after it."""
    kafka_produce_raw(kafka_mock.bootstrap, "bad", 0,
                      [(b"v0", [(b"ok", b"1")]), (b"v1", [(b"\xff\xfe", b"2")]),
                       (b"v2", [(b"ok", b"3")])])
    _rdkc = rdkc()
    c = consumer(kafka_mock.bootstrap, "bad")
    try:
        c.assign(0)
        cols = ([], [], [], [], [])
        with pytest.raises(_rdkc.UnreadableHeader) as e:
            for _ in range(50):
                c.take(3, 0.2, True, *cols)
        assert e.value.args == (1,)
        assert cols[0] == [0] and cols[1] == [b"v0"]
        # packed: values and ends cut back to the messages taken before it
        c.assign(0)
        offs, vals, keys, tss, hs, ends = [], bytearray(), [], [], [], bytearray(8)
        with pytest.raises(_rdkc.UnreadableHeader):
            for _ in range(50):
                c.take(3, 0.2, True, offs, vals, keys, tss, hs, ends)
        assert offs == [0] and bytes(vals) == b"v0" and len(ends) == 16
        c.assign(2)
        cols = ([], [], [], [], [])
        for _ in range(50):
            if c.take(1, 0.2, True, *cols)[0]:
                break
        assert cols[0] == [2] and cols[4] == [[("ok", b"3")]]
    finally:
        c.close()


def test_settings_librdkafka_refuses_are_errors_not_crashes(kafka_mock):
    _rdkc = rdkc()
    with pytest.raises(ValueError, match="No such configuration property"):
        consumer(kafka_mock.bootstrap, "t", **{"no.such.setting": "1"})
    with pytest.raises(ValueError, match="fetch.wait.max.ms"):
        consumer(kafka_mock.bootstrap, "t", **{"fetch.wait.max.ms": "many"})
    with pytest.raises(TypeError):
        consumer(kafka_mock.bootstrap, "t", **{"fetch.wait.max.ms": 5})
    with pytest.raises(ValueError, match="NUL"):
        consumer(kafka_mock.bootstrap, "t", **{"client.id": "a\0b"})
    with pytest.raises(ValueError, match="NUL"):
        consumer(kafka_mock.bootstrap, "t\0u")
    with pytest.raises(TypeError):
        _rdkc.Consumer(None, "t", 0)
    with pytest.raises(OverflowError):
        consumer(kafka_mock.bootstrap, "t", 1 << 40)


def test_close_twice_and_use_after_close(kafka_mock):
    """close() again does nothing; every other method after it raises ValueError; a
    Consumer dropped unclosed is destroyed by its dealloc."""
    c = consumer(kafka_mock.bootstrap, "t")
    c.close()
    c.close()
    cols = ([], [], [], [], [])
    for call in (lambda: c.take(1, 0, True, *cols), lambda: c.assign(0),
                 lambda: c.watermarks(1), c.cached_watermarks, c.last_error):
        with pytest.raises(ValueError, match="closed"):
            call()
    for _ in range(3):
        consumer(kafka_mock.bootstrap, "t")      # (dropped at once: dealloc destroys it)


def test_odd_sizes_and_timeouts_are_clamped(kafka_mock):
    produce(kafka_mock.bootstrap, "odd", 0, [(None, b"v%d" % i, 1 + i, []) for i in range(5)])
    c = consumer(kafka_mock.bootstrap, "odd")
    try:
        c.assign(0)
        cols = ([], [], [], [], [])
        for n, timeout in ((0, -5.0), (-1, 0), (1 << 40, 0.2), (3, float("nan"))):
            c.take(n, timeout, bool(n % 2), *cols)
        for _ in range(50):
            if len(cols[0]) >= 5:
                break
            c.take(1 << 30, 0.1, False, *cols)
        assert cols[0] == [0, 1, 2, 3, 4]
        with pytest.raises(TypeError):
            c.take(1, 0, True, None, [], [], [], [])
        with pytest.raises(OverflowError):
            c.assign(1 << 70)
    finally:
        c.close()


def test_a_cluster_that_cannot_be_reached_is_noted_and_nothing_reaches_stderr(tmp_path):
    """librdkafka's own log lines never reach stderr (its log callback drops them); its errors
    are noted for last_error(); a watermark query fails with librdkafka's text."""
    code = textwrap.dedent(f"""
        import sys, time
        sys.path[:0] = {sys.path!r}
        from tidelog.bridge import _rdkc
        assert _rdkc.load() is None
        c = _rdkc.Consumer({{"bootstrap.servers": "127.0.0.1:{free_port()}", "group.id": "t",
                             "debug": "all", "log_level": "7"}}, "t", 0)
        c.assign(0)
        cols = ([], [], [], [], [])
        deadline = time.monotonic() + 20
        while c.last_error() is None and time.monotonic() < deadline:
            c.take(10, 0.2, True, *cols)
        print(c.last_error())
        try:
            c.watermarks(0.5)
        except RuntimeError as e:
            print("watermarks:", e)
        c.close()
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    first, second = r.stdout.splitlines()
    assert first.startswith("('_") and "127.0.0.1" in first, first
    assert second.startswith("watermarks: ") and len(second) > len("watermarks: ")


def test_a_forked_child_does_not_touch_its_parents_handle(kafka_mock, tmp_path):
    """A child of fork() has the parent's Consumer but not librdkafka's threads: every call
    raises RuntimeError, close() and the child's exit (dealloc) leave the handle alone; the
    parent reads on."""
    produce(kafka_mock.bootstrap, "fk", 0, [(None, b"v%d" % i, 1 + i, []) for i in range(3)])
    c = consumer(kafka_mock.bootstrap, "fk")
    try:
        c.assign(0)
        pid = os.fork()
        if pid == 0:                                    # the child
            status = 1
            try:
                try:
                    c.take(1, 0, True, [], [], [], [], [])
                except RuntimeError as e:
                    if "parent" in str(e):
                        c.close()
                        c.close()
                        status = 0
            finally:
                os._exit(status)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
        cols = ([], [], [], [], [])
        for _ in range(50):
            if len(cols[0]) >= 3:
                break
            c.take(3, 0.2, True, *cols)
        assert cols[1] == [b"v0", b"v1", b"v2"]
    finally:
        c.close()
    # and a child that exits without closing (its dealloc, at interpreter exit)
    code = textwrap.dedent(f"""
        import os, sys
        sys.path[:0] = {sys.path!r}
        from tidelog.bridge import _rdkc
        assert _rdkc.load() is None
        c = _rdkc.Consumer({{"bootstrap.servers": {kafka_mock.bootstrap!r}, "group.id": "t"}},
                           "fk", 0)
        pid = os.fork()
        if pid == 0:
            del c                                   # the child's dealloc: leaves it alone
            sys.exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
        c.close()
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_a_second_thread_cannot_close_or_take_while_one_waits(kafka_mock):
    """While one thread waits in take() (the GIL released), another's take() or close() on
    the same Consumer raises (it would share its buffer, or destroy the handle under it)."""
    produce(kafka_mock.bootstrap, "busy", 0, [(None, b"v", 1, [])])
    c = consumer(kafka_mock.bootstrap, "busy")
    c.assign(1)                                   # (past the end: take() waits)
    waited = []
    t = threading.Thread(target=lambda: waited.append(c.take(10, 2.0, True, [], [], [], [],
                                                             [])))
    t.start()
    try:
        time.sleep(0.5)
        with pytest.raises(RuntimeError, match="another thread"):
            c.close()
        with pytest.raises(RuntimeError, match="another thread"):
            c.take(1, 0, True, [], [], [], [], [])
    finally:
        t.join()
        c.close()
    assert waited and waited[0][0] == 0


def test_consumers_made_read_and_dropped_in_a_loop(kafka_mock, tmp_path):
    """The pump started by a take(), then stopped by assign() again, close(), or the dealloc of
    a Consumer dropped unclosed (here and at interpreter exit): no hang, no crash, nothing on
    stderr, and each reads from where it was assigned."""
    produce(kafka_mock.bootstrap, "loop", 0, [(None, b"v%d" % i, 1 + i, []) for i in range(20)])
    for i in range(12):
        c = consumer(kafka_mock.bootstrap, "loop")
        cols = ([], [], [], [], [])
        c.assign(i % 20)
        for _ in range(50):
            if c.take(5, 0.1, False, *cols)[0]:
                break
        assert cols[0][0] == i % 20
        c.assign(0)
        cols = ([], [], [], [], [])
        for _ in range(50):
            if c.take(1, 0.1, True, *cols)[0]:
                break
        assert cols[0] == [0]
        if i % 2:
            c.close()
        del c                                   # (the others: dealloc stops the pump)
    code = textwrap.dedent(f"""
        import sys
        sys.path[:0] = {sys.path!r}
        from tidelog.bridge import _rdkc
        assert _rdkc.load() is None
        c = _rdkc.Consumer({{"bootstrap.servers": {kafka_mock.bootstrap!r}, "group.id": "t"}},
                           "loop", 0)
        c.assign(0)
        cols = ([], [], [], [], [])
        while not cols[0]:
            c.take(5, 0.1, False, *cols)
        print(cols[0][0])                       # (exits with the pump running, unclosed)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    assert (r.returncode, r.stdout.strip(), r.stderr) == (0, "0", "")
