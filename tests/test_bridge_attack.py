"""Issue 15, attacked: cases where the bridges lost or duplicated records without a word
(a Kafka timestamp below one millisecond, a JetStream refusal in the middle of a batch, a target
whose retention deleted everything the mirror wrote, a log whose retention deleted every
ingested record). Real brokers: the nats-server and librdkafka mock cluster of bridgekit."""
import asyncio
import random
import time

import pytest

import tidelog
import tidelog.bridge

from bridgekit import (cli, kafka_messages, kafka_mock, kafka_produce_raw, kafka_read,  # noqa
                       nats_messages, nats_publish, nats_server)


def one_line_error(r, *words):
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tidelog: error: "), r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def add_stream(port, **cfg):
    import nats
    from nats.js.api import StreamConfig

    async def go():
        nc = await nats.connect(f"nats://127.0.0.1:{port}")
        await nc.jetstream().add_stream(StreamConfig(**cfg))
        await nc.close()
    asyncio.run(go())


def test_kafka_timestamps_below_a_millisecond_round_trip(kafka_read, kafka_mock, tmp_path):
    """librdkafka reads a produce timestamp of 0 as "now": a record stamped below 1 ms (logical
    clocks, seconds, tests) came out stamped with the wall clock."""
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    stamps = [0, 1, 999_999, 1_000_000, 5_000_123]
    with tidelog.open(src) as log:
        for ts in stamps:
            log.append(b"v", timestamp=ts, headers=[("h", b"1")] if ts % 2 else None)
    url = kafka_mock.url("ts")
    assert tidelog.bridge.mirror(src, url, create=True) == len(stamps)
    got = kafka_messages(kafka_mock.bootstrap, "ts")
    for (_, _, _, ms, h), ts in zip(got, stamps):
        if ts >= 10**6:
            assert ms == ts // 10**6
        else:
            assert ("tidelog-timestamp", b"%d" % ts) in h
    assert tidelog.bridge.ingest(url, dst) == len(stamps)
    with tidelog.open(src, readonly=True) as a, tidelog.open(dst, readonly=True) as b:
        for off in range(len(stamps)):
            x, y = a.read(off), b.read(off)
            assert y.timestamp == (x.timestamp // 10**6 * 10**6 if x.timestamp >= 10**6
                                   else x.timestamp)
            assert [(k, bytes(v)) for k, v in y.headers] == \
                [(k, bytes(v)) for k, v in (x.headers or [])] + \
                [("tidelog-offset", b"%d" % off), ("kafka-offset", b"%d" % off)]


def test_nats_refusal_in_the_middle_of_a_batch_leaves_no_gap(nats_server, tmp_path):
    """JetStream refuses one message of a batch (too large for the stream) and stores the ones
    published after it: the next run resumed after the last of those, and the refused record
    was silently lost (exit 0, "mirrored 0 records")."""
    add_stream(nats_server.port, name="B", subjects=["B"], max_msg_size=1000)
    log_path = str(tmp_path / "log")
    with tidelog.open(log_path) as log:
        for i in range(20):
            log.append(b"y" * (2000 if i == 5 else 10))
    one_line_error(cli("mirror", log_path, nats_server.url("B")), "offset 5")
    offs = [int(h["tidelog-offset"]) for _, _, h, _ in nats_messages(nats_server.port, "B")]
    assert offs == list(range(5))
    r = cli("mirror", log_path, nats_server.url("B"))         # still refused, never skipped
    one_line_error(r, "offset 5")
    offs = [int(h["tidelog-offset"]) for _, _, h, _ in nats_messages(nats_server.port, "B")]
    assert offs == list(range(5))


def test_nats_target_emptied_by_its_retention_is_refused(nats_server, tmp_path):
    """Every message the mirror wrote expired (max_age): the subject looked fresh and the
    mirror shipped the log again from offset 0 (duplicates for every reader)."""
    add_stream(nats_server.port, name="A", subjects=["A"], max_age=1.0)
    log_path = str(tmp_path / "log")
    with tidelog.open(log_path) as log:
        log.append_batch([b"z"] * 5)
    assert tidelog.bridge.mirror(log_path, nats_server.url("A")) == 5
    deadline = time.monotonic() + 20
    while nats_messages(nats_server.port, "A") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert nats_messages(nats_server.port, "A") == []
    with tidelog.open(log_path) as log:
        log.append_batch([b"w"] * 5)
    one_line_error(cli("mirror", log_path, nats_server.url("A")), "deleted")
    assert nats_messages(nats_server.port, "A") == []


