"""Issue 15 with NATS JetStream: `tidelog mirror` / `tidelog ingest` against a real nats-server
(-js) on a free port, exactly once across kill -9 at random moments, and the failures that must
give one line and exit 2."""
import base64
import random
import time

import pytest

import tidelog
import tidelog.bridge
from tidelog.bridge import nats as bnats
from tidelog.bridge.base import Batch, Message

from bridgekit import CYCLES, cli, kill_loop, nats_messages, nats_publish, nats_server  # noqa

PER_CYCLE = 1500


def fill(log, n, rng, start=0):
    vals = [rng.randbytes(rng.randrange(0, 300)) for _ in range(n)]
    keys = [None if i % 3 == 0 else b"k%d" % (i % 7) for i in range(start, start + n)]
    ts = [1_700_000_000_000_000_000 + (start + i) * 1_234_567 for i in range(n)]
    log.append_batch(vals, keys=keys, timestamps=ts)
    log.sync()


def expect_mirrored(log_path, got):
    """`got` (nats_messages) holds every record of the log exactly once, in order, intact."""
    with tidelog.open(log_path, readonly=True) as log:
        offsets = [int(h["tidelog-offset"]) for _, _, h, _ in got]
        dups = len(offsets) - len(set(offsets))
        assert dups == 0, f"{dups} duplicates"
        assert offsets == list(range(log.end_offset)), "missing or out of order"
        for (_, _, h, data), off in zip(got, offsets):
            rec = log.read(off)
            assert data == bytes(rec.value)
            assert int(h["tidelog-timestamp"]) == rec.timestamp
            key = base64.b64decode(h["tidelog-key"]) if "tidelog-key" in h else None
            assert key == rec.key


def test_mirror_exactly_once_under_kill_9(nats_server, tmp_path):
    log_path = str(tmp_path / "log")
    rng = random.Random(15)
    log = tidelog.open(log_path)

    def feed(i):
        fill(log, PER_CYCLE, rng, start=i * PER_CYCLE)
    try:
        killed = kill_loop(["mirror", log_path, nats_server.url("S"), "--create"], feed)
    finally:
        log.close()
    assert killed >= CYCLES // 4, f"only {killed} runs were killed mid-way"
    expect_mirrored(log_path, nats_messages(nats_server.port, "S"))


def test_negative_control_no_resume_duplicates(nats_server, tmp_path):
    """The loop above is able to see duplicates: skipping the resume check makes them."""
    log_path = str(tmp_path / "log")
    rng = random.Random(16)
    log = tidelog.open(log_path)
    try:
        kill_loop(["mirror", log_path, nats_server.url("S"), "--create", "--no-resume"],
                  lambda i: fill(log, 300, rng, start=i * 300), cycles=3, max_delay=30)
    finally:
        log.close()
    with pytest.raises(AssertionError, match="duplicates"):
        expect_mirrored(log_path, nats_messages(nats_server.port, "S"))


def test_mirror_subject_and_caught_up(nats_server, tmp_path):
    log_path = str(tmp_path / "log")
    with tidelog.open(log_path) as log:
        fill(log, 100, random.Random(1))
    r = cli("mirror", log_path, nats_server.url("S2", subject="logs.a"), "--create")
    assert r.returncode == 0, r.stderr
    assert "mirrored 100 records" in r.stdout
    r = cli("mirror", log_path, nats_server.url("S2", subject="logs.a"))
    assert r.returncode == 0 and "mirrored 0 records" in r.stdout, r.stderr
    got = nats_messages(nats_server.port, "S2")
    assert {s for _, s, _, _ in got} == {"logs.a"}
    expect_mirrored(log_path, got)


def one_line_error(r, *words):
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tidelog: error: "), r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_missing_stream_is_an_error_and_nothing_is_created(nats_server, tmp_path):
    log_path = str(tmp_path / "log")
    tidelog.open(log_path).close()
    one_line_error(cli("mirror", log_path, nats_server.url("NOPE")), "'NOPE'", "--create")
    one_line_error(cli("ingest", nats_server.url("NOPE"), str(tmp_path / "in")), "'NOPE'")
    r = cli("mirror", log_path, nats_server.url("OK"), "--create")
    assert r.returncode == 0, r.stderr
    with pytest.raises(Exception, match="stream not found"):
        nats_messages(nats_server.port, "NOPE")


def test_target_whose_last_message_is_foreign(nats_server, tmp_path):
    log_path = str(tmp_path / "log")
    with tidelog.open(log_path) as log:
        fill(log, 10, random.Random(2))
    nats_publish(nats_server.port, "F", "F", [(b"not from tidelog", None)])
    one_line_error(cli("mirror", log_path, nats_server.url("F")), "no tidelog-offset")


@pytest.mark.parametrize("value", ["\u00b2", "\u0661\u0662", "\u00e9"])
def test_target_whose_last_message_has_a_non_ascii_offset_header(nats_server, tmp_path, value):
    """A foreign last message whose tidelog-offset is not ASCII digits: 'no tidelog-offset',
    one line, as for one without the header. nats-py hands such a value (read back with the
    stream's last message) as an email Header object: it was an AttributeError (and as a str,
    a digit of another script passes str.isdigit)."""
    log_path = str(tmp_path / "log")
    with tidelog.open(log_path) as log:
        fill(log, 20, random.Random(2))
    nats_publish(nats_server.port, "F", "F", [(b"foreign", {"tidelog-offset": value})])
    one_line_error(cli("mirror", log_path, nats_server.url("F")), "no tidelog-offset")
    assert len(nats_messages(nats_server.port, "F")) == 1       # nothing was published


