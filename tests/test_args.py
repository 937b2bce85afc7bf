"""Argument checking across the public API: any integer (numpy's too) where an offset, count or
timestamp is taken, never a bool; huge, infinite or nan numbers get a ValueError naming the
argument at the call (not an OverflowError, a struct.error later, or a wait that returns at
once); a missing log is a TidelogError that is also a FileNotFoundError."""

import math

import numpy as np
import pytest

import tidelog

HUGE = 2 ** 70


class Counter:
    def __init__(self):
        self.n = 0

    def apply(self, record):
        self.n += 1

    def snapshot(self):
        return str(self.n).encode()

    def restore(self, snapshot):
        self.n = int(snapshot)


@pytest.fixture
def filled(log):
    for i in range(10):
        log.append(b"v%d" % i, timestamp=1000 + i)
    log.sync()
    return log


def raises_naming(exc, name):
    return pytest.raises(exc, match=rf"^{name}\b")


# -- numpy integers are offsets and counts like any int (item 18)

@pytest.mark.parametrize("kind", [np.int64, np.int32, np.uint64, np.uint8])
def test_numpy_integers_as_offsets(filled, kind):
    log = filled
    batch = log.cursor(0).read_batch(5)
    assert log.read(batch.offsets[-1]).offset == 4
    assert bytes(log.read(kind(3)).value) == b"v3"
    cur = log.cursor(kind(2))
    assert cur.position == 2
    cur.seek(kind(7))
    assert next(cur).offset == 7
    cur.seek_time(np.int64(1005))
    assert cur.position == 5
    cur.seek_time(batch.timestamps[1])
    assert cur.position == 1
    assert log.offset_for_time(np.int64(1009)) == 9
    assert log.wait_durable(kind(3), timeout=np.float64(0.0)) is True
    assert log.wait_durable(kind(3), timeout=np.int64(1)) is True
    b = log.cursor(0).read_batch(kind(3), max_bytes=kind(100))
    assert list(b.offsets) == [0, 1, 2]
    assert log.truncate_before(kind(0)) == 0


def test_numpy_integers_in_positions_and_replay(filled):
    log = filled
    cur = log.cursor(name="sub")
    assert cur.commit(np.int64(4)) == 4
    assert log.positions()["sub"] == 4
    log.set_position("sub", np.int32(6))
    assert log.positions()["sub"] == 6
    rep = tidelog.Replayer(log, Counter(), name="rep", checkpoint_every=np.int64(3),
                           checkpoint_interval=np.float64(5.0), digest_history=np.int64(4))
    assert rep.checkpoint_every == 3 and type(rep.checkpoint_every) is int
    assert rep.run(until=np.int64(7)) == 7
    assert rep.run() == 10
    report = tidelog.verify_determinism(log, Counter, until=np.int64(8),
                                        checkpoint_every=np.int64(2))
    assert report.deterministic


def test_numpy_integers_in_open_and_append(tmp_path):
    with tidelog.open(str(tmp_path / "a"), segment_bytes=np.int64(1 << 16),
                      retain_bytes=np.int64(1 << 20), retain_seconds=np.float32(3600),
                      sync_interval=np.float64(0.01)) as log:
        assert log.append(b"x", timestamp=np.int64(12345)) == 0
        assert log.read(0).timestamp == 12345
        assert log.segment_bytes == 1 << 16


def test_numpy_integers_in_follow(filled):
    got = [r.offset for r in filled.cursor(np.int64(8)).follow(timeout=np.float64(0.0),
                                                               spin=np.float64(0.0))]
    assert got == [8, 9]
    batches = list(filled.cursor(0).follow_batches(timeout=0, max_records=np.int32(4),
                                                   max_bytes=np.int64(1000)))
    assert [len(b) for b in batches] == [4, 4, 2]


# -- bool is not an int here (item 19: read(True) returned record 1)