def test_ingest_refuses_when_retention_deleted_every_ingested_record(nats_server, tmp_path):
    """Ingested records, then local records, then retention: no record left carries
    nats-sequence, and the ingester started the stream over (every message twice)."""
    nats_publish(nats_server.port, "I", "I", [(b"v%d" % i, None) for i in range(50)])
    log_path = str(tmp_path / "in")
    tidelog.open(log_path, segment_bytes=1 << 14).close()
    assert tidelog.bridge.ingest(nats_server.url("I"), log_path) == 50
    with tidelog.open(log_path) as log:
        log.append_batch([random.Random(1).randbytes(100) for _ in range(1000)])
        log.sync()
        log.truncate_before(log.end_offset - 10)
        assert log.start_offset >= 50
        end = log.end_offset
    one_line_error(cli("ingest", nats_server.url("I"), log_path), "nats-sequence")
    with tidelog.open(log_path, readonly=True) as log:
        assert log.end_offset == end


def test_nats_refusal_not_foreseen_by_size_leaves_no_gap(nats_server, tmp_path):
    """A refusal the mirror cannot foresee (max_bytes with discard=new: a large message does not
    fit, the small ones after it do): the messages stored after the refused one are deleted
    again, so the subject holds a prefix and the next run does not skip the refused record."""
    from nats.js.api import DiscardPolicy
    add_stream(nats_server.port, name="D", subjects=["D"], max_bytes=2000,
               discard=DiscardPolicy.NEW)
    log_path = str(tmp_path / "log")
    with tidelog.open(log_path) as log:
        for i in range(20):
            log.append(b"y" * (1600 if i == 5 else 10))
    one_line_error(cli("mirror", log_path, nats_server.url("D")), "offset 5")
    offs = [int(h["tidelog-offset"]) for _, _, h, _ in nats_messages(nats_server.port, "D")]
    assert offs == list(range(5))
    one_line_error(cli("mirror", log_path, nats_server.url("D")), "offset 5")


def test_ingest_of_another_source_into_the_same_log_is_refused(nats_server, tmp_path):
    """The position header says where in *a* source the log stopped, not which source: an
    ingest of stream B into a log that holds stream A's sequence 10 started B at 11, silently
    skipping B's first ten messages (under any --name)."""
    nats_publish(nats_server.port, "A", "A", [(b"a%d" % i, None) for i in range(10)])
    nats_publish(nats_server.port, "B", "B", [(b"b%d" % i, None) for i in range(30)])
    log_path = str(tmp_path / "in")
    assert tidelog.bridge.ingest(nats_server.url("A"), log_path) == 10
    for name in ("ingest", "other"):
        one_line_error(cli("ingest", nats_server.url("B"), log_path, "--name", name),
                       "another source")
    one_line_error(cli("ingest", nats_server.url("A", subject="A"), log_path), "another source")
    with tidelog.open(log_path, readonly=True) as log:
        assert log.end_offset == 10
    nats_publish(nats_server.port, "A", "A", [(b"a10", None)], create=False)
    assert tidelog.bridge.ingest(nats_server.url("A"), log_path, name="again") == 1
    # a log that never got a position may switch sources
    empty = str(tmp_path / "empty")
    nats_publish(nats_server.port, "E", "E", [])
    assert tidelog.bridge.ingest(nats_server.url("E"), empty) == 0
    assert tidelog.bridge.ingest(nats_server.url("B"), empty) == 30


def test_kafka_record_too_large_names_its_offset_and_leaves_a_prefix(kafka_mock, tmp_path):
    """A record above librdkafka's message.max.bytes: the run stopped with librdkafka's raw
    exception text (no offset, no hint); the records before it must be in the target, none
    after it, and the next run must stop at the same record."""
    log_path = str(tmp_path / "log")
    with tidelog.open(log_path) as log:
        for i in range(10):
            log.append(b"y" * (2_000_000 if i == 5 else 10))
    r = cli("mirror", log_path, kafka_mock.url("big"), "--create")
    one_line_error(r, "offset 5", "message.max.bytes")
    assert "KafkaError{" not in r.stderr
    got = kafka_messages(kafka_mock.bootstrap, "big")
    assert [int(dict(h)["tidelog-offset"]) for *_, h in got] == list(range(5))
    one_line_error(cli("mirror", log_path, kafka_mock.url("big")), "offset 5")


