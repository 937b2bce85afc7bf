"""Issue 15 with Kafka: `tidelog mirror` / `tidelog ingest` against librdkafka's mock cluster
(3 brokers in a process of their own, speaking the Kafka protocol on local ports), exactly once
across kill -9 at random moments, a negative control, an exact (to the millisecond) round trip,
and the failures that must give one line and exit 2."""
import random
import time

import pytest

import tidelog
import tidelog.bridge
from tidelog.bridge.address import parse_address
from tidelog.bridge.kafka import KafkaTarget

from bridgekit import (CYCLES, cli, free_port, kafka_messages, kafka_mock, kafka_read,  # noqa: F401
                       kill_loop)

# the mock cluster keeps only about 5 MB per partition: the loops stay below ~2 MB whatever
# TIDELOG_BRIDGE_CYCLES asks for
PER_CYCLE = max(50, min(1000, 20_000 // CYCLES))


def fill(log, n, rng, start=0):
    vals = [rng.randbytes(rng.randrange(0, 100)) for _ in range(n)]
    keys = [None if i % 3 == 0 else b"k%d" % (i % 7) for i in range(start, start + n)]
    ts = [1_700_000_000_000_000_000 + (start + i) * 1_234_567 for i in range(n)]
    hs = [[] if i % 2 else [("h", b"%d" % i), ("h", b"\x00")] for i in range(start, start + n)]
    log.append_batch(vals, keys=keys, timestamps=ts, headers=hs)
    log.sync()


def expect_mirrored(log_path, got):
    with tidelog.open(log_path, readonly=True) as log:
        offsets = [int(dict(h)["tidelog-offset"]) for _, _, _, _, h in got]
        dups = len(offsets) - len(set(offsets))
        assert dups == 0, f"{dups} duplicates"
        assert offsets == list(range(log.end_offset)), "missing or out of order"
        for (_, key, value, ms, h), off in zip(got, offsets):
            rec = log.read(off)
            assert (value, key, ms) == (bytes(rec.value), rec.key, rec.timestamp // 10**6)
            assert h == [(k, bytes(v)) for k, v in rec.headers] + \
                [("tidelog-offset", b"%d" % off)]


def one_line_error(r, *words):
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tidelog: error: "), r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_mirror_exactly_once_under_kill_9(kafka_mock, tmp_path):
    log_path = str(tmp_path / "log")
    rng = random.Random(35)
    log = tidelog.open(log_path)
    try:
        killed = kill_loop(["mirror", log_path, kafka_mock.url("t", 1), "--create"],
                           lambda i: fill(log, PER_CYCLE, rng, start=i * PER_CYCLE))
    finally:
        log.close()
    assert killed >= CYCLES // 4, f"only {killed} runs were killed mid-way"
    expect_mirrored(log_path, kafka_messages(kafka_mock.bootstrap, "t", 1))


def test_mirror_negative_control_no_resume_duplicates(kafka_mock, tmp_path):
    log_path = str(tmp_path / "log")
    rng = random.Random(36)
    log = tidelog.open(log_path)
    try:
        kill_loop(["mirror", log_path, kafka_mock.url("t"), "--create", "--no-resume"],
                  lambda i: fill(log, 300, rng, start=i * 300), cycles=3, max_delay=30)
    finally:
        log.close()
    with pytest.raises(AssertionError, match="duplicates"):
        expect_mirrored(log_path, kafka_messages(kafka_mock.bootstrap, "t"))


def produce(bootstrap, topic, partition, items):
    import logging
    import confluent_kafka as ck
    lg = logging.getLogger("kafkatest")
    p = ck.Producer({"bootstrap.servers": bootstrap, "logger": lg, "enable.idempotence": True})
    for key, value, ms, headers in items:
        p.produce(topic, value, key=key, partition=partition, timestamp=ms, headers=headers)
    assert p.flush(30) == 0


def source_items(rng, start, n):
    return [(None if i % 3 == 0 else b"k%d" % (i % 5), rng.randbytes(rng.randrange(0, 100)),
             1_600_000_000_000 + i, [] if i % 2 else [("x", b"%d" % i), ("x", b"\xff")])
            for i in range(start, start + n)]


def expect_ingested(log_path, got):
    with tidelog.open(log_path, readonly=True) as log:
        recs = [log.read(o) for o in range(log.start_offset, log.end_offset)]
    offs = [int(dict(r.headers)["kafka-offset"]) for r in recs]
    dups = len(offs) - len(set(offs))
    assert dups == 0, f"{dups} duplicates"
    assert offs == [o for o, _, _, _, _ in got], "missing or out of order"
    for rec, (off, key, value, ms, h) in zip(recs, got):
        assert (bytes(rec.value), rec.key, rec.timestamp) == (value, key, ms * 10**6)
        assert [(k, bytes(v)) for k, v in rec.headers] == h + [("kafka-offset", b"%d" % off)]


def test_ingest_exactly_once_under_kill_9(kafka_read, kafka_mock, tmp_path):
    log_path = str(tmp_path / "in")
    rng = random.Random(45)
    per = PER_CYCLE
    killed = kill_loop(["ingest", kafka_mock.url("src", 2), log_path],
                       lambda i: produce(kafka_mock.bootstrap, "src", 2,
                                         source_items(rng, i * per, per)))
    assert killed >= CYCLES // 4, f"only {killed} runs were killed mid-way"
    expect_ingested(log_path, kafka_messages(kafka_mock.bootstrap, "src", 2))


def test_ingest_negative_control_no_resume_duplicates(kafka_mock, tmp_path):
    log_path = str(tmp_path / "in")
    rng = random.Random(46)
    kill_loop(["ingest", kafka_mock.url("src"), log_path, "--no-resume"],
              lambda i: produce(kafka_mock.bootstrap, "src", 0, source_items(rng, i * 300, 300)),
              cycles=3, max_delay=30)
    with pytest.raises(AssertionError, match="duplicates"):
        expect_ingested(log_path, kafka_messages(kafka_mock.bootstrap, "src"))


def test_round_trip_exact_to_the_millisecond(kafka_read, kafka_mock, tmp_path):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    rng = random.Random(8)
    with tidelog.open(src) as log:
        for i in range(500):
            hs = [] if i % 5 == 0 else [("a", rng.randbytes(i % 9)), ("a", b""), ("\u00e9", b"\xff")]
            log.append(rng.randbytes(i % 50), key=None if i % 3 == 0 else rng.randbytes(i % 4),
                       timestamp=rng.randrange(0, 1 << 62), headers=hs)
    url = kafka_mock.url("rt", 3)
    assert tidelog.bridge.mirror(src, url, create=True) == 500
    assert tidelog.bridge.ingest(url, dst) == 500
    with tidelog.open(src, readonly=True) as a, tidelog.open(dst, readonly=True) as b:
        assert len(b) == len(a)
        for off in range(len(a)):
            x, y = a.read(off), b.read(off)
            assert (bytes(y.value), y.key) == (bytes(x.value), x.key)
            assert y.timestamp == x.timestamp // 10**6 * 10**6
            assert [(k, bytes(v)) for k, v in y.headers] == \
                [(k, bytes(v)) for k, v in x.headers] + [("tidelog-offset", b"%d" % off),
                                                         ("kafka-offset", b"%d" % off)]


def test_missing_partition_foreign_last_message_unreachable(kafka_mock, tmp_path):
    log_path = str(tmp_path / "log")
    with tidelog.open(log_path) as log:
        fill(log, 10, random.Random(2))
    # the mock cluster makes topics of 4 partitions on first use
    one_line_error(cli("mirror", log_path, kafka_mock.url("p", 9), "--create"), "no partition 9")
    one_line_error(cli("mirror", log_path, kafka_mock.url("nope")), "'nope' does not exist",
                   "--create")
    one_line_error(cli("ingest", kafka_mock.url("nope"), str(tmp_path / "in")),
                   "'nope' does not exist")
    produce(kafka_mock.bootstrap, "f", 0, [(None, b"foreign", 1, [])])
    one_line_error(cli("mirror", log_path, kafka_mock.url("f")), "no tidelog-offset")
    one_line_error(cli("mirror", log_path, f"kafka://127.0.0.1:{free_port()}/t", timeout=30),
                   "cannot reach Kafka")
    for bad, word in [("kafka://h:1/t?partition=-1", "partition"),
                      ("kafka://h:1/bad topic", "topic"), ("kafka://h/t", "HOST:PORT"),
                      ("kafka://h:99999/t", "port")]:
        one_line_error(cli("mirror", log_path, bad), word)


def test_target_ahead_of_the_log_is_refused(kafka_mock, tmp_path):
    big, small = str(tmp_path / "big"), str(tmp_path / "small")
    with tidelog.open(big) as log:
        fill(log, 20, random.Random(3))
    with tidelog.open(small) as log:
        fill(log, 5, random.Random(3))
    assert tidelog.bridge.mirror(big, kafka_mock.url("a"), create=True) == 20
    one_line_error(cli("mirror", small, kafka_mock.url("a")), "another log")


def test_retention_gap_refused_unless_skipped(kafka_mock, tmp_path):
    log_path = str(tmp_path / "log")
    with tidelog.open(log_path, segment_bytes=1 << 14) as log:
        for _ in range(5):
            fill(log, 200, random.Random(4))
        log.truncate_before(900)
        start = log.start_offset
    assert start > 0
    one_line_error(cli("mirror", log_path, kafka_mock.url("g"), "--create"), "retention",
                   "--skip-gap")
    r = cli("mirror", log_path, kafka_mock.url("g"), "--create", "--skip-gap")
    assert r.returncode == 0, r.stderr
    got = kafka_messages(kafka_mock.bootstrap, "g")
    assert [int(dict(h)["tidelog-offset"]) for *_, h in got] == list(range(start, 1000))


def test_kafka_target_reads_nothing_from_an_empty_partition(kafka_mock):
    t = KafkaTarget(parse_address(kafka_mock.url("e")), {}, True)
    try:
        assert t.last_offset() is None
    finally:
        t.close()


def test_ingest_mends_null_header_values_and_takes_back_the_timestamp_header(kafka_read, kafka_mock,
                                                                            tmp_path):
    """A Kafka header may have a null value (a record's header value cannot): it comes in as
    b"". A `tidelog-timestamp` header (a mirrored record stamped below 1 ms) goes back into the
    record's timestamp and out of its headers, the rest of the record's headers kept in order;
    in the same batch as records that need neither, which keep theirs untouched."""
    items = [(None, b"plain", 1_600_000_000_001, [("a", b"1")]),
             (None, b"null", 1_600_000_000_002, [("a", None), ("b", b"2"), ("a", None)]),
             (None, b"none", 1_600_000_000_003, []),
             (b"k", b"stamped", 1_600_000_000_004,
              [("x", b"y"), ("tidelog-timestamp", b"999"), ("z", None)]),
             (None, b"foreign", 1_600_000_000_005, [("tidelog-timestamp", b"not a number")])]
    produce(kafka_mock.bootstrap, "nulls", 0, items)
    dst = str(tmp_path / "dst")
    assert tidelog.bridge.ingest(kafka_mock.url("nulls"), dst) == len(items)
    with tidelog.open(dst, readonly=True) as log:
        got = [log.read(o) for o in range(log.end_offset)]
    want = [(b"plain", None, 1_600_000_000_001 * 10**6, [("a", b"1")]),
            (b"null", None, 1_600_000_000_002 * 10**6, [("a", b""), ("b", b"2"), ("a", b"")]),
            (b"none", None, 1_600_000_000_003 * 10**6, []),
            (b"stamped", b"k", 999, [("x", b"y"), ("z", b"")]),
            (b"foreign", None, 1_600_000_000_005 * 10**6,
             [("tidelog-timestamp", b"not a number")])]
    for off, (rec, (value, key, ts, hs)) in enumerate(zip(got, want)):
        assert (bytes(rec.value), rec.key, rec.timestamp) == (value, key, ts), off
        assert [(k, bytes(v)) for k, v in rec.headers] == hs + [("kafka-offset", b"%d" % off)]


def configs_given(monkeypatch, kind):
    """The configs every confluent_kafka.`kind` ("Consumer", "Producer") made from now on is
    given, in a list (librdkafka does not report its settings back)."""
    import confluent_kafka
    seen = []
    real = getattr(confluent_kafka, kind)

    def spy(conf):
        seen.append(dict(conf))
        return real(conf)
    monkeypatch.setattr(confluent_kafka, kind, spy)
    return seen


def fast_settings_given(monkeypatch):
    """The settings every _rdkc.Consumer (the C loop's) made from now on is given, in a list
    (str values, as librdkafka's C API takes them)."""
    from tidelog.bridge import kafka as bk
    seen = []

    class Spy(bk._rdkc.Consumer):
        def __init__(self, settings, *a):
            seen.append(dict(settings))
            super().__init__(settings, *a)
    monkeypatch.setattr(bk._rdkc, "Consumer", Spy)
    return seen


def test_ingest_consumer_rests_briefly_when_its_queue_is_full_and_waits_briefly_on_fetches(kafka_read, kafka_mock, tmp_path, monkeypatch):
    """librdkafka's fetcher rests fetch.queue.backoff.ms once the consumer's queue is full (1 s
    by default): an ingest slower than the fetcher then waited most of each second with an empty
    queue (0.41x of the raw loop at 1 KiB). The ingest's consumer asks for FETCH_BACKOFF_MS,
    and a user's --config setting of its own wins. (What this protects is speed, measured in
    bench/bridges.py; here only that the setting reaches the consumer, and the data through.)"""
    from tidelog.bridge import kafka as bk
    seen = (configs_given(monkeypatch, "Consumer") if kafka_read == "confluent" else
            fast_settings_given(monkeypatch))
    produce(kafka_mock.bootstrap, "qb", 0, [(None, b"v%d" % i, 1_600_000_000_000 + i, [])
                                           for i in range(50)])
    assert tidelog.bridge.ingest(kafka_mock.url("qb"), str(tmp_path / "a")) == 50
    ingest = [c for c in seen if c.get("group.id") == "tidelog-ingest"]
    assert ingest and all(str(c["fetch.queue.backoff.ms"]) == str(bk.FETCH_BACKOFF_MS)
                          for c in ingest)
    assert bk.FETCH_BACKOFF_MS <= 100
    # and fetch.wait.max.ms: a broker that holds an empty fetch its whole length (Tansu, the
    # mock cluster) made a following ingest see each message ~0.25-0.5 s late
    assert all(str(c["fetch.wait.max.ms"]) == str(bk.FETCH_WAIT_MS) for c in ingest)
    # what the ingest's consumer rests on, the C loop's too: no commits, no topic made by a
    # metadata request, an event (not a jump) where the position is gone, the end told
    assert all((str(c["enable.auto.commit"]).lower(), str(c["allow.auto.create.topics"]).lower(),
                c["auto.offset.reset"], str(c["enable.partition.eof"]).lower()) ==
               ("false", "false", "error", "true") for c in ingest)
    # (the C loop's has no Python-level settings: its log and error callbacks are C's)
    assert kafka_read == "confluent" or not any("logger" in c or "error_cb" in c
                                                for c in ingest)
    assert bk.FETCH_WAIT_MS <= 50
    conf = tmp_path / "k.conf"
    conf.write_text("fetch.queue.backoff.ms=700\nfetch.wait.max.ms=300\n")
    seen.clear()
    assert tidelog.bridge.ingest(kafka_mock.url("qb"), str(tmp_path / "b"),
                                 config=str(conf)) == 50
    ingest = [c for c in seen if c.get("group.id") == "tidelog-ingest"]
    assert ingest and all(str(c["fetch.queue.backoff.ms"]) == "700" for c in ingest)
    assert all(str(c["fetch.wait.max.ms"]) == "300" for c in ingest)


def test_mirror_producer_takes_the_users_tuning_but_not_what_exactly_once_rests_on(
        kafka_mock, tmp_path, monkeypatch):
    """--config reaches the mirror's producer: linger.ms and queue.buffering.* (TUNABLE) are
    the user's; enable.idempotence, acks, enable.gapless.guarantee and the failures-only
    delivery reports stay the mirror's, whatever the file says. (librdkafka does not report
    its settings back: what the Producer was given is what is checked, and the data through.)"""
    seen = configs_given(monkeypatch, "Producer")
    log_path = str(tmp_path / "src")
    with tidelog.open(log_path) as log:
        fill(log, 30, random.Random(5))
    conf = tmp_path / "k.conf"
    conf.write_text("linger.ms=17\nqueue.buffering.max.messages=4321\n"
                    "queue.buffering.max.kbytes=2048\nenable.idempotence=false\nacks=1\n"
                    "enable.gapless.guarantee=false\n")
    assert tidelog.bridge.mirror(log_path, kafka_mock.url("tune"), create=True,
                                 config=str(conf)) == 30
    mine = [c for c in seen if "on_delivery" in c]
    assert len(mine) == 1, seen
    c = mine[0]
    assert (str(c["linger.ms"]), str(c["queue.buffering.max.messages"]),
            str(c["queue.buffering.max.kbytes"])) == ("17", "4321", "2048")
    assert (c["enable.idempotence"], c["acks"], c["enable.gapless.guarantee"],
            c["delivery.report.only.error"]) == (True, "all", True, True)
    expect_mirrored(log_path, kafka_messages(kafka_mock.bootstrap, "tune"))


@pytest.mark.parametrize("key", ["delivery.report.only.error", "error_cb", "logger",
                                 "default.topic.config", "stats_cb"])
def test_python_level_settings_in_a_config_file_are_one_line_errors(kafka_mock, tmp_path, key):
    """confluent-kafka reads some settings in Python (callbacks, a logger, a bool, a dict): from
    a key=value file they were a TypeError/AttributeError traceback (or, for `logger`, took the
    place of the logger that keeps librdkafka's lines off stderr). Now a clear error, exit 2."""
    log_path = str(tmp_path / "src")
    with tidelog.open(log_path) as log:
        fill(log, 3, random.Random(1))
    conf = tmp_path / "k.conf"
    conf.write_text(f"{key}=false\n")
    with pytest.raises(ValueError, match=key):
        tidelog.bridge.mirror(log_path, kafka_mock.url("py"), config=str(conf))
    with pytest.raises(ValueError, match=key):
        tidelog.bridge.ingest(kafka_mock.url("py"), str(tmp_path / "in"), config=str(conf))
    for cmd in (("mirror", log_path, kafka_mock.url("py"), "--config", str(conf)),
                ("ingest", kafka_mock.url("py"), str(tmp_path / "in2"), "--config", str(conf))):
        one_line_error(cli(*cmd), key)


def test_ingest_batches_hold_at_most_batch_bytes_of_values(kafka_read, kafka_mock, tmp_path, monkeypatch):
    """An ingest batch (one atomic append_batch, which must fit in one segment) holds at most
    BATCH_BYTES of values (or one message larger than that). The batch sizes came from the last
    batch's mean value size only: the first batch took up to BATCH_MESSAGES whatever their
    size (1 MB messages, Kafka's usual bound: 500 MB in one append, past the default 256 MiB
    segment: refused at every restart), and so did a batch of large messages after small ones.
    Here (within the ~5 MB the mock cluster keeps) 250 messages of 12 KB, 400 small ones, 100
    of 12 KB again, into a log of 2.5 MiB segments (was: 3 MB in the first append, refused):
    every message once, and no batch past the bound."""
    from tidelog.bridge import kafka as bk
    rng = random.Random(11)
    sizes = [12_000] * 250 + [10] * 400 + [12_000] * 100
    items = [(None, rng.randbytes(s), 1_600_000_000_000 + i, []) for i, s in enumerate(sizes)]
    produce(kafka_mock.bootstrap, "big", 0, items)
    seen = []
    real = bk.KafkaSource.batches

    def spy(self, *a, **kw):
        for b in real(self, *a, **kw):
            seen.append((len(b), b.value_bytes()))
            assert sum(map(len, b.value_list())) == b.value_bytes()
            yield b
    monkeypatch.setattr(bk.KafkaSource, "batches", spy)
    with tidelog.open(str(tmp_path / "in"), segment_bytes=5 << 19) as log:
        assert tidelog.bridge.ingest(kafka_mock.url("big"), log) == len(items)
        for off, (_, value, _, _) in enumerate(items):
            rec = log.read(off)
            assert bytes(rec.value) == value and rec.headers == [("kafka-offset", b"%d" % off)]
    assert sum(n for n, _ in seen) == len(items)
    assert all(size <= bk.BATCH_BYTES for _, size in seen), seen


def test_retention_gap_met_in_the_middle_of_a_batch_keeps_what_came_before_it(kafka_read,
                                                                              kafka_mock,
                                                                              tmp_path,
                                                                              monkeypatch):
    """A batch takes several consume() calls: messages 0..99 came in the first, and before the
    second the partition's retention deleted the next ones (the consumer's position out of
    range: an OFFSET_RESET event). The messages in hand are ingested before the refusal, which
    names the deleted range from the log's next position (was: 0..99 dropped, the log left
    empty, and the error naming 100..: a gap it did not mention); with --skip-gap, the ingest
    goes on after them from the partition's first offset."""
    import confluent_kafka as ck
    from tidelog.bridge import kafka as bk
    from tidelog.bridge.base import BridgeError
    item = [(None, b"z" * 1000, 1_600_000_000_000, [])]
    produce(kafka_mock.bootstrap, "gap", 0, item * 1000)
    real_consumer = bk._consumer
    calls = []

    class Proxy:
        """The source's consumer, but before its second consume() the partition's retention
        deletes offsets 100 and on (the mock cluster keeps ~5 MB: 6 MB more produced) and the
        consumer's prefetched messages are dropped (assign), so the next fetch finds 100 gone;
        that consume() returns once the event has come."""

        def __init__(self, c):
            self.c = c

        def __getattr__(self, name):
            return getattr(self.c, name)

        def consume(self, n, timeout):
            calls.append(n)
            if len(calls) != 2:
                return self.c.consume(n, timeout)
            produce(kafka_mock.bootstrap, "gap", 0, item * 6000)
            self.c.assign([ck.TopicPartition("gap", 0, 100)])
            for _ in range(100):
                got = self.c.consume(n, 0.2)
                if got:
                    return got
            raise AssertionError("no event after the retention")

    real_fast = bk._rdkc.Consumer

    class Fast(real_fast):
        """The C loop's consumer, and the same retention before its second take(), where
        the first took 100 (a batch of 500: max_batch, below)."""

        def take(self, n, timeout, whole, *columns):
            calls.append(n)
            if len(calls) != 2:
                return super().take(n, timeout, whole, *columns)
            produce(kafka_mock.bootstrap, "gap", 0, item * 6000)
            self.assign(100)
            for _ in range(100):
                got = super().take(n, 0.2, whole, *columns)
                if got[0] or got[3]:
                    return got
            raise AssertionError("no event after the retention")

    if kafka_read == "confluent":
        monkeypatch.setattr(bk, "_consumer", lambda *a, **kw: Proxy(real_consumer(*a, **kw)))
    else:
        monkeypatch.setattr(bk._rdkc, "Consumer", Fast)
        monkeypatch.setattr(bk._FastReader, "chunk", 100)
    log_path = str(tmp_path / "in")
    with pytest.raises(BridgeError, match=r"offsets (\d+)\.\.\d+ were deleted") as e:
        tidelog.bridge.ingest(kafka_mock.url("gap"), log_path)
    assert calls[0] == 100
    with tidelog.open(log_path, readonly=True) as log:
        offs = [int(dict(log.read(o).headers)["kafka-offset"]) for o in range(log.end_offset)]
    assert offs == list(range(100))
    assert "offsets 100.." in str(e.value)
    monkeypatch.setattr(bk, "_consumer", real_consumer)
    monkeypatch.setattr(bk._rdkc, "Consumer", real_fast)
    first = kafka_messages(kafka_mock.bootstrap, "gap")[0][0]
    assert first > 100
    assert tidelog.bridge.ingest(kafka_mock.url("gap"), log_path, skip_gap=True) == \
        7000 - first
    with tidelog.open(log_path, readonly=True) as log:
        offs = [int(dict(log.read(o).headers)["kafka-offset"]) for o in range(log.end_offset)]
    assert offs == list(range(100)) + list(range(first, 7000))


def test_kafka_error_is_true():
    """The ingester finds events among a consume()'s messages with any(map(Message.error,
    ...)): that a KafkaError is true (and None false) is what it rests on."""
    import confluent_kafka as ck
    from tidelog.bridge import kafka as bk
    for code in (bk.PARTITION_EOF, bk.OFFSET_RESET, "_TRANSPORT", "_ALL_BROKERS_DOWN"):
        assert ck.KafkaError(getattr(ck.KafkaError, code))
    ok = ck.Message(topic="t", partition=0, offset=1, value=b"v", error=None)
    bad = ck.Message(topic="t", partition=0, offset=2,
                     error=ck.KafkaError(ck.KafkaError._PARTITION_EOF))
    assert not any(map(ck.Message.error, [ok, ok]))
    assert any(map(ck.Message.error, [ok, bad, ok]))


def _rewrap(ck, m, **change):
    """Message `m` as a new Message with some fields changed."""
    fields = dict(topic=m.topic(), partition=m.partition(), offset=m.offset(), key=m.key(),
                  value=m.value(), headers=m.headers(), error=m.error(),
                  timestamp=m.timestamp())
    fields.update(change)
    return ck.Message(**fields)


def test_ingest_stamps_a_message_without_timestamp_when_it_comes_and_fails_on_an_error_event(
        kafka_mock, tmp_path, monkeypatch):
    """A message without a timestamp (TIMESTAMP_NOT_AVAILABLE: an old broker's) among stamped
    ones is stamped with the time it is ingested, the others keep theirs; an error event among
    the messages of a consume() ends the ingest with its text, what came before appended.
    (Through confluent-kafka's Messages, which the test makes; the C loop's: the next test.)"""
    import confluent_kafka as ck
    from tidelog.bridge import kafka as bk
    from tidelog.bridge.base import BridgeError
    monkeypatch.setenv(bk.FAST_ENV, "confluent")
    items = [(None, b"v%d" % i, 1_600_000_000_000 + i, [("h", b"%d" % i)]) for i in range(300)]
    produce(kafka_mock.bootstrap, "nots", 0, items)
    real_consumer = bk._consumer
    fail_at = []

    class Proxy:
        def __init__(self, c):
            self.c = c

        def __getattr__(self, name):
            return getattr(self.c, name)

        def consume(self, n, timeout):
            got = []
            for m in self.c.consume(n, timeout):
                if m.error() is None and m.offset() % 7 == 3:
                    m = _rewrap(ck, m, timestamp=(ck.TIMESTAMP_NOT_AVAILABLE, 0))
                got.append(m)
                if fail_at and m.error() is None and m.offset() == fail_at[0]:
                    got.append(ck.Message(topic="nots", partition=0, error=ck.KafkaError(
                        ck.KafkaError._TRANSPORT, "the broker went away")))
            return got

    monkeypatch.setattr(bk, "_consumer", lambda *a, **kw: Proxy(real_consumer(*a, **kw)))
    before = time.time_ns()
    dst = str(tmp_path / "dst")
    assert tidelog.bridge.ingest(kafka_mock.url("nots"), dst) == len(items)
    after = time.time_ns()
    with tidelog.open(dst, readonly=True) as log:
        for off, (_, value, ms, hs) in enumerate(items):
            rec = log.read(off)
            assert bytes(rec.value) == value and rec.headers == hs + [("kafka-offset",
                                                                       b"%d" % off)]
            if off % 7 == 3:
                assert before <= rec.timestamp <= after, off
            else:
                assert rec.timestamp == ms * 10**6, off
    fail_at.append(250)
    dst2 = str(tmp_path / "dst2")
    with pytest.raises(BridgeError, match="the broker went away"):
        tidelog.bridge.ingest(kafka_mock.url("nots"), dst2)
    with tidelog.open(dst2, readonly=True) as log:
        assert log.end_offset <= 250
        assert [bytes(log.read(o).value) for o in range(log.end_offset)] == \
            [v for _, v, _, _ in items[:log.end_offset]]


def test_c_loop_ends_the_ingest_on_an_error_event_with_its_text(kafka_mock, tmp_path,
                                                                monkeypatch):
    """The C loop hands over an error event among the messages of a take() as (name, text,
    offset): the ingest ends with its text, what came before it appended (in order, whole)."""
    from tidelog.bridge import kafka as bk
    from tidelog.bridge.base import BridgeError
    monkeypatch.delenv(bk.FAST_ENV, raising=False)
    items = [(None, b"v%d" % i, 1_600_000_000_000 + i, [("h", b"%d" % i)]) for i in range(300)]
    produce(kafka_mock.bootstrap, "ev", 0, items)

    class Fast(bk._rdkc.Consumer):
        def take(self, n, timeout, whole, offs, *columns):
            taken, size, marked, events = super().take(n, timeout, whole, offs, *columns)
            if offs and offs[-1] >= 250:
                events = events + [("_TRANSPORT", "the broker went away", -1)]
            return taken, size, marked, events

    monkeypatch.setattr(bk._rdkc, "Consumer", Fast)
    monkeypatch.setattr(bk._FastReader, "chunk", 50)           # (takes of 50, batches of
    monkeypatch.setattr(bk.KafkaSource.batches, "__defaults__", (100,))    # 100)
    dst = str(tmp_path / "dst")
    with pytest.raises(BridgeError, match="the broker went away"):
        tidelog.bridge.ingest(kafka_mock.url("ev"), dst)
    with tidelog.open(dst, readonly=True) as log:
        assert 0 < log.end_offset <= 250
        for off in range(log.end_offset):
            rec = log.read(off)
            assert (bytes(rec.value), rec.timestamp) == (b"v%d" % off,
                                                         (1_600_000_000_000 + off) * 10**6)
            assert rec.headers == [("h", b"%d" % off), ("kafka-offset", b"%d" % off)]


def test_ingest_of_a_timestamp_beyond_a_records_range_is_a_one_line_error_naming_it(
        kafka_read, kafka_mock, tmp_path):
    """Kafka timestamps are int64 ms: ms * 10**6 fits a record's int64 ns only up to
    9223372036854 ms (2262) and down to -9223372036854. Those edges ingest exactly; one beyond
    them is a one-line error naming its offset and stamp, its batch not appended (was:
    "timestamps: expected a sequence of ints (ns since the epoch)", of no message)."""
    edge, over = 9_223_372_036_854, 9_223_372_036_855
    fits = [(None, b"v%d" % i, ms, None) for i, ms in enumerate([1, edge, -edge, -1])]
    produce(kafka_mock.bootstrap, "edge", 0, fits)
    r = cli("ingest", kafka_mock.url("edge"), tmp_path / "edge")
    assert r.returncode == 0, r.stderr
    with tidelog.open(str(tmp_path / "edge"), readonly=True) as log:
        got = [log.read(o).timestamp for o in range(log.end_offset)]
    assert got == [ms * 10**6 for _, _, ms, _ in fits]
    for topic, ms in (("over", over), ("under", -over), ("far", 2**62)):
        produce(kafka_mock.bootstrap, topic, 0,
                [(None, b"v%d" % i, ms if i == 3 else 1_600_000_000_000 + i, None)
                 for i in range(6)])
        dst = tmp_path / topic
        r = cli("ingest", kafka_mock.url(topic), dst)
        one_line_error(r, "kafka-offset 3", "stamped %d ns" % (ms * 10**6), "int64")
        with tidelog.open(str(dst), readonly=True) as log:
            assert log.end_offset == 0


def test_messages_without_a_timestamp_are_stamped_when_ingested(kafka_read, kafka_mock,
                                                                 tmp_path):
    """A message in Kafka's oldest format (v0, produced as to a 0.8 broker) has no timestamp
    (librdkafka: TIMESTAMP_NOT_AVAILABLE): its record is stamped with the ingest's time, on
    both read paths (was: the C loop's branch for it untested), the others keep theirs, and
    each message is in the log once with its value and position."""
    import logging
    import confluent_kafka as ck
    lg = logging.getLogger("kafkatest")
    old = ck.Producer({"bootstrap.servers": kafka_mock.bootstrap, "logger": lg,
                       "api.version.request": False, "broker.version.fallback": "0.8.2"})
    for i in range(3):
        old.produce("nots", b"old%d" % i, partition=0)
    assert old.flush(30) == 0
    produce(kafka_mock.bootstrap, "nots", 0, [(None, b"new", 1_600_000_000_123, [])])
    before = time.time_ns()
    assert tidelog.bridge.ingest(kafka_mock.url("nots"), str(tmp_path / "in")) == 4
    after = time.time_ns()
    with tidelog.open(str(tmp_path / "in"), readonly=True) as log:
        recs = [log.read(o) for o in range(4)]
    assert [bytes(r.value) for r in recs] == [b"old0", b"old1", b"old2", b"new"]
    assert [r.headers for r in recs] == [[("kafka-offset", b"%d" % i)] for i in range(4)]
    assert all(before <= r.timestamp <= after for r in recs[:3]), [r.timestamp for r in recs]
    assert recs[3].timestamp == 1_600_000_000_123 * 10**6