def test_bool_is_refused_everywhere(filled):
    log = filled
    with raises_naming(TypeError, "offset"):
        log.read(True)
    with raises_naming(TypeError, "offset"):
        log.read(np.bool_(True))
    with raises_naming(TypeError, "start"):
        log.cursor(True)
    cur = log.cursor(0)
    with raises_naming(TypeError, "offset"):
        cur.seek(False)
    with raises_naming(TypeError, "timestamp_ns"):
        cur.seek_time(True)
    with raises_naming(TypeError, "timestamp"):
        log.offset_for_time(True)
    with raises_naming(TypeError, "max_records"):
        cur.read_batch(True)
    with raises_naming(TypeError, "max_bytes"):
        cur.read_batch(10, max_bytes=True)
    with raises_naming(TypeError, "timeout"):
        cur.wait(timeout=True)
    with raises_naming(TypeError, "offset"):
        log.wait_durable(True)
    with raises_naming(TypeError, "timeout"):
        log.wait_durable(0, timeout=False)
    with raises_naming(TypeError, "offset"):
        log.truncate_before(True)
    with raises_naming(TypeError, "offset"):
        log.cursor(name="s").commit(True)
    with raises_naming(TypeError, "offset"):
        log.set_position("s", True)
    with raises_naming(TypeError, "timestamp"):
        log.append(b"x", timestamp=True)
    with raises_naming(TypeError, "checkpoint_every"):
        tidelog.Replayer(log, Counter(), name="r", checkpoint_every=True)
    with raises_naming(TypeError, "until"):
        tidelog.Replayer(log, Counter(), name="r").run(until=True)
    assert log.end_offset == 10


def test_bool_and_odd_types_refused_by_open(tmp_path):
    p = str(tmp_path / "b")
    with raises_naming(TypeError, "segment_bytes"):
        tidelog.open(p, segment_bytes=True)
    with raises_naming(TypeError, "sync_interval"):
        tidelog.open(p, sync_interval=True)
    with raises_naming(TypeError, "sync_interval"):
        tidelog.open(p, sync_interval="0.1")
    with raises_naming(TypeError, "retain_bytes"):
        tidelog.open(p, retain_bytes=1.5)


# -- huge, infinite and nan numbers: ValueError naming the argument, at the call (item 19)

@pytest.mark.parametrize("kw,name", [
    (dict(sync_interval=math.inf), "sync_interval"),
    (dict(sync_interval=math.nan), "sync_interval"),
    (dict(sync_interval=1e300), "sync_interval"),
    (dict(sync_interval=HUGE ** 20), "sync_interval"),     # too large for a float
    (dict(retain_seconds=1e12), "retain_seconds"),
    (dict(retain_seconds=math.inf), "retain_seconds"),
    (dict(retain_seconds=math.nan), "retain_seconds"),
    (dict(retain_bytes=HUGE), "retain_bytes"),
    (dict(segment_bytes=HUGE), "segment_bytes"),
])
def test_open_refuses_huge_numbers(tmp_path, kw, name):
    p = tmp_path / "h"
    with raises_naming(ValueError, name):
        tidelog.open(str(p), **kw)
    assert not p.exists()


def test_cursor_and_log_refuse_huge_numbers(filled):
    log = filled
    cur = log.cursor(0)
    with raises_naming(ValueError, "max_records"):
        cur.read_batch(HUGE)
    with raises_naming(ValueError, "max_records"):
        cur.read_batch(0)
    with raises_naming(ValueError, "max_bytes"):
        cur.read_batch(10, max_bytes=HUGE)
    with raises_naming(ValueError, "offset"):
        log.wait_durable(HUGE)
    with raises_naming(ValueError, "offset"):
        log.wait_durable(-HUGE)
    with raises_naming(ValueError, "offset"):
        log.truncate_before(HUGE)
    with raises_naming(ValueError, "offset"):
        log.truncate_before(-HUGE)
    with raises_naming(ValueError, "offset"):
        log.cursor(name="s").commit(HUGE)
    with raises_naming(ValueError, "offset"):
        log.set_position("s", HUGE)
    with raises_naming(ValueError, "timestamp_ns"):
        cur.seek_time(HUGE)
    with pytest.raises(tidelog.OffsetOutOfRangeError):       # an offset outside the log
        log.read(HUGE)
    with pytest.raises(tidelog.OffsetOutOfRangeError):
        cur.seek(HUGE)
    assert cur.position == 0 and log.end_offset == 10


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 1e300, HUGE ** 20, -1, -0.5],
                         ids=["nan", "inf", "-inf", "1e300", "int-beyond-float", "-1", "-0.5"])
