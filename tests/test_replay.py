"""The replay driver: resume after a checkpoint, exactly-once state under kill -9 (snapshot
machines, apply_batch machines and LMDB views), divergence detection, follow mode stopped by
signals, argument checks and `tidelog replay`.

The crash tests fork this process (no interpreter start-up per cycle) and SIGKILL the replaying
child at random moments; cycles per machine: TIDELOG_REPLAY_CRASH_CYCLES (default 50), seed:
TIDELOG_FAULT_SEED."""

import os
import random
import signal
import sys
import threading
import time
import types

import numpy as np
import pytest

import tidelog
from tidelog.replay import check_replica, delete_replayer, read_view, replayers

from conftest import read_pipe_lines, spawn_python

CYCLES = int(os.environ.get("TIDELOG_REPLAY_CRASH_CYCLES", "50"))

# The machines live in source form: exec'd here, written out as a module for the CLI and for
# subprocesses. Each apply is deliberately not idempotent (counts, sums, a hash chain over the
# offsets): a record applied twice, skipped or reordered changes the state.
MACHINES = r'''
import hashlib
import random
import struct

import numpy as np

import tidelog

VALUE = np.dtype([("x", "<u8"), ("y", "<u8")])      # 16-byte records


def chain(prev, offset):
    return hashlib.blake2b(prev + offset.to_bytes(8, "little"), digest_size=16).digest()


class Summer:
    """count, sum of x, and a hash chain over the offsets applied."""
    STATE = struct.Struct("<qq16s")

    def __init__(self):
        self.count, self.total, self.chain = 0, 0, bytes(16)

    def apply(self, rec):
        self.count += 1
        self.total += int.from_bytes(rec.value[:8], "little")
        self.chain = chain(self.chain, rec.offset)

    def snapshot(self):
        return self.STATE.pack(self.count, self.total, self.chain)

    def restore(self, snap):
        self.count, self.total, self.chain = self.STATE.unpack(snap)

    def state(self):
        return self.count, self.total, self.chain


class BatchSummer(Summer):
    """The same state through apply_batch (numpy for the sum)."""

    def apply_batch(self, batch):
        self.count += len(batch)
        self.total += int(batch.values_array(VALUE)["x"].sum())
        c = self.chain
        for off in batch.offsets.tolist():
            c = chain(c, off)
        self.chain = c


class Recorder(Summer):
    """Remembers which offsets this instance applied (not part of the state)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def apply(self, rec):
        super().apply(rec)
        self.seen.append(rec.offset)


class Noisy(Summer):
    """Not deterministic: record 537 adds a random number."""

    def apply(self, rec):
        super().apply(rec)
        if rec.offset == 537:
            self.total += random.randrange(1 << 40)


class Buckets(tidelog.LmdbView):
    """A view: per-bucket (count, sum) rows and a hash chain row, read-modify-write."""

    def apply(self, rec, txn):
        fold(rec.offset, int.from_bytes(rec.value[:8], "little"), txn)


def fold(offset, x, txn):
    key = b"b%02d" % (x % 17)
    old = txn.get(key)
    n, s = struct.unpack("<qq", old) if old is not None else (0, 0)
    txn.put(key, struct.pack("<qq", n + 1, s + x))
    txn.put(b"~chain", chain(txn.get(b"~chain") or bytes(16), offset))


class NoisyBuckets(tidelog.LmdbView):
    def apply(self, rec, txn):
        fold(rec.offset, int.from_bytes(rec.value[:8], "little"), txn)
        if rec.offset == 537:
            txn.put(b"~noise", random.randbytes(8))


class DictTxn(dict):
    """Enough of a transaction for fold() on a plain dict: the view model."""

    def put(self, k, v):
        self[k] = v


class Lacking:
    def apply(self, rec):
        pass
'''

M = types.ModuleType("replay_machines")
exec(compile(MACHINES, "replay_machines.py", "exec"), M.__dict__)


def x_of(off):
    return (off * 2654435761) % (1 << 32)


