"""Issue 15 with NATS JetStream: `tidelog mirror` / `tidelog ingest` against a real nats-server
(-js) on a free port, exactly once across kill -9 at random moments, and the failures that must
give one line and exit 2."""
import base64
import random

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
