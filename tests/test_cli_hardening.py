"""Issue 11, items 16, 17, 20 and 22: the command line's one-line errors (a replay machine's
exception names its method and record offset, exit 2), stop()/signals/checkpoint_interval
honoured between two records (or batches), subscriber names without control characters (and
escaped when an older store holds one), and a `demo` whose story is what happened."""

import os
import re
import signal
import struct
import sys
import textwrap
import threading
import time

import pytest

import tidelog
from tidelog.replay import machine_call

from conftest import run_python

N = 3000                     # records in the test logs (one replay step of the old loop)
NEVER = 1 << 40              # a checkpoint_every that never comes


@pytest.fixture
def filled(log):
    log.append_batch([b"%06d" % i + b"." * 90 for i in range(N)], keys=[b"k"] * N, atomic=False)
    log.sync()
    return log


def assert_one_line_error(result, *words):
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tidelog: error: "), result.stderr
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], lines[0]


class Count:
    def __init__(self):
        self.n = 0

    def apply(self, rec):
        self.n += 1

    def snapshot(self):
        return struct.pack("<q", self.n)

    def restore(self, snap):
        (self.n,) = struct.unpack("<q", snap)


# ------------------------------------------------------------------ 16: machine errors, sweep

MACHINES = '''
import struct
import tidelog


class Base:
    def __init__(self):
        self.n = 0

    def apply(self, rec):
        self.n += 1

    def snapshot(self):
        return struct.pack("<q", self.n)

    def restore(self, snap):
        (self.n,) = struct.unpack("<q", snap)


class BadApply(Base):
    def apply(self, rec):
        if rec.offset == 1234:
            raise KeyError("no such user")
        self.n += 1


class BadBatch(Base):
    def apply_batch(self, batch):
        if batch.offsets[0] >= 1000:
            raise RuntimeError("batch boom")
        self.n += len(batch)


class BadSnapshot(Base):
    def snapshot(self):
        raise ZeroDivisionError("snap")


class StrSnapshot(Base):
    def snapshot(self):
        return "not bytes"


class BadDigest(Base):
    def digest(self):
        raise ArithmeticError("digest boom")


class BadRestore(Base):
    def restore(self, snap):
        raise RuntimeError("restore boom")


class BadView(tidelog.LmdbView):
    def apply(self, rec, txn):
        if rec.offset == 77:
            raise LookupError("view boom")
        txn.put(b"n", b"%d" % rec.offset)


def not_a_factory_result():
    raise OSError("factory boom")
'''


@pytest.fixture
def machines(tmp_path, monkeypatch, request):
    """A module of machines, importable from the current directory (as `tidelog replay` does),
    under a name of this test's own (imports are cached per process)."""
    name = "hardening_machines_" + re.sub(r"\W", "_", request.node.name)
    (tmp_path / f"{name}.py").write_text(MACHINES)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


@pytest.mark.parametrize("machine, words", [
    ("BadApply", ["BadApply.apply()", "record offset 1234", "KeyError", "no such user"]),
    ("BadBatch", ["BadBatch.apply_batch()", "[1000, ", "RuntimeError", "batch boom"]),
    ("BadSnapshot", ["BadSnapshot.snapshot()", "offset 500", "ZeroDivisionError"]),
    ("StrSnapshot", ["StrSnapshot.snapshot()", "offset 500", "expected bytes"]),
    ("BadDigest", ["BadDigest.digest()", "offset 500", "ArithmeticError", "digest boom"]),
    ("BadView", ["BadView.apply()", "record offset 77", "LookupError", "view boom"]),
])
def test_replay_machine_error_is_one_line_exit_2(run, filled, machines, machine, words):
    result = run("replay", filled.path, "--machine", f"{machines}:{machine}",
                 "--checkpoint-every", 500)
    assert_one_line_error(result, "machine", *words)
    with tidelog.open(filled.path, readonly=True) as log:    # the state stays at a checkpoint
        assert log.positions().get(f"{machines}:{machine}", (0,)) in ((0,), 0, 500, 1000)