def test_timeouts_refuse_nan_huge_and_negative(filled, bad):
    log = filled
    cur = log.cursor(9)       # a record is there (and durable): a wait would return at once
    with raises_naming(ValueError, "timeout"):
        cur.wait(timeout=bad)
    with raises_naming(ValueError, "timeout"):
        log.wait_durable(5, timeout=bad)
    with raises_naming(ValueError, "timeout"):     # at the call, not at the first next()
        cur.follow(timeout=bad)
    with raises_naming(ValueError, "timeout"):
        cur.follow_batches(timeout=bad)
    with raises_naming(ValueError, "timeout"):
        cur.follow_async(timeout=bad)


def test_other_follow_arguments_checked_at_the_call(filled):
    cur = filled.cursor(0)
    with raises_naming(ValueError, "spin"):
        cur.wait(0, spin=math.nan)
    with raises_naming(ValueError, "spin"):
        cur.follow(spin=-1)
    with raises_naming(ValueError, "max_records"):
        cur.follow_batches(max_records=HUGE)
    with raises_naming(ValueError, "max_bytes"):
        cur.follow_batches(max_bytes=0)
    with raises_naming(ValueError, "yield_every"):
        cur.follow_async(yield_every=0)
    with raises_naming(TypeError, "yield_every"):
        cur.follow_async(yield_every=1.5)
    assert cur.position == 0


def test_replayer_refuses_huge_numbers_at_construction(filled):
    log = filled
    with raises_naming(ValueError, "checkpoint_every"):
        tidelog.Replayer(log, Counter(), name="r", checkpoint_every=HUGE)
    for bad in (math.nan, math.inf, 1e300):
        with raises_naming(ValueError, "checkpoint_interval"):
            tidelog.Replayer(log, Counter(), name="r", checkpoint_interval=bad)
    with raises_naming(ValueError, "digest_history"):
        tidelog.Replayer(log, Counter(), name="r", digest_history=HUGE)
    with raises_naming(ValueError, "until"):
        tidelog.Replayer(log, Counter(), name="r").run(until=HUGE)
    with raises_naming(ValueError, "checkpoint_every"):
        tidelog.verify_determinism(log, Counter, checkpoint_every=HUGE)
    assert "r" not in log.positions()       # nothing checkpointed
    # the largest allowed value works end to end (it is packed into the checkpoint header)
    rep = tidelog.Replayer(log, Counter(), name="big", checkpoint_every=2 ** 63 - 1)
    assert rep.run() == 10


def test_largest_durations_are_accepted(tmp_path):
    with tidelog.open(str(tmp_path / "l"), retain_seconds=1e9, sync_interval=1e9,
                      durability="none") as log:
        log.append(b"x")
        assert log.cursor(0).wait(timeout=4e9) is True
        assert log.wait_durable(-1, timeout=4e9) is True


# -- a missing log (item 23)

@pytest.mark.parametrize("kw", [dict(readonly=True), dict(create=False)])
def test_missing_log_is_a_tidelog_error_and_a_file_not_found(tmp_path, kw):
    p = tmp_path / "missing"
    with pytest.raises(tidelog.LogNotFoundError) as info:
        tidelog.open(str(p), **kw)
    assert isinstance(info.value, tidelog.TidelogError)
    assert isinstance(info.value, FileNotFoundError)
    assert info.value.filename == str(p)
    assert not p.exists()


# -- the command line passes numbers through the same checks: a bad one is a usage error

@pytest.mark.parametrize("bad", ["nan", "-1"])   # (inf, 1e300: 9cca872 follows forever)
def test_cli_tail_timeout_refuses_nan_inf_negative(filled, run, bad):
    r = run("tail", filled.path, "-f", "--timeout", bad)
    assert r.exit_code == 2
    assert "--timeout" in r.stderr and "Traceback" not in r.stderr


def test_cli_replay_until_beyond_int64_is_a_usage_error(filled, run):
    r = run("replay", filled.path, "--machine", "test_args:Counter", "--until", HUGE)
    assert r.exit_code == 2
    assert "--until" in r.stderr