def wait_position(log, name, at_least, deadline):
    """Poll until subscriber `name` committed a position >= at_least, or the deadline passes
    (the caller's assertions then say what is missing)."""
    while log.positions().get(name, 0) < at_least and time.monotonic() < deadline:
        time.sleep(0.01)


def fill(log, n):
    """Append n 16-byte records (x, y = offset) and sync."""
    first = log.end_offset
    a = np.zeros(n, M.VALUE)
    offs = np.arange(first, first + n, dtype=np.uint64)
    a["x"] = (offs * np.uint64(2654435761)) % np.uint64(1 << 32)
    a["y"] = offs
    for i in range(0, n, 400):                 # batches fit in small segments
        log.append_batch(a[i:i + 400])
    log.sync()
    return first


def fold_snapshot(log, cls=M.Summer, stop=None):
    m = cls()
    stop = log.end_offset if stop is None else stop
    for rec in log.cursor(0):
        if rec.offset >= stop:
            break
        m.apply(rec)
    return m


def fold_view(n):
    t = M.DictTxn()
    for off in range(n):
        M.fold(off, x_of(off), t)
    return dict(sorted(t.items()))


def view_items(rep_or_txn):
    with rep_or_txn.read() as txn:
        return {bytes(k): bytes(v) for k, v in txn.cursor()}


@pytest.fixture
def log(tmp_path):
    lg = tidelog.open(tmp_path / "log", durability="none", segment_bytes=1 << 16)
    yield lg
    lg.close()


# ------------------------------------------------------------------------------- basics

def test_resume_after_checkpoint_applies_only_newer_records(log):
    fill(log, 1000)
    a = M.Recorder()
    rep = tidelog.Replayer(log, a, name="r", checkpoint_every=100)
    assert rep.position == 0 and rep.checkpoint_position is None
    assert rep.run(until=450) == 450
    assert a.seen == list(range(450)) and rep.checkpoint_position == 450
    assert log.positions() == {"r": 450}

    b = M.Recorder()
    rep2 = tidelog.Replayer(log, b, name="r", checkpoint_every=100)
    assert rep2.position == 450 and b.state() == a.state()
    assert rep2.run() == 1000
    assert b.seen == list(range(450, 1000))
    assert b.state() == fold_snapshot(log).state()
    assert log.lag() == {"r": 0}
    fill(log, 10)
    assert log.lag() == {"r": 10}
    assert tidelog.Replayer(log, M.Recorder(), name="r").run() == 1010


def test_failed_run_resumes_from_last_checkpoint(log):
    fill(log, 1000)

    class Boom(M.Recorder):
        def apply(self, rec):
            if rec.offset == 650:
                raise RuntimeError("boom")
            super().apply(rec)

    rep = tidelog.Replayer(log, Boom(), name="r", checkpoint_every=100)
    with pytest.raises(RuntimeError, match="boom"):
        rep.run()
    assert log.positions() == {"r": 600}          # the half-done step is not checkpointed
    with pytest.raises(tidelog.TidelogError, match="fresh machine"):
        rep.run()                                 # its machine holds part of a step
    m = M.Recorder()
    assert tidelog.Replayer(log, m, name="r", checkpoint_every=100).run() == 1000
    assert m.seen == list(range(600, 1000))
    assert m.state() == fold_snapshot(log).state()


@pytest.mark.parametrize("cls", [M.Summer, M.BatchSummer])
def test_checkpoints_at_multiples_and_digests_agree(log, cls):
    log._multi_form = False          # (format v2) single-form frames: 5000 records, 3 segments
    fill(log, 5000)                  # several segments: batches end at segment boundaries too
    assert len(log.segments()) > 2
    rep = tidelog.Replayer(log, cls(), name="a", checkpoint_every=700)
    rep.run(until=2000)
    rep.run()
    assert sorted(rep.digests()) == [700, 1400, 2000, 2100, 2800, 3500, 4200, 4900, 5000]
    # a replica with another apply path, checkpointing at other multiples, agrees where they meet
    other = M.Summer if cls is M.BatchSummer else M.BatchSummer
    rep2 = tidelog.Replayer(log, other(), name="b", checkpoint_every=1400, replica_of="a")
    assert rep2.run() == 5000
    assert rep2.verify() == 5000
    assert check_replica(log, "b", "a") == (4, 5000)      # 1400, 2800, 4200, 5000
    assert rep2.machine.state() == rep.machine.state() == fold_snapshot(log).state()


