"""Issue 15 on a second Kafka-protocol broker, Tansu (separate process, memory storage): what
the mock cluster cannot show. A missing topic stays missing without --create and CreateTopics
makes it with it; the kill -9 loops hold on a broker whose ListOffsets answer (the high
watermark) is wrong, so the resume must read to the end a fetch reports; and more data than the
mock keeps (> 5 MB in one partition) goes out and back in whole."""
import random

import tidelog
import tidelog.bridge

from bridgekit import CYCLES, cli, kafka_messages, kafka_read, kill_loop, tansu  # noqa: F401
from test_bridge_kafka import (expect_ingested, expect_mirrored, fill, one_line_error, produce,
                               source_items)

PER_CYCLE = 1000


def test_missing_topic_and_create(tansu, tmp_path):
    log_path = str(tmp_path / "log")
    with tidelog.open(log_path) as log:
        fill(log, 10, random.Random(1))
    one_line_error(cli("mirror", log_path, tansu.url("t")), "'t' does not exist", "--create")
    one_line_error(cli("ingest", tansu.url("t"), str(tmp_path / "in")), "'t' does not exist")
    assert kafka_messages(tansu.bootstrap, "t") == []
    one_line_error(cli("mirror", log_path, tansu.url("t")), "does not exist")   # still missing
    r = cli("mirror", log_path, tansu.url("t", 2), "--create")
    assert r.returncode == 0 and "mirrored 10 records" in r.stdout, r.stderr
    expect_mirrored(log_path, kafka_messages(tansu.bootstrap, "t", 2))


def test_mirror_exactly_once_under_kill_9(tansu, tmp_path):
    log_path = str(tmp_path / "log")
    rng = random.Random(55)
    log = tidelog.open(log_path)
    try:
        killed = kill_loop(["mirror", log_path, tansu.url("t"), "--create"],
                           lambda i: fill(log, PER_CYCLE, rng, start=i * PER_CYCLE))
    finally:
        log.close()
    assert killed >= CYCLES // 4, f"only {killed} runs were killed mid-way"
    expect_mirrored(log_path, kafka_messages(tansu.bootstrap, "t"))


def test_ingest_exactly_once_under_kill_9(kafka_read, tansu, tmp_path):
    log_path = str(tmp_path / "in")
    rng = random.Random(56)
    tidelog.open(str(tmp_path / "empty")).close()
    r = cli("mirror", str(tmp_path / "empty"), tansu.url("src"), "--create")   # the topic
    assert r.returncode == 0, r.stderr
    killed = kill_loop(["ingest", tansu.url("src"), log_path],
                       lambda i: produce(tansu.bootstrap, "src", 0,
                                         source_items(rng, i * 2000, 2000)))
    assert killed >= CYCLES // 4, f"only {killed} runs were killed mid-way"
    expect_ingested(log_path, kafka_messages(tansu.bootstrap, "src"))


def test_more_than_the_mock_keeps_round_trips(kafka_read, tansu, tmp_path):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    rng = random.Random(9)
    n = 2000
    with tidelog.open(src) as log:
        log.append_batch([rng.randbytes(4096) for _ in range(n)],
                         headers=[[("i", b"%d" % i)] for i in range(n)])
    assert tidelog.bridge.mirror(src, tansu.url("big"), create=True) == n
    assert tidelog.bridge.ingest(tansu.url("big"), dst) == n
    with tidelog.open(src, readonly=True) as a, tidelog.open(dst, readonly=True) as b:
        assert len(b) == n
        for off in range(n):
            assert bytes(a.read(off).value) == bytes(b.read(off).value)


def test_ingest_from_a_topic_deleted_and_made_again_is_refused(kafka_read, tansu, tmp_path):
    """100 messages ingested; the topic is deleted and made again with 10: the log's next
    position (100) is past the partition's end. One line and exit 2, nothing appended (it
    waited for ever: Tansu answers no OFFSET_OUT_OF_RANGE there)."""
    import confluent_kafka.admin as adm
    log_path = str(tmp_path / "in")
    ac = adm.AdminClient({"bootstrap.servers": tansu.bootstrap})
    ac.create_topics([adm.NewTopic("d", 1)])["d"].result()
    produce(tansu.bootstrap, "d", 0, source_items(random.Random(3), 0, 100))
    r = cli("ingest", tansu.url("d"), log_path)
    assert r.returncode == 0 and "ingested 100 records" in r.stdout, r.stderr
    ac.delete_topics(["d"], operation_timeout=10)["d"].result()
    ac.create_topics([adm.NewTopic("d", 1)])["d"].result()
    produce(tansu.bootstrap, "d", 0, source_items(random.Random(4), 0, 10))
    one_line_error(cli("ingest", tansu.url("d"), log_path, timeout=60),
                   "ends at offset 10, before offset 100", "made again")
    with tidelog.open(log_path, readonly=True) as log:
        assert log.end_offset == 100


def test_ingest_catching_up_when_the_broker_dies_is_one_error_not_a_wait_for_ever(
        kafka_read, tansu, tmp_path):
    """The broker killed while an ingest (not --follow) catches up: it ends with one
    BridgeError saying the cluster stopped answering (was: a wait for ever on both read
    paths), the log a gap-free prefix of the topic from offset 0."""
    import threading
    from tidelog.bridge.base import BridgeError
    n = 3000
    produce(tansu.bootstrap, "dies", 0,
            [(None, (b"%06d" % i) * 170, 1_600_000_000_000 + i, []) for i in range(n)])
    conf = tmp_path / "small.conf"
    # librdkafka (and the C loop's ring) hold about 1 MB ahead: most of the topic is still
    # on the broker when it dies
    conf.write_text("queued.max.messages.kbytes=1024\nqueued.min.messages=100\n"
                    "max.partition.fetch.bytes=65536\n")

    class KillAfterFirst:
        calls = 0

        def is_set(self):
            self.calls += 1
            if self.calls == 2:
                tansu.stop()
            return False

    dst = str(tmp_path / "dst")
    out = []

    def run():
        try:
            out.append(tidelog.bridge.ingest(tansu.url("dies"), dst, config=str(conf),
                                             stop=KillAfterFirst()))
        except BaseException as e:          # noqa: B036 (handed to the test's thread)
            out.append(e)
    # (a hang guard, not a speed check: the run ends within ~15 s; without the check it
    # never did)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(600)
    assert not t.is_alive(), "the ingest still waits, 600 s after the broker died"
    e = out[0]
    if not isinstance(e, BridgeError):
        raise AssertionError(f"ingest ended with {e!r} after the broker died")
    assert "stopped answering" in str(e), e
    assert "\n" not in str(e)
    with tidelog.open(dst, readonly=True) as log:
        k = log.end_offset
        assert 0 < k < n
        assert [bytes(log.read(o).value) for o in range(k)] == \
            [(b"%06d" % i) * 170 for i in range(k)]