def test_someone_else_writes_between_read_and_first_publish(nats_server, tmp_path):
    """The first publish after a resume carries the expected last subject sequence: a message
    someone else stored after the mirror looked is refused, never silently interleaved."""
    nats_publish(nats_server.port, "X", "X", [])
    from tidelog.bridge.address import parse_address
    t = bnats.NatsTarget(parse_address(nats_server.url("X")), {}, False)
    try:
        assert t.last_offset() is None
        nats_publish(nats_server.port, "X", "X", [(b"intruder", {"tidelog-offset": "7"})],
                     create=False)
        with pytest.raises(tidelog.TidelogError, match="someone else wrote"):
            t.send(Batch.of([Message(0, b"v", None, 1, [])]))
    finally:
        t.close()
    assert [d for _, _, _, d in nats_messages(nats_server.port, "X")] == [b"intruder"]


def test_unreachable_and_malformed(tmp_path):
    from bridgekit import free_port
    log_path = str(tmp_path / "log")
    tidelog.open(log_path).close()
    one_line_error(cli("mirror", log_path, f"nats://127.0.0.1:{free_port()}/S", timeout=30),
                   "cannot connect")
    for bad, word in [("nats://127.0.0.1/S", "HOST:PORT"), ("nats://127.0.0.1:4222/", "stream"),
                      ("nats://127.0.0.1:4222/a.b", "stream"), ("ftp://x:1/S", "scheme"),
                      ("nats://127.0.0.1:4222/S?subject=a..b", "subject"),
                      ("nats://127.0.0.1:4222/S?x=1", "parameter")]:
        one_line_error(cli("mirror", log_path, bad), word)
    r = cli("mirror", log_path, "nats://user:hunter2@127.0.0.1:4222/S")
    one_line_error(r, "credentials")
    assert "hunter2" not in r.stderr


def test_second_mirror_with_the_same_name_is_refused(nats_server, tmp_path):
    log_path = str(tmp_path / "log")
    with tidelog.open(log_path) as log:
        fill(log, 10, random.Random(3))
    from tidelog.bridge.lock import BridgeLock
    with BridgeLock(log_path, "mirror", "m1"):
        one_line_error(cli("mirror", log_path, nats_server.url("L"), "--create", "--name", "m1"),
                       "another mirror named 'm1'")
        r = cli("mirror", log_path, nats_server.url("L"), "--create", "--name", "m2")
        assert r.returncode == 0, r.stderr


def test_encoding_round_trips_any_bytes():
    m = Message(5, b"\x00v", b"\xff\x00k", 123456789012345678,
                [("a", b"\x00\x01"), ("a", b"dup"), ("\u00e9 x", b"")])
    h = bnats.encode_headers(m)
    assert all(isinstance(v, str) and "\n" not in v and "\r" not in v for v in h.values())
    back = bnats.decode_message(9, m.value, h, 0)
    assert (back.key, back.timestamp) == (m.key, m.timestamp)
    assert back.headers == m.headers + [("tidelog-offset", b"5"), ("nats-sequence", b"9")]


# ------------------------------------------------------------------------------ ingest

def source_items(rng, start, n):
    """Messages a stream may hold: foreign ones (text headers, no key) and some written the
    way a mirror writes them (any key, headers and timestamp)."""
    out = []
    for i in range(start, start + n):
        data = rng.randbytes(rng.randrange(0, 200))
        if i % 2:
            out.append((data, {"h": f"v{i}", "z": "x y"}))
        else:
            m = Message(i, data, b"k%d" % (i % 5) if i % 4 else None, 10**18 + i,
                        [("bin", bytes([i % 256, 0])), ("bin", b"")])
            out.append((data, bnats.encode_headers(m)))
    return out


def expect_ingested(log_path, got):
    """The log holds every message of `got` (nats_messages) exactly once, in order, intact."""
    with tidelog.open(log_path, readonly=True) as log:
        recs = [log.read(o) for o in range(log.start_offset, log.end_offset)]
    seqs = [int(dict(r.headers)["nats-sequence"]) for r in recs]
    dups = len(seqs) - len(set(seqs))
    assert dups == 0, f"{dups} duplicates"
    assert seqs == [s for s, _, _, _ in got], "missing or out of order"
    for rec, (seq, _, h, data) in zip(recs, got):
        want = bnats.decode_message(seq, data, h, rec.timestamp)
        assert bytes(rec.value) == data
        assert rec.key == want.key
        assert [(k, bytes(v)) for k, v in rec.headers] == want.headers
        if "tidelog-timestamp" in h:
            assert rec.timestamp == int(h["tidelog-timestamp"])


def test_ingest_exactly_once_under_kill_9(nats_server, tmp_path):
    log_path = str(tmp_path / "in")
    rng = random.Random(25)
    per = 3000

    def feed(i):
        nats_publish(nats_server.port, "SRC", "src.a", source_items(rng, i * per, per),
                     create=i == 0)
    killed = kill_loop(["ingest", nats_server.url("SRC"), log_path], feed)
    assert killed >= CYCLES // 4, f"only {killed} runs were killed mid-way"
    expect_ingested(log_path, nats_messages(nats_server.port, "SRC"))