def test_apply_batch_gets_record_batches_within_checkpoints(log):
    fill(log, 3000)
    sizes = []

    class Sizes(M.BatchSummer):
        def apply_batch(self, batch):
            assert isinstance(batch, tidelog.RecordBatch)
            sizes.append((int(batch.offsets[0]), len(batch)))
            super().apply_batch(batch)

    tidelog.Replayer(log, Sizes(), name="s", checkpoint_every=1000).run()
    covered = [o for first, n in sizes for o in range(first, first + n)]
    assert covered == list(range(3000))
    assert all(first // 1000 == (first + n - 1) // 1000 for first, n in sizes)


def test_ephemeral_replayer_stores_nothing(log):
    fill(log, 300)
    m = M.Summer()
    rep = tidelog.Replayer(log, m, name=None, checkpoint_every=100)
    assert rep.run() == 300 and m.state() == fold_snapshot(log).state()
    assert sorted(rep.digests()) == [100, 200, 300]
    assert log.positions() == {}


def test_reads_durable_records_only(tmp_path):
    with tidelog.open(tmp_path / "log", durability="none") as log:
        fill(log, 100)
        log.append(bytes(16))              # appended, not synced
        assert log.durable_offset == 100 < log.end_offset
        rep = tidelog.Replayer(log, M.Summer(), name="r")
        assert rep.run() == 100
        log.sync()
        assert rep.run() == 101


def test_stop_from_another_thread_in_follow_mode(log):
    fill(log, 100)
    rep = tidelog.Replayer(log, M.Summer(), name="f", checkpoint_every=1000)
    result = []
    t = threading.Thread(target=lambda: result.append(rep.run(follow=True)))
    t.start()
    deadline = time.monotonic() + 10
    while rep.position < 100 and time.monotonic() < deadline:
        time.sleep(0.005)
    fill(log, 50)
    while rep.position < 150 and time.monotonic() < deadline:
        time.sleep(0.005)
    rep.stop()
    t.join(10)
    assert not t.is_alive() and result == [150]
    assert log.positions() == {"f": 150}           # checkpointed before returning
    assert rep.stopped_by is None


def test_checkpoint_interval(log):
    fill(log, 100_000)
    rep = tidelog.Replayer(log, M.BatchSummer(), name="t", checkpoint_every=1 << 40,
                           checkpoint_interval=1e-9)
    rep.run()
    assert len(rep.digests()) > 1          # one per step, not only at the end


def test_digest_history_prunes_old_digests(log):
    fill(log, 1000)
    rep = tidelog.Replayer(log, M.Summer(), name="h", checkpoint_every=100, digest_history=300)
    rep.run()
    assert sorted(rep.digests()) == [700, 800, 900, 1000]


def test_two_replayers_of_one_name_are_fenced(log):
    fill(log, 1000)
    a = tidelog.Replayer(log, M.Summer(), name="r", checkpoint_every=100)
    a.run(until=100)
    b = tidelog.Replayer(log, M.Summer(), name="r", checkpoint_every=100)
    a.run(until=200)
    with pytest.raises(tidelog.TidelogError, match="another replayer of the same name"):
        b.run()
    assert log.positions() == {"r": 200}


def test_moved_or_deleted_positions(log):
    fill(log, 500)
    tidelog.Replayer(log, M.Summer(), name="r", checkpoint_every=100).run(until=300)
    log.set_position("r", 100)
    with pytest.raises(tidelog.TidelogError, match="cannot be moved"):
        tidelog.Replayer(log, M.Summer(), name="r")
    log.set_position("r", 300)
    assert tidelog.Replayer(log, M.Summer(), name="r").position == 300
    log.delete_position("r")                   # forgetting it means: start over
    m = M.Recorder()
    rep = tidelog.Replayer(log, m, name="r", checkpoint_every=100)
    assert rep.position == 0 and rep.run() == 500 and m.seen == list(range(500))
    assert sorted(rep.digests()) == [100, 200, 300, 400, 500]
    assert delete_replayer(log, "r") and not delete_replayer(log, "r")
    assert log.positions() == {}


def test_replayers_lists_checkpoints(log):
    fill(log, 300)
    tidelog.Replayer(log, M.Summer(), name="a", checkpoint_every=100).run()
    tidelog.Replayer(log, M.Buckets(), name="v", checkpoint_every=100).run(until=250)
    tidelog.Replayer(log, M.Summer(), name="b", checkpoint_every=100, replica_of="a").run()
    log.cursor(name="plain").commit()
    info = replayers(log)
    assert sorted(info) == ["a", "b", "v"]                 # not the plain named cursor
    assert (info["a"].kind, info["a"].position, info["a"].checkpoint_every) == ("snapshot", 300,
                                                                                 100)
    assert (info["v"].kind, info["v"].position) == ("view", 250)
    assert (info["b"].replica_of, info["b"].agreed) == ("a", 300)
    assert info["a"].digest == info["b"].digest and len(info["a"].digest) == 16
    assert abs(info["a"].time_ns - time.time_ns()) < 60e9
    assert log.positions() == {"a": 300, "b": 300, "plain": 0, "v": 250}


# ------------------------------------------------------------------------------- LMDB views

def test_view_exactly_once_across_runs_and_failures(log):
    fill(log, 1000)
    rep = tidelog.Replayer(log, M.Buckets(), name="v", checkpoint_every=128)
    assert rep.run(until=300) == 300
    assert view_items(rep) == fold_view(300)

    class Boom(M.Buckets):
        def apply(self, rec, txn):
            if rec.offset == 700:
                raise RuntimeError("boom")
            super().apply(rec, txn)

    with pytest.raises(RuntimeError):
        tidelog.Replayer(log, Boom(), name="v", checkpoint_every=128).run()
    assert log.positions() == {"v": 640}
    assert view_items(rep) == fold_view(640)       # the half-done step's writes were aborted
    rep2 = tidelog.Replayer(log, M.Buckets(), name="v", checkpoint_every=128)
    assert rep2.run() == 1000
    assert view_items(rep2) == fold_view(1000)
    with read_view(log, "v") as txn:
        assert bytes(txn.get(b"~chain")) == fold_view(1000)[b"~chain"]
    with pytest.raises(KeyError):
        read_view(log, "nope")
    with pytest.raises(ValueError, match="machine"):
        tidelog.Replayer(log, M.Summer(), name="v")
    assert delete_replayer(log, "v")
    with pytest.raises(KeyError):
        read_view(log, "v")
    rep3 = tidelog.Replayer(log, M.Buckets(), name="v")
    assert rep3.run(until=10) == 10 and view_items(rep3) == fold_view(10)


def test_view_forgotten_by_delete_position_starts_over(log):
    fill(log, 200)
    tidelog.Replayer(log, M.Buckets(), name="v", checkpoint_every=64).run(until=150)
    log.delete_position("v")
    rep = tidelog.Replayer(log, M.Buckets(), name="v", checkpoint_every=64)
    assert rep.position == 0 and view_items(rep) == {}     # the old rows went with it
    assert rep.run() == 200 and view_items(rep) == fold_view(200)


def test_ephemeral_view_commits_nothing(log):
    fill(log, 200)
    with tidelog.Replayer(log, M.Buckets(), name=None, checkpoint_every=64) as rep:
        assert rep.run(until=100) == 100
        assert rep.run() == 200                  # keeps its (uncommitted) state between runs
        assert sorted(rep.digests()) == [64, 100, 128, 192, 200]
        with pytest.raises(TypeError, match="ephemeral"):
            rep.read()
    digest = rep.digests()[200]
    rep2 = tidelog.Replayer(log, M.Buckets(), name="v")
    rep2.run()
    assert rep2.digests() == {200: digest}
    assert log.positions() == {"v": 200}
    with log._positions().env.begin() as txn:
        assert [k for k, _ in txn.cursor() if k.startswith(b"view:")] == [b"view:v"]


def test_view_following_commits_when_caught_up(log):
    """A following view holds LMDB's write lock only while there is work: another committer
    (here a named cursor in another thread) gets through while it waits for records."""
    fill(log, 100)
    rep = tidelog.Replayer(log, M.Buckets(), name="v", checkpoint_every=1 << 40)
    t = threading.Thread(target=rep.run, kwargs={"follow": True})
    t.start()
    try:
        deadline = time.monotonic() + 10
        while log.positions().get("v") != 100 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert log.positions()["v"] == 100
        log.cursor(name="other").commit()
    finally:
        rep.stop()
        t.join(10)
    assert view_items(rep) == fold_view(100)


# ------------------------------------------------------------------------------- divergence

def test_verify_determinism_snapshot_machine(log):
    fill(log, 1000)
    report = tidelog.verify_determinism(log, M.Summer, checkpoint_every=100)
    assert report and report.checkpoints == 10 and report.end == 1000
    with pytest.raises(tidelog.ReplicaDivergedError) as info:
        tidelog.verify_determinism(log, M.Noisy, checkpoint_every=100)
    e = info.value
    assert (e.offset, e.since, e.record) == (600, 500, 537)
    assert not e.report and e.report.offset == 600
    report = tidelog.verify_determinism(log, M.Noisy, checkpoint_every=250,
                                        raise_on_divergence=False)
    assert (report.offset, report.since, report.record) == (750, 500, 537)
    assert "750" in str(report)
    assert log.positions() == {}                       # stores nothing


def test_verify_determinism_view_machine(log):
    fill(log, 1000)
    assert tidelog.verify_determinism(log, M.Buckets, checkpoint_every=100).checkpoints == 10
    report = tidelog.verify_determinism(log, M.NoisyBuckets, checkpoint_every=128,
                                        raise_on_divergence=False)
    assert (report.offset, report.since) == (640, 512)
    assert log.positions() == {}
    with log._positions().env.begin() as txn:          # the temporary views are gone
        assert not [k for k, _ in txn.cursor() if k.startswith(b"view:")]


@pytest.mark.parametrize("leader_first", [True, False])
def test_replica_of_detects_divergence(log, leader_first):
    fill(log, 1000)
    leader = tidelog.Replayer(log, M.Summer(), name="a", checkpoint_every=100)
    replica = tidelog.Replayer(log, M.Noisy(), name="b", checkpoint_every=100, replica_of="a")
    if leader_first:
        leader.run()
        with pytest.raises(tidelog.ReplicaDivergedError) as info:
            replica.run()
        assert log.positions()["b"] == 500             # the diverged checkpoint is not stored
    else:
        replica.run()                                  # nothing to compare with yet
        assert replica.verify() is None
        leader.run()
        with pytest.raises(tidelog.ReplicaDivergedError) as info:
            replica.verify()
        with pytest.raises(tidelog.ReplicaDivergedError):
            check_replica(log, "b", "a")
    e = info.value
    assert (e.offset, e.since, e.name, e.reference) == (600, 500, "b", "a")
    assert "600" in str(e) and e.digest != e.expected
    good = tidelog.Replayer(log, M.BatchSummer(), name="c", checkpoint_every=100, replica_of="a")
    good.run()
    assert good.verify() == 1000


# ------------------------------------------------------------------------------- arguments

def _bad_machine_cases():
    return [(M.Lacking(), TypeError, "machine"), (M.Summer, TypeError, "machine"),
            (object(), TypeError, "machine"), (tidelog.LmdbView(), TypeError, "machine")]


@pytest.mark.parametrize("machine,exc,word", _bad_machine_cases())
def test_bad_machine(log, machine, exc, word):
    with pytest.raises(exc, match=word):
        tidelog.Replayer(log, machine, name="x")


@pytest.mark.parametrize("kw,exc,word", [
    ({"name": 5}, TypeError, "name"),
    ({"name": ""}, ValueError, "name"),
    ({"name": "a\0b"}, ValueError, "name"),
    ({"checkpoint_every": "10"}, TypeError, "checkpoint_every"),
    ({"checkpoint_every": 2.5}, TypeError, "checkpoint_every"),
    ({"checkpoint_every": True}, TypeError, "checkpoint_every"),
    ({"checkpoint_every": 0}, ValueError, "checkpoint_every"),
    ({"checkpoint_every": -5}, ValueError, "checkpoint_every"),
    ({"checkpoint_interval": "1"}, TypeError, "checkpoint_interval"),
    ({"checkpoint_interval": 0}, ValueError, "checkpoint_interval"),
    ({"replica_of": 3}, TypeError, "replica_of"),
    ({"replica_of": "x"}, ValueError, "replica_of"),
    ({"replica_of": "y", "digests": False}, ValueError, "replica_of"),
    ({"digests": 1}, TypeError, "digests"),
    ({"digest_history": 0}, ValueError, "digest_history"),
    ({"digest_history": 1.0}, TypeError, "digest_history"),
])
def test_bad_arguments(log, kw, exc, word):
    kw = {"name": "x", **kw}
    with pytest.raises(exc, match=word):
        tidelog.Replayer(log, M.Summer(), **kw)


def test_bad_arguments_elsewhere(log):
    fill(log, 10)
    with pytest.raises(TypeError, match="log"):
        tidelog.Replayer("path", M.Summer(), name="x")
    with pytest.raises(TypeError, match="name"):
        tidelog.Replayer(log, M.Summer())                 # name is required (None: ephemeral)
    log.cursor(name="sub").commit()
    with pytest.raises(ValueError, match="name"):
        tidelog.Replayer(log, M.Summer(), name="sub")     # a named cursor's, not a replayer's
    rep = tidelog.Replayer(log, M.Summer(), name="x")
    with pytest.raises(TypeError, match="until"):
        rep.run(until="5")
    with pytest.raises(TypeError, match="follow"):
        rep.run(follow=1)
    with pytest.raises(TypeError, match="progress"):
        rep.run(progress=5)
    rep.run(until=5)
    with pytest.raises(ValueError, match="until"):
        rep.run(until=4)
    with pytest.raises(TypeError, match="factory"):
        tidelog.verify_determinism(log, M.Summer())
    with pytest.raises(ValueError, match="checkpoint_every"):
        tidelog.verify_determinism(log, M.Summer, checkpoint_every=0)
    with pytest.raises(ValueError, match="until"):
        tidelog.verify_determinism(log, M.Summer, until=11)

    class BadSnap(M.Summer):
        def snapshot(self):
            return "text"
    with pytest.raises(TypeError, match="snapshot"):
        tidelog.Replayer(log, BadSnap(), name="y").run()


# ------------------------------------------------------------------------------- kill -9

def _replay_child(path, kind, every, wfd):
    """Runs in the forked child: replay to the durable end, report, exit. Never returns."""
    try:
        with tidelog.open(path, readonly=True) as lg:
            rep = tidelog.Replayer(lg, getattr(M, kind)(), name="crash", checkpoint_every=every)
            os.write(wfd, b"start %d\n" % rep.position)
            os.write(wfd, b"done %d\n" % rep.run())
        os._exit(0)
    except BaseException as e:         # pragma: no cover - reported through the pipe
        os.write(wfd, b"error %r\n" % e)
    finally:
        os._exit(1)




@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("kind", ["Summer", "BatchSummer", "Buckets"])
def test_kill9_replay_is_exactly_once(tmp_path, kind):
    seed = int(os.environ.get("TIDELOG_FAULT_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    path = str(tmp_path / "log")
    writer = tidelog.open(path, durability="none", segment_bytes=1 << 15)
    stats = {"killed": 0, "finished": 0, "killed_before_start": 0}
    last = 0
    try:
        for cycle in range(CYCLES):
            fill(writer, rng.randint(200, 2500))     # new work every cycle, across segments
            r, w = os.pipe()
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()                          # no LMDB environment is open here
            if pid == 0:
                os.close(r)
                _replay_child(path, kind, rng.choice([1, 3, 17, 100, 499]), w)
            os.close(w)
            time.sleep(rng.uniform(0.0, 0.04))
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            lines = read_pipe_lines(r)
            errors = [l for l in lines if l.startswith(b"error")]
            assert not errors, f"seed {seed} cycle {cycle}: {errors[0]}"
            starts = [int(l.split()[1]) for l in lines if l.startswith(b"start")]
            assert all(s >= last for s in starts), f"seed {seed}: position went back"
            last = max(starts, default=last)
            if any(l.startswith(b"done") for l in lines):
                stats["finished"] += 1
            else:
                stats["killed"] += 1
                stats["killed_before_start"] += not starts
        stats["checkpointed_by_children"] = last
        with tidelog.open(path, readonly=True) as lg:
            end = lg.end_offset
            stats["records"] = end
            if kind == "Buckets":
                rep = tidelog.Replayer(lg, M.Buckets(), name="crash")
                assert view_items(rep) == fold_view(rep.position), (
                    f"seed {seed}: the view is not a fold up to {rep.position}")
                assert rep.run() == end
                assert view_items(rep) == fold_view(end), f"seed {seed}"
            else:
                rep = tidelog.Replayer(lg, getattr(M, kind)(), name="crash")
                # the state restored from the last checkpoint is a fresh fold up to it ...
                assert rep.machine.state() == fold_snapshot(lg, stop=rep.position).state(), (
                    f"seed {seed}: the restored state is not a fold up to {rep.position}")
                # ... and resuming from it reaches a fresh fold of the whole log
                assert rep.run() == end
                assert rep.machine.state() == fold_snapshot(lg).state(), f"seed {seed}"
            assert lg.positions() == {"crash": end}
    finally:
        writer.close()
    print(kind, seed, stats)
    assert stats["killed"] >= CYCLES // 3, stats      # most kills land mid-replay


# ------------------------------------------------------------------------------- signals

FOLLOWER = r'''
import sys
import tidelog
from replay_machines import Summer
with tidelog.open(sys.argv[1], readonly=True) as log:
    rep = tidelog.Replayer(log, Summer(), name="f", checkpoint_every=10)
    print("ready", rep.position, flush=True)
    pos = rep.run(follow=True)
    print("stopped", pos, rep.stopped_by, flush=True)
'''


@pytest.fixture
def machines_module(tmp_path, monkeypatch):
    d = tmp_path / "machines"
    d.mkdir()
    (d / "replay_machines.py").write_text(MACHINES)
    monkeypatch.syspath_prepend(str(d))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(d)] + [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                    if p]))
    return d


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_follow_stops_cleanly_on_signal(tmp_path, machines_module, sig):
    path = str(tmp_path / "log")
    with tidelog.open(path, durability="batch") as log:
        fill(log, 25)
        proc = spawn_python(FOLLOWER, path)
        try:
            assert proc.stdout.readline().split() == ["ready", "0"]
            deadline = time.monotonic() + 20
            wait_position(log, "f", 20, deadline)
            fill(log, 33)                                   # it follows the writer
            wait_position(log, "f", 50, deadline)
            assert log.positions()["f"] == 50
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err
        word, pos, by = out.split()
        assert word == "stopped" and int(by) == sig and 50 <= int(pos) <= 58
        assert log.positions() == {"f": int(pos)}          # checkpointed before returning
        rep = tidelog.Replayer(log, M.Summer(), name="f")
        assert rep.machine.state() == fold_snapshot(log, stop=int(pos)).state()


