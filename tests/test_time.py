"""Time seeks: the first record with timestamp >= t, through the per-segment max-timestamp index,
for monotonic and non-monotonic timestamps, checked against a list model."""
import os

import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

import tidelog


def first_at(ts, t):
    return next((i for i, x in enumerate(ts) if x >= t), len(ts))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ts=st.lists(st.integers(0, 10_000), max_size=700),
       queries=st.lists(st.integers(-5, 10_005), min_size=1, max_size=20),
       batch=st.booleans())
def test_offset_for_time_matches_a_model(tmp_path_factory, ts, queries, batch):
    path = str(tmp_path_factory.mktemp("t") / "log")
    with tidelog.open(path, durability="none", segment_bytes=4096) as log:
        if batch and ts:
            log.append_batch([b"v"] * len(ts), timestamps=ts, atomic=False)
        else:
            for t in ts:
                log.append(b"v", timestamp=t)
        r = tidelog.open(path, readonly=True)
        try:
            for q in queries + ts[:5]:
                assert log.offset_for_time(q) == first_at(ts, q)
                assert r.offset_for_time(q) == first_at(ts, q)
        finally:
            r.close()


def test_monotonic_timestamps_many_segments(tmp_path):
    ts = list(range(0, 50_000, 5))
    with tidelog.open(str(tmp_path / "l"), durability="none", segment_bytes=1 << 14) as log:
        log.append_batch([b"x" * 10] * len(ts), timestamps=ts, atomic=False)
        assert len(log.segments()) > 10
        for q in (-1, 0, 1, 4, 5, 6, 12_345, 49_995, 49_996, 10 ** 12):
            assert log.offset_for_time(q) == first_at(ts, q)
        cur = log.cursor()
        cur.seek_time(12_346)
        assert next(cur).timestamp == 12_350
        cur.seek_time(10 ** 12)
        assert cur.position == log.end_offset


def test_late_records_are_found_by_the_running_maximum(tmp_path):
    # a record far back in time after many new ones; then the earliest record >= t is the
    # first that reaches it, not the late one
    ts = [100] * 200 + [5] + [200] * 10
    with tidelog.open(str(tmp_path / "l"), durability="none") as log:
        for t in ts:
            log.append(b"x", timestamp=t)
        assert log.offset_for_time(5) == 0
        assert log.offset_for_time(101) == 201
        assert log.offset_for_time(150) == 201


def test_time_seek_after_retention_and_argument_errors(tmp_path):
    with tidelog.open(str(tmp_path / "l"), durability="none", segment_bytes=4096) as log:
        for i in range(500):
            log.append(b"x" * 50, timestamp=i)
        log.truncate_before(250)
        assert log.offset_for_time(0) == log.start_offset
        assert log.offset_for_time(300) == 300
        with pytest.raises(TypeError, match="timestamp"):
            log.offset_for_time(1.5)
        with pytest.raises(TypeError, match="timestamp"):
            log.cursor().seek_time("now")


def test_time_index_damage_does_not_give_a_wrong_answer_silently(tmp_path):
    """A damaged time index is a hint gone wrong: the result stays correct (a scan)."""
    path = str(tmp_path / "l")
    ts = list(range(1000))
    with tidelog.open(path, durability="none") as log:
        log.append_batch([b"x"] * len(ts), timestamps=ts)
    tix = [f for f in os.listdir(path) if f.endswith(".tix")][0]
    with open(os.path.join(path, tix), "r+b") as f:
        f.seek(64 + 8 * 3)                       # entry 3 (record 192) claims a huge maximum
        f.write((10 ** 15).to_bytes(8, "little"))
    with tidelog.open(path, readonly=True) as r:
        assert r.offset_for_time(500) == 500