def test_ingest_resumes_a_log_whose_creation_was_killed(nats_server, tmp_path):
    """An ingester killed while it created its log (tidelog.lock made, tidelog.ctl not yet:
    the moment the kill -9 loop above once hit) leaves a directory the next run finishes
    making and ingests into; the bridge lock must not add a file there before the log exists
    (the log refuses a directory of foreign files)."""
    log_path = tmp_path / "in"
    log_path.mkdir()
    (log_path / "tidelog.lock").write_bytes(b"")
    nats_publish(nats_server.port, "SRC", "src.a", source_items(random.Random(27), 0, 30))
    r = cli("ingest", nats_server.url("SRC"), log_path)
    assert r.returncode == 0 and "ingested 30 records" in r.stdout, r.stderr
    expect_ingested(str(log_path), nats_messages(nats_server.port, "SRC"))


def test_ingest_negative_control_no_resume_duplicates(nats_server, tmp_path):
    log_path = str(tmp_path / "in")
    rng = random.Random(26)
    kill_loop(["ingest", nats_server.url("SRC"), log_path, "--no-resume"],
              lambda i: nats_publish(nats_server.port, "SRC", "src.a",
                                     source_items(rng, i * 300, 300), create=i == 0), cycles=3, max_delay=30)
    with pytest.raises(AssertionError, match="duplicates"):
        expect_ingested(log_path, nats_messages(nats_server.port, "SRC"))


def test_ingest_one_subject_of_a_stream(nats_server, tmp_path):
    nats_publish(nats_server.port, "M", "m.*", [], create=True)
    import asyncio
    import nats as natspy

    async def pub():
        nc = await natspy.connect(f"nats://127.0.0.1:{nats_server.port}")
        js = nc.jetstream()
        for i in range(50):
            await js.publish("m.a" if i % 2 else "m.b", b"%d" % i)
        await nc.close()
    asyncio.run(pub())
    r = cli("ingest", nats_server.url("M", subject="m.a"), str(tmp_path / "a"))
    assert r.returncode == 0 and "ingested 25 records" in r.stdout, r.stderr
    expect_ingested(str(tmp_path / "a"), nats_messages(nats_server.port, "M", "m.a"))
    r = cli("ingest", nats_server.url("M"), str(tmp_path / "all"))
    assert r.returncode == 0 and "ingested 50 records" in r.stdout, r.stderr



def stored_times(port, stream, n):
    """The time (ns since the epoch) JetStream stored with each of messages 1..n of a stream,
    as its STREAM.MSG.GET API states it (RFC 3339, nanosecond digits)."""
    import asyncio
    import calendar
    import json
    import nats as natspy

    async def go():
        nc = await natspy.connect(f"nats://127.0.0.1:{port}")
        out = []
        for seq in range(1, n + 1):
            r = await nc.request(f"$JS.API.STREAM.MSG.GET.{stream}",
                                 json.dumps({"seq": seq}).encode(), timeout=5)
            text = json.loads(r.data)["message"]["time"]          # 2026-12-01T14:20:01.12345Z
            whole, _, frac = text.rstrip("Z").partition(".")
            secs = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
            out.append(secs * 10**9 + int((frac + "000000000")[:9]))
        await nc.close()
        return out
    return asyncio.run(go())


def test_ingest_of_foreign_messages_keeps_jetstream_time_to_the_nanosecond(nats_server, tmp_path):
    """A message without tidelog-timestamp comes in with the time JetStream stored, whole: the
    nanoseconds of the consumer's metadata, not a datetime's microseconds."""
    nats_publish(nats_server.port, "T", "T", [(b"%d" % i, {"h": "v"} if i % 2 else None)
                                              for i in range(20)])
    log_path = str(tmp_path / "in")
    assert tidelog.bridge.ingest(nats_server.url("T"), log_path) == 20
    want = stored_times(nats_server.port, "T", 20)
    assert any(t % 1000 for t in want)          # else the test could not tell ns from us
    with tidelog.open(log_path, readonly=True) as log:
        assert [log.read(o).timestamp for o in range(20)] == want



def test_ingest_of_large_messages_keeps_what_the_server_sends_ahead_bounded(tmp_path):
    """Messages of 64 KiB from a server that drops a client with more than 8 MiB of messages
    not yet read (max_pending; 64 MiB by default): the ingester's pull requests ask for at most
    a few MiB ahead, whatever the message size, so the server never drops it as a slow
    consumer. (Pull requests of 1,000 messages each asked for 64 MB: at 64 KiB the default
    server dropped the connection while a batch was appended.)"""
    from bridgekit import NatsServer
    conf = tmp_path / "nats.conf"
    conf.write_text("max_pending: 8MB\n")
    srv = NatsServer(tmp_path / "nats", "-c", str(conf))
    try:
        rng = random.Random(3)
        values = [rng.randbytes(65536) for _ in range(400)]
        nats_publish(srv.port, "BIG", "BIG", [(v, None) for v in values])
        log_path = str(tmp_path / "in")
        assert tidelog.bridge.ingest(srv.url("BIG"), log_path) == 400
        with tidelog.open(log_path, readonly=True) as log:   # (nats_messages would be dropped)
            got = [(bytes(r.value), dict(r.headers)["nats-sequence"]) for r in log.cursor()]
        assert got == [(v, b"%d" % (i + 1)) for i, v in enumerate(values)]
    finally:
        srv.stop()


# ------------------------------------------------------------------------------ round trip