# ------------------------------------------------------------------------------- CLI



def assert_one_line_error(result, code=2):
    assert result.exit_code == code, (result.output, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tidelog: error: ")
    assert "Traceback" not in result.output


def test_cli_replay(run, tmp_path, machines_module):
    path = tmp_path / "log"
    with tidelog.open(path) as log:
        fill(log, 3000)
    res = run("replay", path, "--machine", "replay_machines:BatchSummer", "--name", "sums",
              "--checkpoint-every", "1000", "--until", "2500")
    assert res.exit_code == 0, res.output
    assert "replayed 2,500 records [0, 2500)" in res.output
    res = run("replay", path, "--machine", "replay_machines:BatchSummer", "--name", "sums")
    assert res.exit_code == 0 and "replayed 500 records [2500, 3000)" in res.output
    res = run("replay", path, "--machine", "replay_machines:Summer")     # named after --machine
    assert res.exit_code == 0
    with tidelog.open(path, readonly=True) as log:
        assert log.positions() == {"replay_machines:Summer": 3000, "sums": 3000}
        rep = tidelog.Replayer(log, M.Summer(), name="sums")
        assert rep.machine.state() == fold_snapshot(log).state()
    res = run("replay", path, "--machine", "replay_machines:Buckets", "--name", "v")
    assert res.exit_code == 0

    res = run("replay", path, "--machine", "replay_machines:Summer", "--verify-determinism",
              "--checkpoint-every", "500")
    assert res.exit_code == 0 and res.output.startswith("deterministic")
    res = run("replay", path, "--machine", "replay_machines:Noisy", "--verify-determinism",
              "--checkpoint-every", "500")
    assert res.exit_code == 1 and "offset 1000" in res.output and "record 537" in res.output
    res = run("replay", path, "--machine", "replay_machines:Noisy", "--name", "n",
              "--replica-of", "sums", "--checkpoint-every", "1000")
    assert_one_line_error(res, 1)
    assert "offset 1000" in res.stderr


def test_cli_replay_errors(run, tmp_path, machines_module):
    path = tmp_path / "log"
    res = run("replay", path, "--machine", "replay_machines:Summer")
    assert_one_line_error(res)
    assert not path.exists()                         # never creates a log
    with tidelog.open(path) as log:
        fill(log, 10)
    for spec, word in [("nocolon", "MODULE:FACTORY"), ("no_such_module_x:F", "cannot import"),
                       ("replay_machines:Nope", "no attribute"),
                       ("replay_machines:VALUE", "not a callable"),
                       ("replay_machines:Lacking", "snapshot"),
                       ("replay_machines:fold", "raised TypeError")]:
        res = run("replay", path, "--machine", spec)
        assert_one_line_error(res)
        assert word in res.stderr, (spec, res.stderr)
    res = run("replay", path, "--machine", "replay_machines:Summer", "--checkpoint-every", "0")
    assert res.exit_code == 2                        # click's usage error
    res = run("replay", "--help")
    assert res.exit_code == 0 and "--machine" in res.output
    with tidelog.open(path, readonly=True) as log:
        assert log.positions() == {}


def test_cli_replay_follow_stops_on_sigterm(tmp_path, machines_module):
    path = str(tmp_path / "log")
    with tidelog.open(path, durability="batch") as log:
        fill(log, 40)
        proc = spawn_python("import sys; from tidelog.cli import main; main(sys.argv[1:])",
                            "replay", path, "--machine", "replay_machines:Summer", "--name", "f",
                            "--checkpoint-every", "10", "--follow", cwd=str(machines_module))
        try:
            deadline = time.monotonic() + 20
            wait_position(log, "f", 40, deadline)
            fill(log, 25)
            wait_position(log, "f", 60, deadline)
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err
        assert "stopped by SIGTERM" in out and "checkpointed at 65" in out, out
        assert log.positions() == {"f": 65}


def test_reading_functions_create_nothing(tmp_path):
    path = tmp_path / "log"
    with tidelog.open(path) as log:
        fill(log, 10)
    with tidelog.open(path, readonly=True) as log:
        assert replayers(log) == {} and check_replica(log, "a", "b") == (0, None)
        with pytest.raises(KeyError):
            read_view(log, "v")
    assert not (path / "positions").exists()