def test_replay_restore_error_is_one_line_exit_2(run, filled, machines):
    assert run("replay", filled.path, "--machine", f"{machines}:Base", "--name", "r",
               "--until", 700).exit_code == 0
    result = run("replay", filled.path, "--machine", f"{machines}:BadRestore", "--name", "r")
    assert_one_line_error(result, "BadRestore.restore()", "offset 700", "restore boom")


def test_verify_determinism_machine_error_is_one_line_exit_2(run, filled, machines):
    result = run("replay", filled.path, "--machine", f"{machines}:BadApply",
                 "--verify-determinism", "--checkpoint-every", 500)
    assert_one_line_error(result, "BadApply.apply()", "record offset 1234", "KeyError")
    result = run("replay", filled.path, "--machine", f"{machines}:not_a_factory_result",
                 "--verify-determinism")
    assert_one_line_error(result, "--machine", "factory boom")


def test_machine_exception_keeps_its_type_and_says_where(filled):
    class Boom(Count):
        def apply(self, rec):
            if rec.offset == 2500:
                raise KeyError("x")
            super().apply(rec)

    rep = tidelog.Replayer(filled, Boom(), name="b", checkpoint_every=1000)
    with pytest.raises(KeyError) as info:
        rep.run()
    call = machine_call(info.value)
    assert (call.machine, call.method, call.offset, call.replayer) == ("Boom", "apply", 2500, "b")
    assert "Boom.apply() raised at record offset 2500" in str(call)
    assert filled.positions() == {"b": 2000}


def test_a_damaged_log_is_not_blamed_on_the_machine(tmp_path):
    path = str(tmp_path / "log")
    with tidelog.open(path, segment_bytes=4096, durability="none") as log:
        log.append_batch([b"r%04d" % i + b"." * 90 for i in range(200)], atomic=False)
        bases = [b for b, _ in log.segments()]
    with open(os.path.join(path, "%020d.seg" % bases[2]), "r+b") as f:
        f.seek(200)
        f.write(b"\xff" * 40)
    with tidelog.open(path, readonly=True) as log:
        rep = tidelog.Replayer(log, Count(), name=None, checkpoint_every=NEVER)
        with pytest.raises(tidelog.CorruptLogError) as info:
            rep.run()
        assert machine_call(info.value) is None


def test_every_command_gives_one_line_for_bad_input(run, filled, machines, tmp_path):
    path = filled.path
    filled.set_position("reader", 10)
    cases = [
        (["info", tmp_path / "missing"], ["missing"]),
        (["dump", path, "--from", 10 ** 30], ["offset"]),
        (["tail", tmp_path / "missing"], ["missing"]),
        (["append", path, tmp_path / "no-such-file"], ["no-such-file"]),
        (["verify", tmp_path / "missing"], ["missing"]),
        (["lag", tmp_path / "missing"], ["missing"]),
        (["positions", path, "set", "reader", "ten"], ["offset"]),
        (["positions", path, "set", "reader", 10 ** 30], ["offset"]),
        (["positions", path, "set", "a\tb", 1], ["control characters"]),
        (["positions", path, "delete", "nobody"], ["nobody"]),
        (["repair", tmp_path / "missing"], ["missing"]),
        (["replay", path, "--machine", f"{machines}:Nope"], ["--machine"]),
        (["replay", path, "--machine", f"{machines}:Base", "--name", "x\ny"],
         ["control characters"]),
        (["replay", path, "--machine", f"{machines}:Base", "--name", "reader"],
         ["named cursor"]),
        (["demo", "--events", 10 ** 12], None),        # click's own usage error (exit 2)
    ]
    for args, words in cases:
        result = run(*args)
        if words is None:
            assert result.exit_code == 2 and "Traceback" not in result.output, args
        else:
            assert_one_line_error(result, *words)