def test_round_trip_is_exact(nats_server, tmp_path):
    """log -> mirror -> stream -> ingest -> log: key, value, headers and timestamp come back
    equal, plus the position headers."""
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    rng = random.Random(7)
    with tidelog.open(src) as log:
        for i in range(500):
            hs = [] if i % 5 == 0 else [("a", rng.randbytes(i % 9)), ("a", b"\r\n:"),
                                        ("n\u00e4me", b"\xff")]
            log.append(rng.randbytes(i % 50), key=None if i % 3 == 0 else rng.randbytes(i % 4),
                       timestamp=rng.randrange(0, 1 << 62), headers=hs)
    assert tidelog.bridge.mirror(src, nats_server.url("RT"), create=True) == 500
    assert tidelog.bridge.ingest(nats_server.url("RT"), dst) == 500
    with tidelog.open(src, readonly=True) as a, tidelog.open(dst, readonly=True) as b:
        assert len(b) == len(a)
        for off in range(len(a)):
            x, y = a.read(off), b.read(off)
            assert (bytes(y.value), y.key, y.timestamp) == (bytes(x.value), x.key, x.timestamp)
            assert [(k, bytes(v)) for k, v in y.headers] == \
                [(k, bytes(v)) for k, v in x.headers] + [("tidelog-offset", b"%d" % off),
                                                         ("nats-sequence", b"%d" % (off + 1))]


def test_ingest_refuses_when_the_source_deleted_what_it_never_got(nats_server, tmp_path):
    import asyncio
    import nats as natspy
    log_path = str(tmp_path / "in")
    nats_publish(nats_server.port, "G", "G", [(b"%d" % i, None) for i in range(10)])
    assert tidelog.bridge.ingest(nats_server.url("G"), log_path) == 10

    async def purge_and_publish():
        nc = await natspy.connect(f"nats://127.0.0.1:{nats_server.port}")
        js = nc.jetstream()
        await js.publish("G", b"lost")
        await js.purge_stream("G")
        await js.publish("G", b"after")
        await nc.close()
    asyncio.run(purge_and_publish())
    one_line_error(cli("ingest", nats_server.url("G"), log_path), "11..11 were deleted")
    with tidelog.open(log_path, readonly=True) as log:
        assert len(log) == 10


@pytest.mark.parametrize("headers,word", [
    ({"tidelog-key": "not base64!"}, "tidelog-key"),
    ({"tidelog-timestamp": "--5"}, "tidelog-timestamp"),
    ({"tidelog-timestamp": "99999999999999999999"}, "tidelog-timestamp"),
    ({"tidelog-headers": "@@@"}, "tidelog-headers"),
    ({"tidelog-headers": "eyJhIjogMX0="}, "tidelog-headers"),             # {"a": 1}
    ({"tidelog-headers": "W1siYSIsIDFdXQ=="}, "tidelog-headers"),          # [["a", 1]]
    ({"tidelog-headers": "W1siYSIsICIhISJdXQ=="}, "tidelog-headers"),      # [["a", "!!"]]
])
def test_ingest_of_a_message_with_malformed_tidelog_headers(nats_server, tmp_path, headers, word):
    """A foreign message carrying tidelog-* headers that do not decode: one line naming the
    message and exit 2; the log holds at most the good message before it (a fetched batch is
    decoded before it is appended), nothing made up."""
    stream = "M" + str(abs(hash(word + str(headers))) % 10**8)
    nats_publish(nats_server.port, stream, stream, [(b"good", None), (b"bad", headers)])
    log_path = str(tmp_path / "in")
    r = cli("ingest", nats_server.url(stream), log_path, "--create")
    one_line_error(r, "malformed tidelog header")
    assert "message 2" in r.stderr, r.stderr
    with tidelog.open(log_path, readonly=True) as log:
        assert [bytes(rec.value) for rec in log.cursor()] in ([], [b"good"])
    decoded = bnats.decode_message(1, b"v", {"tidelog-key": "a2V5", "tidelog-timestamp": "7"}, 0)
    assert (decoded.key, decoded.timestamp) == (b"key", 7)


def _ingest_acting_after_the_first_batch(url, log_path, act, **kw):
    """tidelog.bridge.ingest(url, log_path, **kw) calling act(got) once, after its first batch
    of 1,000 (1001..2000 are then on the way), stopped by a watchdog after 60 s. Returns (the
    counts progress saw when act ran, the watchdog event, the ingest's result)."""
    import threading
    seen = []

    def progress(got):
        if not seen:
            seen.append(got)
            act(got)
    watchdog = threading.Event()
    timer = threading.Timer(60, watchdog.set)
    timer.start()
    try:
        n = tidelog.bridge.ingest(url, log_path, stop=watchdog, progress=progress, **kw)
    finally:
        timer.cancel()
    return seen, watchdog, n


def _deleted_after_the_first_batch_then_skipped(port, url, path, held, seq=2040):
    """Stream X holding sequences `held`: sequence `seq` deleted under an ingest (--follow)
    after its first batch (the first 2,000 then in hand) stops it naming `seq`, those 2,000
    ingested; --skip-gap then ingests the rest but `seq`."""
    async def delete_one(nc):
        await nc.jsm().delete_msg("X", seq)
    with pytest.raises(tidelog.bridge.BridgeError) as e:
        _ingest_acting_after_the_first_batch(url, path, lambda got: js_do(port, delete_one),
                                             follow=True)
    assert f"sequence {seq} was deleted before it was ingested;" in str(e.value), str(e.value)
    assert ingested_seqs(path) == held[:2000]
    r = cli("ingest", url, path, "--skip-gap")
    assert r.returncode == 0 and f"ingested {len(held) - 2001} records" in r.stdout, r.stderr
    assert ingested_seqs(path) == [s for s in held if s != seq]