def test_two_mirrors_of_one_log_to_one_subject_under_different_names(nats_server, tmp_path):
    """The lock was per name only: a second mirror of the same log to the same subject under
    another --name started while the first idled in --follow, both shipped the next records,
    and every reader got them twice. Refused now (a lock per log and target)."""
    import signal
    import subprocess
    import sys
    log_path = str(tmp_path / "log")
    with tidelog.open(log_path) as log:
        log.append(b"first")
        p = subprocess.Popen([sys.executable, "-m", "tidelog", "mirror", log_path,
                              nats_server.url("T"), "--create", "--follow", "--name", "a"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    if len(nats_messages(nats_server.port, "T")) == 1:
                        break
                except Exception:
                    pass
                time.sleep(0.1)
            r = cli("mirror", log_path, nats_server.url("T"), "--name", "b")
            one_line_error(r, "another mirror of this log to")
            r = cli("mirror", log_path, nats_server.url("T2"), "--create", "--name", "b")
            assert r.returncode == 0, r.stderr          # another target: fine
        finally:
            p.send_signal(signal.SIGTERM)
            p.communicate(timeout=30)
    offs = [int(h["tidelog-offset"]) for _, _, h, _ in nats_messages(nats_server.port, "T")]
    assert offs == [0]


def test_ingest_after_kafka_retention_deleted_unread_messages(kafka_read, kafka_mock, tmp_path):
    """The mock cluster keeps ~5 MB per partition: 2,000 messages ingested, 8,000 more of 1 KB
    produced, and the partition starts past the log's last position. The ingest refuses (one
    line naming the deleted range and --skip-gap); --skip-gap goes on from the first offset
    the partition holds, once, with the gap where the deleted messages were."""
    from test_bridge_kafka import produce
    log_path = str(tmp_path / "in")
    item = [(None, b"z" * 1000, 1_600_000_000_000, [])]
    produce(kafka_mock.bootstrap, "r", 0, item * 2000)
    r = cli("ingest", kafka_mock.url("r"), log_path)
    assert r.returncode == 0 and "ingested 2000 records" in r.stdout, r.stderr
    for _ in range(4):
        produce(kafka_mock.bootstrap, "r", 0, item * 2000)
    first = kafka_messages(kafka_mock.bootstrap, "r")[0][0]
    assert first > 2000, "the mock kept everything: no gap to test"
    one_line_error(cli("ingest", kafka_mock.url("r"), log_path),
                   f"offsets 2000..{first - 1} were deleted", "--skip-gap")
    with tidelog.open(log_path, readonly=True) as log:
        assert log.end_offset == 2000                   # nothing appended by the refusal
    r = cli("ingest", kafka_mock.url("r"), log_path, "--skip-gap")
    assert r.returncode == 0 and f"ingested {10_000 - first} records" in r.stdout, r.stderr
    with tidelog.open(log_path, readonly=True) as log:
        offs = [int(dict(log.read(o).headers)["kafka-offset"]) for o in range(log.end_offset)]
    assert offs == list(range(2000)) + list(range(first, 10_000))


class _Source:
    """A source whose positions are given: what a broker that lost or re-made a partition in
    the middle of a run would hand out."""

    def __init__(self, batches):
        self.given = batches

    def batches(self, after, follow, stopping):
        from tidelog.bridge.base import Batch
        for ps in self.given:
            yield Batch(ps, [b"v%d" % p for p in ps], [None] * len(ps), [1] * len(ps),
                        [[("kafka-offset", b"%d" % p)] for p in ps])

    def close(self):
        pass


def test_ingest_refuses_positions_that_go_backwards_or_repeat(tmp_path):
    """In the middle of a run, a batch whose positions do not go on past the last appended one
    (back to 0 after a topic was re-made, a repeat, a step back inside a batch) is a
    BridgeError; what came before it stays in the log, nothing of it is appended."""
    import pytest
    from tidelog.bridge.base import BridgeError
    from tidelog.bridge.ingest import run_ingest
    cases = [([[0, 1, 2], [3, 4], [0, 1]], 5, "kafka-offset 0 came after kafka-offset 4"),
             ([[0, 1, 2], [2, 3]], 3, "kafka-offset 2 came after kafka-offset 2"),
             ([[5, 6], [7, 9, 8]], 2, "kafka-offset 8 came after kafka-offset 9")]
    for i, (given, kept, words) in enumerate(cases):
        path = str(tmp_path / f"l{i}")
        with pytest.raises(BridgeError, match=words):
            run_ingest(_Source(given), path, name="ingest", header="kafka-offset",
                       follow=False, resume=True, stopping=lambda: False)
        with tidelog.open(path, readonly=True) as log:
            assert log.end_offset == kept
    # and on resume: a source handing out the log's last position again
    path = str(tmp_path / "l0")
    with pytest.raises(BridgeError, match="kafka-offset 4 came after kafka-offset 4"):
        run_ingest(_Source([[4, 5]]), path, name="ingest", header="kafka-offset",
                   follow=False, resume=True, stopping=lambda: False)


def test_kafka_negative_timestamps_round_trip(kafka_read, kafka_mock, tmp_path):
    """A record stamped before the epoch (append takes any int64): the mirror keeps it in a
    tidelog-timestamp header (as for stamps below 1 ms), but the ingester took back only
    digits, so "-5" stayed a header and the record was stamped with the produce time."""
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    stamps = [-5, -1, -1_000_000_000, -(1 << 63), 0, 7]
    with tidelog.open(src) as log:
        for ts in stamps:
            log.append(b"v", timestamp=ts, headers=[("h", b"1")] if ts % 2 else None)
    url = kafka_mock.url("neg")
    assert tidelog.bridge.mirror(src, url, create=True) == len(stamps)
    assert tidelog.bridge.ingest(url, dst) == len(stamps)
    with tidelog.open(src, readonly=True) as a, tidelog.open(dst, readonly=True) as b:
        for off in range(len(stamps)):
            x, y = a.read(off), b.read(off)
            assert y.timestamp == x.timestamp, off
            assert [(k, bytes(v)) for k, v in y.headers] == \
                [(k, bytes(v)) for k, v in (x.headers or [])] + \
                [("tidelog-offset", b"%d" % off), ("kafka-offset", b"%d" % off)]


def test_kafka_record_too_large_after_many_in_flight_leaves_the_prefix(kafka_mock, tmp_path):
    """20,000 records in flight (the mirror no longer waits for acks per batch) and then one
    above message.max.bytes, in a log of several segments: every record before it is in the
    target, once, none after it; empty and null keys kept apart."""
    log_path = str(tmp_path / "log")
    n = 20_000
    with tidelog.open(log_path, segment_bytes=1 << 20) as log:
        for s in range(0, n, 1000):
            log.append_batch([b"%50d" % i for i in range(s, s + 1000)],
                             keys=[None if i % 3 == 0 else b"" if i % 3 == 1 else b"k"
                                   for i in range(s, s + 1000)])
        assert len(log.segments()) > 1
    with tidelog.open(log_path, segment_bytes=4 << 20) as log:
        log.append(b"y" * 2_000_000)
        log.append(b"after")
    r = cli("mirror", log_path, kafka_mock.url("bigafter"), "--create")
    one_line_error(r, f"offset {n}", "message.max.bytes")
    got = kafka_messages(kafka_mock.bootstrap, "bigafter")
    assert [int(dict(h)["tidelog-offset"]) for *_, h in got] == list(range(n))
    assert [(k, v) for _, k, v, _, _ in got] == \
        [(None if i % 3 == 0 else b"" if i % 3 == 1 else b"k", b"%50d" % i) for i in range(n)]


def test_kafka_ingest_of_odd_tidelog_timestamp_headers(kafka_read, kafka_mock, tmp_path):
    """Foreign messages carrying a tidelog-timestamp header whose digits are past int64 (or
    odd in other ways), among ordinary ones: each either gives the record its stamp or stays a
    header; none makes the ingest fail at the same message on every run (was: the digits were
    taken, and append_batch refused the batch's timestamps)."""
    from confluent_kafka import Producer
    odd = [b"9" * 30, b"9223372036854775808", b"-9223372036854775809", b"", b"-", b"--5",
           b"+5", b" 5", b"5\n", b"\xd9\xa3", b"0x10", None]
    import logging
    p = Producer({"bootstrap.servers": kafka_mock.bootstrap,
                  "logger": logging.getLogger("kafkatest")})
    for i, v in enumerate(odd):
        p.produce("odd", b"v%d" % i, partition=0, timestamp=1_600_000_000_000 + i,
                  headers=[("tidelog-timestamp", v)])
    p.produce("odd", b"ok", partition=0, timestamp=1_600_000_000_100,
              headers=[("tidelog-timestamp", b"-42")])
    p.flush(10)
    dst = str(tmp_path / "dst")
    assert tidelog.bridge.ingest(kafka_mock.url("odd"), dst) == len(odd) + 1
    with tidelog.open(dst, readonly=True) as log:
        for i, v in enumerate(odd):
            rec = log.read(i)
            assert rec.timestamp == (1_600_000_000_000 + i) * 10**6, (i, v)
            assert [(k, bytes(x)) for k, x in rec.headers] == \
                [("tidelog-timestamp", v or b""), ("kafka-offset", b"%d" % i)], (i, v)
        last = log.read(len(odd))
        assert last.timestamp == -42 and last.headers == [("kafka-offset", b"%d" % len(odd))]


def test_kafka_header_name_not_utf8_is_one_line_naming_its_offset(kafka_read, kafka_mock, tmp_path):
    """A Kafka header name is bytes on the wire; one that is not UTF-8 (a non-Java producer's)
    makes confluent-kafka's Message.headers() raise SystemError (was the error line:
    'SystemError: <method 'headers' ...> returned a result with an exception set', no offset).
    Ingest: one line naming the message's offset, nothing appended from its batch; a mirror
    to a topic whose last message is such: 'no tidelog-offset', as for any foreign one."""
    kafka_produce_raw(kafka_mock.bootstrap, "bad", 0,
                      [(b"v0", [(b"ok", b"1")]), (b"v1", [(b"x", None), (b"\xff\xfe", b"2")]),
                       (b"v2", [(b"ok", b"3")])])
    dst = str(tmp_path / "dst")
    one_line_error(cli("ingest", kafka_mock.url("bad"), dst), "offset 1", "not UTF-8")
    with tidelog.open(dst, readonly=True) as log:
        assert log.end_offset == 0
    src = str(tmp_path / "src")
    with tidelog.open(src) as log:
        log.append(b"r")
    one_line_error(cli("mirror", src, kafka_mock.url("bad")), "no tidelog-offset")
    import confluent_kafka as ck
    c = ck.Consumer({"bootstrap.servers": kafka_mock.bootstrap, "group.id": "t"})
    try:                                                    # the mirror produced nothing
        assert c.get_watermark_offsets(ck.TopicPartition("bad", 0), timeout=10) == (0, 3)
    finally:
        c.close()


GONE = """
import sys, threading, time
import tidelog, tidelog.bridge
import tidelog.bridge.kafka as kafka
kafka.ACK_TIMEOUT = 3.0                 # (the test's patience; 30 s in a run)
log_path, url, conf, pid = sys.argv[1:5]
sending = threading.Event()
send = kafka.KafkaTarget.send
def send_and_tell(self, batch):
    sending.set()
    send(self, batch)
kafka.KafkaTarget.send = send_and_tell
def kill_the_cluster():              # once the mirror produces
    import os, signal
    sending.wait()
    time.sleep(0.5)
    os.kill(int(pid), signal.SIGKILL)
threading.Thread(target=kill_the_cluster, daemon=True).start()
try:
    n = tidelog.bridge.mirror(log_path, url, create=True, config=conf)
    print("mirrored", n)
except tidelog.bridge.BridgeError as e:
    print("error", e)
"""


def test_kafka_cluster_gone_with_the_queue_full_is_an_error_not_a_hang(kafka_mock, tmp_path):
    """The cluster killed while librdkafka's queue is full (the mirror no longer waits for
    acks per batch; a small queue.buffering.max.kbytes fills at once): the mirror waited for
    room until message.timeout.ms expired every queued record (here 10 minutes; 5 by default),
    deaf to a stop, and then went on producing after the failures. It must stop with a
    BridgeError once nothing was acknowledged for ACK_TIMEOUT."""
    from conftest import run_python
    log_path = str(tmp_path / "log")
    with tidelog.open(log_path) as log:
        for s in range(0, 400_000, 50_000):
            log.append_batch([b"%100d" % i for i in range(s, s + 50_000)])
    conf = tmp_path / "k.conf"
    conf.write_text("queue.buffering.max.kbytes=256\nmessage.timeout.ms=600000\n")
    out = run_python(GONE, log_path, kafka_mock.url("gone"), conf, kafka_mock.proc.pid,
                     timeout=240, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("error "), out.stdout
    assert "restart resumes exactly once" in out.stdout, out.stdout


def test_kafka_mirror_killed_with_many_records_in_flight_tansu(tmp_path):
    """kill -9 of a mirror with up to tens of thousands of records in librdkafka's queue (it no
    longer waits for acks per batch), on Tansu, in a log of several segments: the partition
    holds a prefix each time, and the runs after it finish it exactly once."""
    from bridgekit import Tansu, kill_loop
    from test_bridge_kafka import expect_mirrored, fill
    t = Tansu()
    log_path = str(tmp_path / "log")
    rng = random.Random(77)
    log = tidelog.open(log_path, segment_bytes=4 << 20)
    try:
        def feed(i):
            for j in range(3):
                fill(log, 20_000, rng, start=i * 60_000 + j * 20_000)
        killed = kill_loop(["mirror", log_path, t.url("many"), "--create"], feed, cycles=6,
                           rng=random.Random(5), max_delay=0.8)
        assert len(log.segments()) > 1
        log.close()
        assert killed >= 2, f"only {killed} runs were killed mid-way"
        expect_mirrored(log_path, kafka_messages(t.bootstrap, "many"))
    finally:
        log.close()
        t.stop()


def _spawn(*args):
    import subprocess
    import sys
    return subprocess.Popen([sys.executable, "-m", "tidelog", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_kafka_mirror_sigterm_with_records_in_flight_tansu(tmp_path):
    """SIGTERM to a following mirror while it ships 200,000 records (many unacknowledged in
    librdkafka's queue): exit 0 only with every record it counts acknowledged (the partition
    holds exactly that prefix); and with the broker killed first, exit 2, one line."""
    import signal
    from bridgekit import Tansu
    for broker_dies in (False, True):
        t = Tansu()
        log_path = str(tmp_path / f"log{int(broker_dies)}")
        try:
            with tidelog.open(log_path) as log:
                log.append(b"first")
                log.sync()
                p = _spawn("mirror", log_path, t.url("term"), "--create", "--follow")
                try:
                    deadline = time.monotonic() + 30
                    while not kafka_messages(t.bootstrap, "term"):
                        assert time.monotonic() < deadline, "the mirror shipped nothing"
                        time.sleep(0.1)
                    for s in range(0, 200_000, 20_000):
                        log.append_batch([b"%60d" % i for i in range(s, s + 20_000)])
                    log.sync()
                    time.sleep(0.3)
                    if broker_dies:
                        t.stop()
                finally:
                    p.send_signal(signal.SIGTERM)
                    out, err = p.communicate(timeout=120)
            if broker_dies:
                one_line_error(type("R", (), {"returncode": p.returncode, "stderr": err})(),
                               "restart resumes exactly once")
                continue
            assert p.returncode == 0, err
            n = int(out.split()[1])
            got = kafka_messages(t.bootstrap, "term")
            assert len(got) == n, (len(got), n)
            offsets = [int(dict(h)["tidelog-offset"]) for *_, h in got]
            assert offsets == list(range(n))
            print("shipped before the stop:", n)
        finally:
            t.stop()


def test_kafka_ingest_of_mixed_sizes_and_nulls_is_whole_and_durable(kafka_read, kafka_mock, tmp_path):
    """Batch sizes now follow the last batch's mean value size: messages of 0 bytes, 1 byte and
    ~1 MB mixed, null values, null header values and tidelog-timestamp headers among them, read
    into a log the ingester opens, a Log of durability "none" passed in (its syncs are the
    ingester's), and in follow mode: every message once, in order, durable when ingest
    returns."""
    import threading
    from test_bridge_kafka import produce
    rng = random.Random(3)
    items = []
    for i in range(3000):
        r = rng.random()
        v = (None if r < 0.1 else b"" if r < 0.3 else b"x" if r < 0.5 else
             rng.randbytes(900_000) if r < 0.5012 else rng.randbytes(rng.randrange(2000)))
        hs = [("a", None), ("tidelog-timestamp", b"-%d" % i)] if i % 7 == 0 else \
            [("b", b"%d" % i)] if i % 2 else None
        items.append((b"k" if i % 5 else None, v, 1_600_000_000_000 + i, hs))
    assert sum(1 for it in items if it[1] is not None and len(it[1]) == 900_000) >= 2
    produce(kafka_mock.bootstrap, "mixed", 0, items)
    url = kafka_mock.url("mixed")

    def check(log):
        assert log.durable_offset == log.end_offset == len(items)
        for off, (key, v, ms, hs) in enumerate(items):
            rec = log.read(off)
            ts = -off if off % 7 == 0 else ms * 10**6
            want_h = ([("a", b"")] if off % 7 == 0 else [("b", b"%d" % off)] if off % 2
                      else []) + [("kafka-offset", b"%d" % off)]
            assert (bytes(rec.value), rec.key, rec.timestamp) == (v or b"", key, ts), off
            assert [(k, bytes(x)) for k, x in rec.headers] == want_h, off

    own = str(tmp_path / "own")
    assert tidelog.bridge.ingest(url, own) == len(items)
    with tidelog.open(own, readonly=True) as log:
        check(log)
    with tidelog.open(str(tmp_path / "none"), durability="none") as log:
        assert tidelog.bridge.ingest(url, log) == len(items)
        check(log)
    with tidelog.open(str(tmp_path / "follow")) as log:
        stop = threading.Event()
        th = threading.Thread(target=tidelog.bridge.ingest, args=(url, log),
                              kwargs={"follow": True, "stop": stop})
        th.start()
        deadline = time.monotonic() + 60
        while log.end_offset < len(items) and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        th.join(60)
        assert not th.is_alive()
        check(log)


def test_nats_negative_timestamps_round_trip(nats_server, tmp_path):
    """A record stamped before the epoch: the NATS mirror writes its stamp in the
    tidelog-timestamp header ("-5"), which the ingester refused as "not a timestamp in ns" -
    at the same message on every run, so nothing after it could be ingested."""
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    stamps = [-5, -(1 << 63), 0, 1_700_000_000_000_000_123]
    with tidelog.open(src) as log:
        for ts in stamps:
            log.append(b"v", timestamp=ts)
    url = nats_server.url("NEG")
    assert tidelog.bridge.mirror(src, url, create=True) == len(stamps)
    assert tidelog.bridge.ingest(url, dst) == len(stamps)
    with tidelog.open(dst, readonly=True) as b:
        assert [b.read(o).timestamp for o in range(len(stamps))] == stamps


CREATE_GONE = """
import os, signal, sys
import confluent_kafka as ck
import confluent_kafka.admin as admin
import tidelog, tidelog.bridge
log_path, url, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])

class Admin:                    # the cluster dies while CreateTopics times out
    def __init__(self, cfg):
        pass
    def create_topics(self, topics, **kw):
        os.kill(pid, signal.SIGKILL)
        class F:
            def result(self):
                raise ck.KafkaException(ck.KafkaError(ck.KafkaError._TIMED_OUT))
        return {t.topic: F() for t in topics}
admin.AdminClient = Admin
try:
    tidelog.bridge.mirror(log_path, url, create=True)
except tidelog.bridge.BridgeError as e:
    print("BridgeError", e)
"""


def test_kafka_cluster_gone_while_the_topic_is_made_is_a_bridge_error(kafka_mock, tmp_path):
    """CreateTopics timed out (what the mock cluster does) and the cluster died before the
    metadata request that makes the topic: librdkafka's raw KafkaException escaped (a traceback
    from the CLI), not a BridgeError."""
    from conftest import run_python
    log_path = str(tmp_path / "log")
    with tidelog.open(log_path) as log:
        log.append(b"x")
    out = run_python(CREATE_GONE, log_path, kafka_mock.url("made"), kafka_mock.proc.pid,
                     timeout=120, check=False)
    assert out.returncode == 0 and out.stdout.startswith("BridgeError"), out.stderr[-2000:]
    assert "cannot create topic 'made'" in out.stdout, out.stdout


def _pull_request(port, stream, act):
    """Wait (up to 10 s) for the next pull request an ingester sends for `stream`; then
    `await act(nc, consumer, inbox)` on a connection of its own."""
    import nats

    async def go():
        nc = await nats.connect(f"nats://127.0.0.1:{port}")
        sub = await nc.subscribe(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.*")
        req = await sub.next_msg(timeout=10)
        await act(nc, req.subject.rsplit(".", 1)[1], req.reply)
        await nc.flush()
        await nc.close()
    asyncio.run(go())


def _follow_ingest(nats_server, stream, log_path, n):
    """An `ingest --follow` of `stream` that ingested its first `n` messages."""
    from bridgekit import spawn_cli
    p = spawn_cli("ingest", nats_server.url(stream), log_path, "--follow")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with tidelog.open(log_path, readonly=True) as log:
                if log.durable_offset == n:
                    return p
        except Exception:
            pass
        time.sleep(0.05)
    p.kill()
    raise AssertionError("the ingester did not ingest the stream")


def _exit_of(p):
    try:
        p.wait(20)
    except Exception:
        p.kill()
        p.wait()
        raise AssertionError("the ingester went on") from None
    err = p.stderr.read().decode()
    p.stderr.close()
    return p.returncode, err


@pytest.mark.parametrize("reply", ["_INBOX.x.y", None])
def test_nats_ingest_refuses_a_message_not_from_its_consumer(nats_server, tmp_path, reply):
    """A message in the ingester's inbox that its consumer did not send (another client's; the
    server refuses a publish with a $JS.ACK reply subject, so it has no JetStream metadata):
    one line and exit 2 naming what is wrong, nothing appended, the next start goes on.
    (nats-py's fetch() left it to its metadata property: "NotJSMessageError: nats: not a
    JetStream message". The ingester now reads its pull requests' replies itself.)"""
    log_path = str(tmp_path / "in")
    nats_publish(nats_server.port, "Q", "Q", [(b"m%d" % i, None) for i in range(3)])
    p = _follow_ingest(nats_server, "Q", log_path, 3)

    async def forge(nc, consumer, inbox):
        await nc.publish(inbox, b"forged", reply=reply or "")
    _pull_request(nats_server.port, "Q", forge)
    code, err = _exit_of(p)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "without JetStream metadata" in err, err
    nats_publish(nats_server.port, "Q", "Q", [(b"m3", None)], create=False)
    assert tidelog.bridge.ingest(nats_server.url("Q"), log_path) == 1
    with tidelog.open(log_path, readonly=True) as log:
        assert [bytes(r.value) for r in log.cursor()] == [b"m0", b"m1", b"m2", b"m3"]
        assert [dict(r.headers)["nats-sequence"] for r in log.cursor()] == [b"1", b"2", b"3",
                                                                            b"4"]


def test_nats_reader_deleted_under_a_running_ingest(nats_server, tmp_path):
    """The ingester's consumer deleted on the server (by an operator, or a server that lost
    it): one line and exit 2, not an ingest that waits for ever (the server ends the waiting
    pull request with 409 Consumer Deleted and answers the next with 503); the next start
    goes on."""
    log_path = str(tmp_path / "in")
    nats_publish(nats_server.port, "C", "C", [(b"m%d" % i, None) for i in range(3)])
    p = _follow_ingest(nats_server, "C", log_path, 3)

    async def delete(nc, consumer, inbox):
        await nc.jetstream().delete_consumer("C", consumer)
    _pull_request(nats_server.port, "C", delete)
    code, err = _exit_of(p)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "NATS" in err, err
    nats_publish(nats_server.port, "C", "C", [(b"m3", None)], create=False)
    assert tidelog.bridge.ingest(nats_server.url("C"), log_path) == 1
    with tidelog.open(log_path, readonly=True) as log:
        assert [bytes(r.value) for r in log.cursor()] == [b"m0", b"m1", b"m2", b"m3"]


def test_the_ingesters_own_log_syncs_every_catch_up_sync_unless_it_follows(tmp_path,
                                                                          monkeypatch):
    """A log the ingester opens is synced by its flusher every CATCH_UP_SYNC (50 ms) while it
    catches up, every 5 ms (the log's default) when it follows; a Log the caller gives keeps
    its own setting; every record is durable when the run returns, either way."""
    import importlib
    bi = importlib.import_module("tidelog.bridge.ingest")
    opened = []
    real = tidelog.open

    def spy_open(p, **kw):
        lg = real(p, **kw)
        opened.append(lg.sync_interval)
        return lg
    monkeypatch.setattr(tidelog, "open", spy_open)

    def run(target, follow):
        assert bi.run_ingest(_Source([[0, 1], [2]]), target, name="ingest",
                             header="kafka-offset", follow=follow, resume=True,
                             stopping=lambda: False) == 3
    run(str(tmp_path / "a"), follow=False)
    run(str(tmp_path / "b"), follow=True)
    assert opened == [bi.CATCH_UP_SYNC, 0.005] and bi.CATCH_UP_SYNC == 0.05
    with real(str(tmp_path / "c"), sync_interval=0.25) as own:
        run(own, follow=False)
        assert own.sync_interval == 0.25 and len(opened) == 2
    for name in "abc":
        with real(str(tmp_path / name), readonly=True) as lg:
            assert lg.durable_offset == lg.end_offset == 3