def test_an_unexpected_exception_is_one_line_too(run, filled, monkeypatch):
    from tidelog import cli as cli_module

    def broken(path):
        raise KeyError("an internal mistake")
    monkeypatch.setattr(cli_module, "_open_ro", broken)
    assert_one_line_error(run("info", filled.path), "KeyError", "an internal mistake")


# ------------------------------------------------------------------ 17: stop within one record

def test_stop_inside_apply_stops_before_the_next_record(filled):
    class StopAt(Count):
        def apply(self, rec):
            super().apply(rec)
            if rec.offset == 1000:
                rep.stop()

    m = StopAt()
    rep = tidelog.Replayer(filled, m, name="s", checkpoint_every=NEVER)
    assert rep.run() == 1001 and m.n == 1001
    assert filled.positions() == {"s": 1001}          # checkpointed where it stopped
    assert rep.run() == N                              # and goes on afterwards


def test_stop_from_another_thread_within_one_record(filled):
    reached, stopped = threading.Event(), threading.Event()

    class Handshake(Count):
        def apply(self, rec):
            super().apply(rec)
            if rec.offset == 700:
                reached.set()
                assert stopped.wait(30)

    def stopper():
        assert reached.wait(30)
        rep.stop()
        stopped.set()

    rep = tidelog.Replayer(filled, Handshake(), name="t", checkpoint_every=NEVER)
    t = threading.Thread(target=stopper)
    t.start()
    try:
        assert rep.run() == 701
    finally:
        t.join()


@pytest.mark.parametrize("follow", [True, False])
def test_sigterm_stops_within_one_record(filled, follow):
    class Kill(Count):
        def apply(self, rec):
            super().apply(rec)
            if rec.offset == 1500:
                os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    rep = tidelog.Replayer(filled, Kill(), name="k", checkpoint_every=NEVER)
    kw = {} if follow else {"signals": True}           # follow: handlers by default
    assert rep.run(follow=follow, **kw) == 1501
    assert rep.stopped_by == signal.SIGTERM
    assert filled.positions() == {"k": 1501}
    assert signal.getsignal(signal.SIGTERM) is before


def test_stop_in_apply_batch_stops_before_the_next_batch(filled):
    sizes = []

    class Batches(Count):
        def apply_batch(self, batch):
            sizes.append(len(batch))
            self.n += len(batch)
            rep.stop()

    rep = tidelog.Replayer(filled, Batches(), name="b", checkpoint_every=NEVER)
    first = rep.run()
    assert len(sizes) == 1 and first == sizes[0] < N    # one batch (a segment), not them all


def test_checkpoint_interval_is_honoured_within_one_record(filled):
    class SlowAt(Count):
        def apply(self, rec):
            super().apply(rec)
            if rec.offset == 900:
                time.sleep(0.5)         # the interval (0.1 s) passes during this record

    rep = tidelog.Replayer(filled, SlowAt(), name="i", checkpoint_every=NEVER,
                           checkpoint_interval=0.1)
    assert rep.run() == N
    assert 901 in rep.digests()         # a checkpoint right after the slow record


def test_progress_is_called_during_a_long_step(filled):
    calls = []

    class SlowAt(Count):
        def apply(self, rec):
            super().apply(rec)
            if rec.offset == 10:
                time.sleep(0.3)

    rep = tidelog.Replayer(filled, SlowAt(), name=None, checkpoint_every=NEVER)
    rep.run(progress=lambda r: calls.append(r.position))
    assert calls and calls[0] == 11    # cut after the slow record, not after 16,384 records


# ------------------------------------------------------------------ 20: names