def test_ingest_without_follow_ends_when_the_stream_tail_is_deleted_under_it(nats_server,
                                                                             tmp_path):
    """An ingest without --follow stops at the stream's end as of its start, told by the
    pending count of the last message it got. When the last messages are deleted after its
    reader was made but before they were sent, no message says 'nothing pending': the ingest
    must still end with what it got (it went on asking forever; here a watchdog's stop event
    ends it, and the test fails when that was needed)."""
    import asyncio
    import nats as natspy
    nats_publish(nats_server.port, "D", "D", [(b"%d" % i, None) for i in range(2050)])

    async def delete_tail():
        nc = await natspy.connect(f"nats://127.0.0.1:{nats_server.port}")
        for seq in range(2001, 2051):
            await nc.jsm().delete_msg("D", seq)
        await nc.close()
    deleted, watchdog, n = _ingest_acting_after_the_first_batch(
        nats_server.url("D"), str(tmp_path / "in"), lambda got: asyncio.run(delete_tail()))
    assert deleted == [1000]
    assert not watchdog.is_set(), "the ingest did not end by itself"
    assert n == 2000
    expect_ingested(str(tmp_path / "in"), nats_messages(nats_server.port, "D"))


def test_ingest_from_a_server_with_a_large_max_payload_keeps_what_it_sends_ahead_bounded(
        tmp_path):
    """A server whose max_payload is as large as its max_pending (8 MiB both): a pull request
    must have room for one message of max_payload, but two such requests outstanding asked the
    server to send up to twice its max_pending ahead; with messages of 256 KiB it dropped the
    ingester as a slow consumer while a batch was appended (exit 2 at every start)."""
    from bridgekit import NatsServer
    conf = tmp_path / "nats.conf"
    conf.write_text("max_payload: 8MB\nmax_pending: 8MB\n")
    srv = NatsServer(tmp_path / "nats", "-c", str(conf))
    try:
        rng = random.Random(4)
        values = [rng.randbytes(262144) for _ in range(400)]
        for k in range(0, len(values), 20):
            nats_publish(srv.port, "BIG", "BIG", [(v, None) for v in values[k:k + 20]],
                         create=k == 0)
        log_path = str(tmp_path / "in")
        r = cli("ingest", srv.url("BIG"), log_path, timeout=120)
        assert r.returncode == 0, r.stderr
        with tidelog.open(log_path, readonly=True) as log:
            got = [(bytes(r.value), dict(r.headers)["nats-sequence"]) for r in log.cursor()]
        assert got == [(v, b"%d" % (i + 1)) for i, v in enumerate(values)]
    finally:
        srv.stop()


def test_ingest_refuses_when_the_stream_is_purged_under_it(nats_server, tmp_path):
    """Messages purged from the stream after the reader was made, before they were sent: the
    reader's consumer sequences go on 1, 2, 3 (the server skips them), so only the stream
    sequences show the jump. Like at the start, a jump past the stream's first sequence is one
    error line naming the range (before, the ingest went on after the gap, silently)."""
    import asyncio
    import nats as natspy
    nats_publish(nats_server.port, "P", "P", [(b"%d" % i, None) for i in range(2050)])

    async def purge_and_publish():
        nc = await natspy.connect(f"nats://127.0.0.1:{nats_server.port}")
        await nc.jsm().purge_stream("P")
        await nc.jetstream().publish("P", b"after")
        await nc.close()
    log_path = str(tmp_path / "in")
    done = []

    def act(got):
        done.append(got)
        asyncio.run(purge_and_publish())
    with pytest.raises(tidelog.bridge.BridgeError, match="2001..2050 were deleted"):
        _ingest_acting_after_the_first_batch(nats_server.url("P"), log_path, act, follow=True)
    assert done == [1000]
    with tidelog.open(log_path, readonly=True) as log:
        assert [int(dict(log.read(o).headers)["nats-sequence"]) for o in range(len(log))] == \
            list(range(1, 2001))
    r = cli("ingest", nats_server.url("P"), log_path, "--skip-gap")
    assert r.returncode == 0 and "ingested 1 records" in r.stdout, r.stderr


# ------------------------------------------------------------- one subject: deleted, or not ours

def js_do(port, act, **stream):
    """Run `act(nc)` (a coroutine function) on a connection to the server, after making the
    stream `stream` (StreamConfig's fields) when given."""
    import asyncio
    import nats as natspy
    from nats.js.api import StreamConfig

    async def go():
        nc = await natspy.connect(f"nats://127.0.0.1:{port}")
        if stream:
            await nc.jsm().add_stream(StreamConfig(**stream))
        await act(nc)
        await nc.close()
    asyncio.run(go())


def publish(subjects):
    """An act for js_do publishing b'<i>' to subjects[i], in order, each acknowledged."""
    async def act(nc):
        js = nc.jetstream()
        for i, s in enumerate(subjects):
            await js.publish(s, b"%d" % i)
    return act


def purge(subject, then=()):
    """An act for js_do purging a subject's messages from stream M, then publishing `then`."""
    async def act(nc):
        await nc.jsm().purge_stream("M", subject=subject)
        await publish(then)(nc)
    return act


def ingested_seqs(log_path):
    with tidelog.open(log_path, readonly=True) as log:
        return [int(dict(r.headers)["nats-sequence"]) for r in log.cursor()]


def test_subject_ingest_refuses_its_subject_purged_before_the_start(nats_server, tmp_path):
    """A purge of the subject (purge with filter) between two runs: 5 messages of m.a never
    ingested are gone, the stream's first sequence unchanged. The next run refuses, naming
    where they were; --skip-gap goes on past them, the records after the gap exact. (The
    start-up check compared with the stream's first sequence only: the run went on, silently.)
    The other subject's messages in between, stored, are no gap: the first run read m.a's
    every other sequence without a word."""
    port, log_path = nats_server.port, str(tmp_path / "in")
    ab = ["m.b", "m.a"] * 5                                   # m.a at even sequences
    js_do(port, publish(ab), name="M", subjects=["m.*"])      # 1..10
    assert tidelog.bridge.ingest(nats_server.url("M", subject="m.a"), log_path) == 5
    js_do(port, publish(ab))                                  # 11..20, m.a's 12..20 lost
    js_do(port, purge("m.a", then=ab))                        # 21..30
    one_line_error(cli("ingest", nats_server.url("M", subject="m.a"), log_path),
                   "5 of sequences 12..20 were deleted before they were ingested",
                   "perhaps messages of subject 'm.a'", "--skip-gap")
    assert ingested_seqs(log_path) == [2, 4, 6, 8, 10]
    r = cli("ingest", nats_server.url("M", subject="m.a"), log_path, "--skip-gap")
    assert r.returncode == 0 and "ingested 5 records" in r.stdout, r.stderr
    assert ingested_seqs(log_path) == [2, 4, 6, 8, 10, 22, 24, 26, 28, 30]
    expect_ingested_tail(log_path, nats_messages(port, "M", "m.a"))


def expect_ingested_tail(log_path, got):
    """The log's last records are the messages `got` (nats_messages), intact."""
    with tidelog.open(log_path, readonly=True) as log:
        recs = list(log.cursor())[-len(got):]
    assert [(int(dict(r.headers)["nats-sequence"]), bytes(r.value)) for r in recs] == \
        [(seq, data) for seq, _, _, data in got]


def test_subject_ingest_of_a_stream_of_that_subject_only_names_the_loss(nats_server, tmp_path):
    """A stream capturing nothing but the subject, purged whole while the ingest runs (after
    its first batch): every deleted sequence was one of ours, and the error says so (no
    'perhaps'). (With ?subject= the run went on past them, silently: the check of the stream's
    first sequence under a running ingest was made without a subject only.)"""
    port, log_path = nats_server.port, str(tmp_path / "in")
    js_do(port, publish(["G"] * 2050), name="G", subjects=["G"])

    async def purge_all(nc):
        await nc.jsm().purge_stream("G")
        await publish(["G"])(nc)                              # 2051
    with pytest.raises(tidelog.bridge.BridgeError) as e:
        _ingest_acting_after_the_first_batch(nats_server.url("G", subject="G"), log_path,
                                             lambda got: js_do(port, purge_all), follow=True)
    assert "sequences 2001..2050 were deleted before they were ingested, messages of " \
        "subject 'G';" in str(e.value), str(e.value)
    assert ingested_seqs(log_path) == list(range(1, 2001))
    r = cli("ingest", nats_server.url("G", subject="G"), log_path, "--skip-gap")
    assert r.returncode == 0 and "ingested 1 records" in r.stdout, r.stderr
    assert ingested_seqs(log_path)[-2:] == [2000, 2051]


def test_subject_ingest_refuses_what_max_msgs_per_subject_trimmed(nats_server, tmp_path):
    """max_msgs_per_subject (5) trims m.a's messages 9..11 before the ingest read them: the
    other subject's older messages keep the stream's first sequence at 1, so only the interior
    deletes show it."""
    port, log_path = nats_server.port, str(tmp_path / "in")
    js_do(port, publish(["m.b"] * 3 + ["m.a"] * 5), name="M", subjects=["m.*"],
          max_msgs_per_subject=5)                             # m.b 1..3, m.a 4..8
    assert tidelog.bridge.ingest(nats_server.url("M", subject="m.a"), log_path) == 5
    js_do(port, publish(["m.a"] * 8))                         # 9..16: m.a keeps 12..16
    one_line_error(cli("ingest", nats_server.url("M", subject="m.a"), log_path),
                   "sequences 9..11 were deleted before they were ingested")
    r = cli("ingest", nats_server.url("M", subject="m.a"), log_path, "--skip-gap")
    assert r.returncode == 0 and "ingested 5 records" in r.stdout, r.stderr
    assert ingested_seqs(log_path) == list(range(4, 9)) + list(range(12, 17))


def test_subject_ingest_refuses_its_subject_purged_under_it(nats_server, tmp_path):
    """A purge of the subject while the ingest runs (after its first batch of 1,000 m.a
    messages, the next 1,000 on the way): the reader skips the 50 purged ones with nothing
    in its consumer sequences, and the other subject's messages make every batch jump. The
    jump over the purged ones is one error naming them, before anything after it is
    appended (the ingest went on with the message published after the purge, silently)."""
    port, log_path = nats_server.port, str(tmp_path / "in")
    js_do(port, publish(["m.b", "m.a"] * 2050), name="M", subjects=["m.*"])   # m.a: 2..4100
    done = []

    def act(got):
        done.append(got)
        js_do(port, purge("m.a", then=["m.a"]))                                # 4101
    with pytest.raises(tidelog.bridge.BridgeError,
                       match=r"50 of sequences 4002\.\.4100 were deleted"):
        _ingest_acting_after_the_first_batch(nats_server.url("M", subject="m.a"), log_path,
                                             act, follow=True)
    assert done == [1000]
    assert ingested_seqs(log_path) == list(range(2, 4001, 2))
    r = cli("ingest", nats_server.url("M", subject="m.a"), log_path, "--skip-gap")
    assert r.returncode == 0 and "ingested 1 records" in r.stdout, r.stderr
    assert ingested_seqs(log_path)[-2:] == [4000, 4101]