@pytest.mark.parametrize("bad", ["a\tb", "line\nbreak", "esc\x1b[2J", "del\x7f", "c1\x85"])
def test_names_refuse_control_characters(filled, bad):
    code = f"U+{ord(re.search(r'[^ -~]', bad).group()):04X}"
    for call in (lambda: filled.cursor(name=bad), lambda: filled.set_position(bad, 0),
                 lambda: tidelog.Replayer(filled, Count(), name=bad),
                 lambda: tidelog.Replayer(filled, Count(), name="ok", replica_of=bad)):
        with pytest.raises(ValueError, match=re.escape(code)) as info:
            call()
        assert "control characters" in str(info.value)
    assert filled.positions() == {}
    assert filled.cursor(name="ünïcode ok · name").name == "ünïcode ok · name"


def test_a_stored_name_with_control_characters_is_printed_escaped(run, filled):
    path = filled.path
    filled.set_position("honest", 5)
    forged = "evil\tname\nforged\t0\t0\t1970-01-01T00:00:00.000000000Z\tcursor"
    # a store written by an older tidelog: put the name with py-lmdb in another process
    run_python("""
        import struct, sys, lmdb
        env = lmdb.open(sys.argv[1] + "/positions", max_dbs=64, subdir=True)
        db = env.open_db(b"positions")
        with env.begin(write=True) as txn:
            txn.put(sys.argv[2].encode(), struct.pack("<qq", 7, 0), db=db)
        env.close()
        """, path, forged)
    result = run("positions", path)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and all(len(line.split("\t")) == 5 for line in lines)
    shown = forged.replace("\t", "\\t").replace("\n", "\\n")
    assert sorted(line.split("\t")[0] for line in lines) == sorted(["honest", shown])
    for cmd in ("info", "lag"):
        out = run(cmd, path).stdout
        assert shown in out and "\nforged" not in out
    assert run("positions", path, "delete", forged).exit_code == 0      # still deletable
    assert filled.positions() == {"honest": 5}


# ------------------------------------------------------------------ 22: demo

STORY = re.compile(r"replay: a replayer in a child process applied records \[([\d,]+), ([\d,]+)\) "
                   r"\(checkpointing every ([\d,]+)\) and was killed \(SIGKILL\) before its next "
                   r"checkpoint; a new one resumed from (?:its last checkpoint at )?([\d,]+)"
                   r"(?: \(no checkpoint yet: where it first began\))? and reached ([\d,]+) in")


def story(output):
    m = STORY.search(output)
    assert m, output
    return [int(g.replace(",", "")) for g in m.groups()]


@pytest.mark.parametrize("events", [1, 2, 5, 1000])
def test_demo_tells_a_true_story_for_small_event_counts(run, tmp_path, events):
    path = tmp_path / "demo"
    result = run("demo", path, "--events", events, "--singles", 0)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert result.stderr == ""
    start, killed, every, resumed, end = story(result.stdout)
    with tidelog.open(path, readonly=True) as log:
        assert end == len(log) == events + max(1, events // 4)
        assert log.positions()["counts"] == end
    assert start == 0 and start < killed <= end
    # killed inside the step that reached `killed`: the last checkpoint is the last multiple of
    # `every` below it (checkpoints fall at multiples), or the start when there is none
    assert resumed == max(start, (killed - 1) // every * every) and resumed < killed
    assert "exactly once:" in result.stdout
    assert "determinism: ClickCounter: deterministic" in result.stdout
    assert "FlakyCounter (reads state outside the log): NOT deterministic" in result.stdout


def test_demo_again_on_the_same_log_resumes_the_same_replayer(run, tmp_path):
    path = tmp_path / "demo"
    assert run("demo", path, "--events", 3, "--singles", 0).exit_code == 0
    result = run("demo", path, "--events", 40, "--singles", 0)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    start, killed, every, resumed, end = story(result.stdout)
    assert start == 3 + 1                      # where the first demo's replayer finished
    assert start < killed <= end == start + 40 + 10
    assert resumed == max(start, (killed - 1) // every * every)