def test_subject_ingest_of_interleaved_subjects_with_deletions_elsewhere(nats_server, tmp_path):
    """No false alarm: m.a's messages between m.b's (stored: not a gap), while the stream has
    deleted sequences where they cannot be a loss of m.a's: m.b's and m.a's messages the log
    already holds (purged after they were ingested), and the stream's first sequence past
    them; resumed twice, mid-stream and at its end, and in batches of 1,000 that jump."""
    port, log_path = nats_server.port, str(tmp_path / "in")
    url = nats_server.url("M", subject="m.a")
    js_do(port, publish(["m.a", "m.b", "m.b"] * 1500), name="M", subjects=["m.*"])
    assert tidelog.bridge.ingest(url, log_path) == 1500       # m.a: 1, 4, ..., 4498

    async def act(nc):
        jsm = nc.jsm()
        await jsm.delete_msg("M", 4)                          # m.a's, ingested
        await jsm.delete_msg("M", 3000)                       # m.b's, before m.a's last one
        await jsm.delete_msg("M", 4498)                       # m.a's last one, ingested
        await publish(["m.b", "m.a"] * 1500)(nc)              # 4501..7500
    js_do(port, act)
    assert tidelog.bridge.ingest(url, log_path) == 1500
    js_do(port, purge("m.b", then=["m.b", "m.a"] * 10))       # 7501..7520, m.b's all gone
    assert tidelog.bridge.ingest(url, log_path) == 10
    js_do(port, purge("m.a", then=["m.b", "m.a"] * 10))       # 7521..7540, the first past all
    assert tidelog.bridge.ingest(url, log_path) == 10
    want = (list(range(1, 4500, 3)) + list(range(4502, 7501, 2)) + list(range(7502, 7521, 2))
            + list(range(7522, 7541, 2)))
    assert ingested_seqs(log_path) == want


def test_subject_ingest_cannot_tell_a_deleted_message_of_another_subject(nats_server, tmp_path):
    """The limit, stated: a message of the other subject deleted between two of ours leaves a
    deleted sequence the reader skipped, and JetStream keeps no subject for it, so it is
    refused as a possible loss ('perhaps'), and --skip-gap goes on (the records exact)."""
    port, log_path = nats_server.port, str(tmp_path / "in")
    url = nats_server.url("M", subject="m.a")
    js_do(port, publish(["m.a", "m.b", "m.a"]), name="M", subjects=["m.*"])
    assert tidelog.bridge.ingest(url, log_path) == 2                    # 1, 3

    async def act(nc):
        await publish(["m.b", "m.a"])(nc)                               # 4, 5
        await nc.jsm().delete_msg("M", 4)
    js_do(port, act)
    one_line_error(cli("ingest", url, log_path),
                   "sequence 4 was deleted before it was ingested, perhaps a message of "
                   "subject 'm.a' (JetStream keeps no subject for a deleted message)")
    r = cli("ingest", url, log_path, "--skip-gap")
    assert r.returncode == 0 and "ingested 1 records" in r.stdout, r.stderr
    assert ingested_seqs(log_path) == [1, 3, 5]


# ------------------------------------------------------------- no subject: interior deletes

def test_ingest_refuses_interior_deletes_of_the_whole_stream(nats_server, tmp_path):
    """Without ?subject= every sequence is the ingest's. A purge of one subject of a
    multi-subject stream, or a message deleted, after the log's last record leaves the stream's
    first sequence where it was: only the interior deletes show the loss. Refused at the start
    and under a running ingest (one line naming the sequences, no subject), --skip-gap goes on
    past them; the records after the gap exact. (Both were a silent gap: only the stream's
    first sequence was compared.)"""
    port, log_path = nats_server.port, str(tmp_path / "in")
    url = nats_server.url("W")
    js_do(port, publish(["w.a", "w.b"] * 3), name="W", subjects=["w.*"])     # 1..6
    assert tidelog.bridge.ingest(url, log_path) == 6
    js_do(port, publish(["w.a", "w.b"] * 3))                                  # 7..12

    async def purge_b(nc):
        await nc.jsm().purge_stream("W", subject="w.b")                       # 8, 10, 12 (and
        await nc.jsm().delete_msg("W", 9)                                     # 2, 4, 6) and 9
        await publish(["w.a"])(nc)                                            # 13
    js_do(port, purge_b)
    one_line_error(cli("ingest", url, log_path), "4 of sequences 8..12 were deleted before "
                   "they were ingested;", "--skip-gap")
    assert ingested_seqs(log_path) == list(range(1, 7))
    r = cli("ingest", url, log_path, "--skip-gap")
    assert r.returncode == 0 and "ingested 3 records" in r.stdout, r.stderr
    assert ingested_seqs(log_path) == list(range(1, 8)) + [11, 13]

    # under a running ingest: after its first batch, a message it has not asked for yet is
    # deleted (two pull requests of 1,000 are out at a time: past 2,000)
    big = str(tmp_path / "big")
    js_do(port, publish(["x"] * 2050), name="X", subjects=["x"])
    _deleted_after_the_first_batch_then_skipped(port, nats_server.url("X"), big,
                                                list(range(1, 2051)))


# ------------------------------------------------------------- follow: others' messages trimmed

def _following(url, log_path):
    """An ingest with follow running in a thread: (wait_for(n): block until progress saw n
    records, stop(): end it and return its result or raise its error)."""
    import threading
    stop, seen, cond, out = threading.Event(), [0], threading.Condition(), []

    def progress(got):
        with cond:
            seen[0] = got
            cond.notify_all()

    def run():
        try:
            out.append(tidelog.bridge.ingest(url, log_path, follow=True, stop=stop,
                                             progress=progress))
        except BaseException as e:                  # handed to stop()
            out.append(e)
        with cond:
            cond.notify_all()
    t = threading.Thread(target=run)
    t.start()

    def wait_for(n):
        with cond:
            assert cond.wait_for(lambda: seen[0] >= n or out, 60), "no progress in 60 s"
        if out and isinstance(out[0], BaseException):
            stop.set()
            raise out[0]

    def end():
        stop.set()
        t.join(60)
        assert not t.is_alive()
        if isinstance(out[0], BaseException):
            raise out[0]
        return out[0]
    return wait_for, end


@pytest.mark.parametrize("subject", ["m.a", "m.*", "m.>"])
def test_following_a_quiet_subject_while_the_stream_trims_others(nats_server, tmp_path,
                                                                  subject):
    """A subject ingest with follow, its subject quiet while another subject's messages come
    and go (max_msgs trims the oldest): those the ingest waited past while the stream held them
    are not its own, and their removal later is no gap. (It was refused as a possible loss,
    'perhaps', at the next message of the subject: a long-running ingest of a quiet subject of
    a busy stream with limits died with exit 2.) The subject as itself and with wildcards
    (STREAM.MSG.GET's next_by_subj takes them)."""
    port, log_path = nats_server.port, str(tmp_path / "in")
    js_do(port, publish(["m.a"]), name="M", subjects=["m.*", "n.*"], max_msgs=12)  # 1
    wait_for, end = _following(nats_server.url("M", subject=subject), log_path)
    try:
        wait_for(1)
        js_do(port, publish(["n.b"] * 10))          # 2..11, held while the ingest waits
        time.sleep(4)                               # ... a few empty pulls
        js_do(port, publish(["n.b"] * 10 + ["m.a"]))  # 12..22: 1..10 trimmed
        wait_for(2)
    finally:
        n = end()
    assert n == 2
    assert ingested_seqs(log_path) == [1, 22]


def test_new_ingest_of_a_stream_with_deleted_values_like_a_kv_bucket(nats_server, tmp_path):
    """A new ingest starts from what the stream holds: the interior sequences a KV-style stream
    (max_msgs_per_subject=1) deleted before it began were never due, like those below its first
    sequence; a sequence deleted after it began is still refused, naming that one only. (The
    first batch was refused, naming the old values: a new ingest of a KV bucket, with or
    without ?subject=, failed unless --skip-gap, which then hid any later gap of the run.)"""
    port, log_path = nats_server.port, str(tmp_path / "in")
    keys = ["x.b", "x.a", "x.a"] + ["x.%d" % i for i in range(2050)]   # 2 deleted (x.a's old)
    js_do(port, publish(keys), name="X", subjects=["x.*"], max_msgs_per_subject=1)
    held = [1] + list(range(3, 2054))
    _deleted_after_the_first_batch_then_skipped(port, nats_server.url("X"), log_path, held)

    sub = str(tmp_path / "sub")                 # with a subject: the same
    assert tidelog.bridge.ingest(nats_server.url("X", subject="x.>"), sub) == len(held) - 1
    assert ingested_seqs(sub) == [s for s in held if s != 2040]


def test_following_a_subject_as_a_user_not_allowed_to_get_messages(tmp_path, monkeypatch):
    """A user allowed what an ingest reads with (stream info, a consumer, its pull requests),
    not STREAM.MSG.GET: following a subject, the check made while nothing comes (see the test
    above) gets no answer, and the ingest goes on without it (it ended with exit 2 at the first
    pause, 'reading the stream's state: TimeoutError')."""
    from bridgekit import NatsServer
    monkeypatch.setattr(bnats, "ACK_TIMEOUT", 2.0)
    api = "$JS.API"
    conf = tmp_path / "nats.conf"
    conf.write_text(
        'authorization { users = [ {user: admin, password: a}, {user: r, password: r, '
        'permissions: { publish: { allow: ["%s.STREAM.INFO.M", "%s.CONSUMER.CREATE.M.>", '
        '"%s.CONSUMER.CREATE.M", "%s.CONSUMER.MSG.NEXT.M.>", "%s.CONSUMER.INFO.M.>", '
        '"%s.INFO"] }, subscribe: { allow: ["_INBOX.>"] } } } ] }\n' % ((api,) * 6))
    srv = NatsServer(tmp_path / "nats", "-c", str(conf))
    try:
        import asyncio
        import nats as natspy
        from nats.js.api import StreamConfig

        def admin(subjects, create=False):
            async def go():
                nc = await natspy.connect(f"nats://admin:a@127.0.0.1:{srv.port}")
                if create:
                    await nc.jsm().add_stream(StreamConfig(name="M", subjects=["m.*", "n.*"]))
                await publish(subjects)(nc)
                await nc.close()
            asyncio.run(go())
        admin(["m.a"], create=True)                                       # 1
        monkeypatch.setenv("TIDELOG_NATS_USER", "r")
        monkeypatch.setenv("TIDELOG_NATS_PASSWORD", "r")
        log_path = str(tmp_path / "in")
        wait_for, end = _following(srv.url("M", subject="m.a"), log_path)
        try:
            wait_for(1)
            admin(["n.b"] * 3)                                            # 2..4
            time.sleep(6)                                                 # pauses, no answers
            admin(["m.a"])                                                # 5
            wait_for(2)
        finally:
            n = end()
    finally:
        srv.stop()
    assert n == 2
    assert ingested_seqs(log_path) == [1, 5]
