"""Attacks on tidelog.eventsourcing's group commit (issue 16), as a hostile user would make them:
signals delivered to the leader thread itself (a Ctrl-C as its append returns, or before it takes
its group), close() of the store racing a leader, many threads inserting with conflicts mixed in,
huge events among small ones, readers while groups commit, fork() while groups commit, a full
disk, and SIGKILL of a process with many inserting threads (exactly once after the reopen)."""
import os
import signal
import subprocess
import sys
import threading
import time
from uuid import uuid4

import pytest

pytest.importorskip("eventsourcing")

from eventsourcing.persistence import (IntegrityError, PersistenceError,  # noqa: E402
                                       StoredEvent, Tracking)

import tidelog.eventsourcing.store as tes  # noqa: E402
from tidelog.eventsourcing import (TidelogApplicationRecorder, TidelogProcessRecorder,  # noqa: E402
                                   TidelogStore)

SEG = 1 << 20


def ev(oid, version=1, state=b"{}", topic="t"):
    return StoredEvent(originator_id=oid, originator_version=version, topic=topic, state=state)


def recorder(tmp_path, cls=TidelogApplicationRecorder, name="s", seg=SEG):
    return cls(TidelogStore.acquire(str(tmp_path / name), segment_bytes=seg))


def wait_until(cond, what, timeout=30):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)


class HeldSync:
    """The store's log.sync patched: the first call (the first insert's, from a thread) is held
    until go() is called; later calls pass through."""

    def __init__(self, store):
        self.store = store
        self.log = store.log
        self.sync = self.log.sync
        self.held, self.released = threading.Event(), threading.Event()
        self.log.sync = self._sync

    def _sync(self):
        if not self.held.is_set():
            self.held.set()
            assert self.released.wait(30)
        return self.sync()

    def go(self):
        self.released.set()

    def undo(self):
        del self.log.sync


def in_thread(fn):
    """Run fn() in a thread; returns (thread, out): out gets fn's result or its exception."""
    out = []

    def run():
        try:
            out.append(fn())
        except BaseException as exc:        # noqa: B902 - the test looks at it
            out.append(exc)

    t = threading.Thread(target=run)
    t.start()
    return t, out


def log_versions(r):
    """(originator id, version) of every record of the log, in log order (the log itself, not
    the store's published end)."""
    store = r.store
    out = []
    cur = store.log.cursor(start=0)
    while True:
        batch = cur.read_batch(max_records=4096)
        if len(batch) == 0:
            return out
        for value in batch.values:
            e = tes.decode(value)
            out.append((e.originator_id, e.originator_version))


# -- a signal delivered to the leader thread itself ------------------------------------------------

def test_interrupt_of_the_leader_as_its_append_returns(tmp_path):
    """Ctrl-C (SIGINT) delivered to the main thread while it leads a group and appends it: the
    KeyboardInterrupt was raised as append_batch returned, before the group's records were
    entered in the store. The queued callers were told "nothing was written" though their events
    were in the log; the index never learnt of the records, so select_events missed them and a
    retry of the same versions was accepted: the same aggregate version twice in the log."""
    r = recorder(tmp_path)
    store = r.store
    store.become_writer()
    gate = HeldSync(store)
    first_t, first_out = in_thread(lambda: r.insert_events([ev("first")]))
    assert gate.held.wait(30)
    append_batch = store.log.append_batch

    def interrupted_append(values, **kw):       # the second call: the main thread's group
        out = append_batch(values, **kw)
        del store.log.append_batch
        signal.raise_signal(signal.SIGINT)      # the signal arrives while appending
        return out

    store.log.append_batch = interrupted_append
    others = []

    def queue_others():
        wait_until(lambda: len(store._queue) == 1, "the main thread's insert queued")
        for k in range(3):
            others.append(in_thread(lambda k=k: r.insert_events([ev(f"other{k}", 1),
                                                                  ev(f"other{k}", 2)])))
            wait_until(lambda: len(store._queue) == 2 + k, "another insert queued")
        gate.go()

    helper = threading.Thread(target=queue_others)
    helper.start()
    with pytest.raises(KeyboardInterrupt):
        r.insert_events([ev("main", 1)])        # queued first: it leads the second group
    helper.join(30)
    first_t.join(30)
    for t, _ in others:
        t.join(30)
    gate.undo()
    assert first_out == [[1]]
    outs = [out[0] for _, out in others]
    assert all(isinstance(o, list) for o in outs), outs     # their events are in the log
    assert sorted(i for o in outs for i in o) == [3, 4, 5, 6, 7, 8]
    # the interrupted insert was appended: it is recorded, whole, once
    with pytest.raises(IntegrityError):
        r.insert_events([ev("main", 1)])
    for k in range(3):
        with pytest.raises(IntegrityError):
            r.insert_events([ev(f"other{k}", 2)])
        assert [e.originator_version for e in r.select_events(f"other{k}")] == [1, 2]
    assert r.insert_events([ev("after")]) == [9]
    assert [e.originator_version for e in r.select_events("main")] == [1]
    pairs = log_versions(r)
    assert len(pairs) == len(set(pairs)) == 9
    assert [n.id for n in r.select_notifications(1, 20)] == list(range(1, 10))
    r.close()


class SignalInSleep:
    """Stands for the store module's `time`: the leader's time.sleep(0) (taken when the last
    group had company) gets a SIGINT delivered to the calling (main) thread, once."""

    monotonic = staticmethod(time.monotonic)

    def sleep(self, seconds):
        tes.time = time
        signal.raise_signal(signal.SIGINT)
        time.sleep(seconds)


def test_interrupt_of_the_leader_before_it_takes_its_group(tmp_path, monkeypatch):
    """Ctrl-C reaching the leader (the main thread) before it took its group (in the yield it
    makes when the last group had company): its caller got an AssertionError instead of the
    KeyboardInterrupt (the lead was handed to its own, still queued, insert)."""
    r = recorder(tmp_path)
    store = r.store
    store.become_writer()
    gate = HeldSync(store)
    first_t, first_out = in_thread(lambda: r.insert_events([ev("first")]))
    assert gate.held.wait(30)
    behind = []

    def queue_behind():
        wait_until(lambda: len(store._queue) == 1, "the main thread's insert queued")
        behind.append(in_thread(lambda: r.insert_events([ev("behind")])))
        wait_until(lambda: len(store._queue) == 2, "an insert queued behind")
        store._group_size = 2               # the last group had company: the leader yields
        monkeypatch.setattr(tes, "time", SignalInSleep())
        gate.go()

    helper = threading.Thread(target=queue_behind)
    helper.start()
    with pytest.raises(KeyboardInterrupt):
        r.insert_events([ev("main")])
    helper.join(30)
    first_t.join(30)
    behind[0][0].join(30)
    gate.undo()
    assert first_out == [[1]] and behind[0][1] == [[2]]
    assert r.select_events("main") == []        # nothing of the interrupted insert
    assert r.insert_events([ev("main")]) == [3]
    r.close()


def test_interrupt_of_a_lone_leader_before_it_takes_its_group(tmp_path, monkeypatch):
    """The same with no other insert queued: AssertionError, not KeyboardInterrupt."""
    r = recorder(tmp_path)
    store = r.store
    store.become_writer()
    store._group_size = 2
    monkeypatch.setattr(tes, "time", SignalInSleep())
    with pytest.raises(KeyboardInterrupt):
        r.insert_events([ev("a")])
    assert r.insert_events([ev("a")]) == [1]
    r.close()


def test_interrupt_during_the_index_commit_after_an_insert(tmp_path, monkeypatch):
    """Ctrl-C while the leader commits the index after its insert (a signal arriving during the
    LMDB commit): the inserts taken off the pending list for that commit were neither committed
    nor put back; the next commit moved the index's `indexed_upto` past them, so after a reopen
    (which re-indexes only from there) select_events missed an acknowledged insert for good."""
    monkeypatch.setattr(tes, "FLUSH_SECONDS", 0.0)     # the leader commits after each insert
    r = recorder(tmp_path)
    store = r.store
    store.become_writer()
    write = store._write

    def interrupted_write(fn, doing="write"):
        del store._write
        signal.raise_signal(signal.SIGINT)
        return write(fn, doing)

    store._write = interrupted_write
    with pytest.raises(KeyboardInterrupt):
        r.insert_events([ev("a")])              # recorded; the commit after it interrupted
    assert r.insert_events([ev("b")]) == [2]    # its commit covers both
    assert len(r.select_events("a")) == 1
    r.close()
    r = TidelogApplicationRecorder(TidelogStore.acquire(str(tmp_path / "s"), segment_bytes=SEG))
    assert [e.originator_id for e in r.select_events("a")] == ["a"]
    with pytest.raises(IntegrityError):
        r.insert_events([ev("a")])
    r.close()


# -- close() racing a leader ------------------------------------------------------------------------

def test_close_after_the_leaders_sync(tmp_path, monkeypatch):
    """close() of the store (another thread) right after a leader's sync: the leader's insert
    was durable (and indexed by close()), but its caller got a raw tidelog.LogClosedError (not
    an eventsourcing error) from the index commit the leader tries after its group."""
    monkeypatch.setattr(tes, "FLUSH_SECONDS", 0.0)     # the leader commits the index after it
    path = tmp_path / "s"
    r = recorder(tmp_path)
    store = r.store
    store.become_writer()
    sync = store.log.sync
    synced, go = threading.Event(), threading.Event()

    def sync_then_wait():
        sync()
        if not synced.is_set():
            synced.set()
            assert go.wait(30)

    store.log.sync = sync_then_wait
    t, out = in_thread(lambda: r.insert_events([ev("a")]))
    assert synced.wait(30)
    store.close()
    go.set()
    t.join(30)
    assert out == [[1]], out
    r.close()
    r = TidelogApplicationRecorder(TidelogStore.acquire(str(path), segment_bytes=SEG))
    assert [e.originator_id for e in r.select_events("a")] == ["a"]
    r.close()


def test_close_before_the_leaders_sync(tmp_path):
    """close() between a leader's append and its sync: close() syncs and indexes the group, so
    the inserts are recorded; their callers were told the store was closed (InterfaceError) as
    if nothing had been written."""
    r = recorder(tmp_path)
    store = r.store
    store.become_writer()
    gate = HeldSync(store)
    t, out = in_thread(lambda: r.insert_events([ev("a")]))
    assert gate.held.wait(30)
    store.close()           # its own sync passes through: the group is made durable, indexed
    gate.go()
    t.join(30)
    r.close()
    r = TidelogApplicationRecorder(TidelogStore.acquire(str(tmp_path / "s"), segment_bytes=SEG))
    recorded = [e.originator_id for e in r.select_events("a")] == ["a"]
    r.close()
    assert recorded
    assert out == [[1]], out


# -- many threads, conflicts mixed in, signals at random moments -----------------------------------

class Tally:
    """What each insert of a stress run was told: acknowledged (ids), refused (IntegrityError),
    "nothing was written" (OperationalError), or unknown (interrupted: KeyboardInterrupt)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.acked = {}         # state -> (ids, [(oid, version)])
        self.absent = set()     # states that must not be in the log
        self.unknown = set()
        self.other = []

    @staticmethod
    def key(state):
        """An insert's key: its events' states are b"<key>/<index>"."""
        return state.split(b"/")[0]

    def run(self, r, events, tracking=None):
        """Insert `events`, tallying what it was told (unknown until then: an interrupt of this
        thread at any point leaves it so)."""
        key = self.key(events[0].state)
        with self.lock:
            self.unknown.add(key)
        outcome = None
        try:
            if tracking is None:
                outcome = ids = r.insert_events(events)
            else:
                outcome = ids = r.insert_events(events, tracking=tracking)
        except IntegrityError:
            outcome = "conflict"
        except PersistenceError as exc:
            outcome = "absent" if "nothing was written" in str(exc) else exc
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            outcome = exc
        with self.lock:
            if isinstance(outcome, list):
                self.acked[key] = (ids, [(e.originator_id, e.originator_version)
                                         for e in events])
            elif outcome in ("conflict", "absent"):
                self.absent.add(key)
            else:
                self.other.append(outcome)
            self.unknown.discard(key)
        return outcome if outcome in ("conflict", "absent") or isinstance(outcome, list) \
            else "error"

    def check(self, r):
        """The log holds every acknowledged insert at its ids, nothing refused, each aggregate
        version at most once, notification ids dense; select_events agrees with the log."""
        assert self.other == [], self.other[:5]
        notes = r.select_notifications(1, 10 ** 6)
        assert [n.id for n in notes] == list(range(1, len(notes) + 1))
        assert len(notes) == r.store.log.end_offset
        by_state = {}
        versions = {}
        for n in notes:
            by_state.setdefault(self.key(n.state), []).append((n.id, n.originator_id, n.originator_version))
            versions.setdefault(n.originator_id, []).append(n.originator_version)
        for oid, vs in versions.items():
            assert len(vs) == len(set(vs)), (oid, vs)          # never the same version twice
            got = [e.originator_version for e in r.select_events(oid)]
            assert got == sorted(vs), (oid, got, vs)
        for state, (ids, pairs) in self.acked.items():
            assert by_state.get(state) == [(i, o, v) for i, (o, v) in zip(ids, pairs)], state
        for state in self.absent:
            assert state not in by_state, state
        assert set(by_state) <= set(self.acked) | self.unknown
        return len(notes)


def test_signals_to_the_leader_among_conflicting_threads(tmp_path):
    """Four threads and the main thread insert events of a few shared aggregates (optimistic
    concurrency: a conflict reloads the aggregate's version and tries again), while SIGINT is
    delivered to the main thread (often the leader) at random moments. No thread may hang; every
    acknowledged insert is in the log at its ids, nothing refused or "not written" is, no
    aggregate version is there twice, and the index agrees with the log (also after a reopen)."""
    import random
    rng = random.Random()
    r = recorder(tmp_path, seg=4 << 20)
    tally = Tally()
    tally.run(r, [ev("warm-up", state=b"w/0")])
    aggs = [f"agg{i}" for i in range(6)]
    armed = [False]
    stop = threading.Event()

    def on_sigint(signum, frame):
        if armed[0]:
            raise KeyboardInterrupt

    def one_insert(who, n, versions):
        oid = aggs[(n * 7 + who) % len(aggs)]
        v = versions.get(oid, 0)
        k = 1 + n % 3
        evs = [ev(oid, v + 1 + j, state=b"%d-%d/%d" % (who, n, j)) for j in range(k)]
        return oid, tally.run(r, evs)

    def worker(who):
        versions = {}
        n = 0
        while not stop.is_set():
            oid, out = one_insert(who, n, versions)
            n += 1
            if isinstance(out, list):
                versions[oid] = versions.get(oid, 0) + len(out)
            else:               # a conflict: reload the aggregate's version
                last = r.select_events(oid, desc=True, limit=1)
                versions[oid] = last[0].originator_version if last else 0

    main = threading.get_ident()
    sent = [0]

    def signaller():
        while not stop.is_set() and sent[0] < 300:
            time.sleep(rng.uniform(0, 0.003))
            signal.pthread_kill(main, signal.SIGINT)
            sent[0] += 1

    old = signal.signal(signal.SIGINT, on_sigint)
    workers = [threading.Thread(target=worker, args=(w,)) for w in range(1, 5)]
    try:
        for t in workers:
            t.start()
        sig = threading.Thread(target=signaller)
        sig.start()
        versions = {}
        n = 0
        interrupted = 0
        while sig.is_alive():
            armed[0] = True
            try:
                oid, out = one_insert(0, n, versions)
                armed[0] = False
                if isinstance(out, list):
                    versions[oid] = versions.get(oid, 0) + len(out)
                else:
                    versions[oid] = 0
            except KeyboardInterrupt:
                armed[0] = False
                interrupted += 1
                versions = {}   # (the outcome is unknown: reload)
            n += 1
            if not versions:
                for oid in aggs:
                    last = r.select_events(oid, desc=True, limit=1)
                    versions[oid] = last[0].originator_version if last else 0
        stop.set()
        sig.join()
        for t in workers:
            t.join(60)
            assert not t.is_alive(), "a worker thread hangs"
    finally:
        armed[0] = False
        stop.set()
        signal.signal(signal.SIGINT, old)
    assert interrupted > 0
    tally.run(r, [ev("last", state=b"l/0")])    # publishes whatever an interrupted leader appended
    total = tally.check(r)
    assert total > 100
    path = r.store.path
    r.close()
    r = TidelogApplicationRecorder(TidelogStore.acquire(path, segment_bytes=4 << 20))
    assert tally.check(r) == total
    r.close()


# -- SIGKILL of a process whose threads commit in groups -------------------------------------------
#
# Six threads of one process insert through a process recorder: thread t records upstream ids i
# of its own upstream "up<t>" (1..4 events of aggregate (t, i), resumed after a restart from the
# recorded tracking id), and every third insert also races the other threads for the shared
# upstream "hot" (ids from one counter: an id that arrives after a greater one is refused) and for
# versions of one shared aggregate (each thread believes its own next version: conflicts). Each
# line written is what one insert was told. The process is killed at a random moment.

GROUP_WRITER = r"""
import itertools, os, sys, threading
from uuid import UUID
from eventsourcing.persistence import StoredEvent, Tracking, IntegrityError
from tidelog.eventsourcing import TidelogStore, TidelogProcessRecorder
path, rnd = sys.argv[1], int(sys.argv[2])
r = TidelogProcessRecorder(TidelogStore.acquire(path, segment_bytes=1 << 16))
hot = itertools.count(rnd * 10 ** 6 + 1)
shared = UUID(int=1 << 100)

def say(*words):
    os.write(1, (" ".join(map(str, words)) + "\n").encode())

def worker(t):
    i = (r.max_tracking_id(f"up{t}") or 0) + 1
    sv = 0
    while True:
        oid = UUID(int=(t << 64) | i)
        n = 1 + i % 4
        evs = [StoredEvent(oid, v, "t", b"%d-%d-%d" % (t, i, v) * (1 + i % 7)) for v in range(1, n + 1)]
        ids = r.insert_events(evs, tracking=Tracking(f"up{t}", i))
        say("ack", t, i, ids[0], ids[-1])
        if i % 3 == 0:
            k = next(hot)
            sv += 1
            evs = [StoredEvent(shared, sv, "s", b"hot%d" % k)]
            try:
                ids = r.insert_events(evs, tracking=Tracking("hot", k))
                say("hot", k, sv, ids[0])
            except IntegrityError:
                say("refused", k)
                last = r.select_events(shared, desc=True, limit=1)
                sv = last[0].originator_version if last else 0
        i += 1

say("start")
for t in range(6):
    threading.Thread(target=worker, args=(t,), daemon=True).start()
threading.Event().wait()
"""


def run_group_writer(path, rnd, seconds):
    child = subprocess.Popen([sys.executable, "-c", GROUP_WRITER, path, str(rnd)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = child.stdout.readline()
        assert first == b"start\n", child.stderr.read()[-3000:]
        time.sleep(seconds)
    finally:
        child.kill()
        out, err = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, err[-3000:]
    lines = out.decode().split("\n")
    if lines and lines[-1]:
        lines.pop()                             # cut by the kill: not a whole line
    return [line.split() for line in lines if line], err


def check_group_store(path, said):
    """Exactly once after the kill: every acknowledged insert there at its ids, whole; every
    insert there whole, with its tracking; nothing refused there; no version twice; dense ids;
    the index caught up with the log and agreeing with it."""
    import json
    from uuid import UUID
    r = TidelogProcessRecorder(TidelogStore.acquire(path, segment_bytes=1 << 16))
    store = r.store
    try:
        end = store.log.end_offset
        assert store.indexed_upto() == end
        notes = r.select_notifications(1, 10 ** 7)
        assert [n.id for n in notes] == list(range(1, end + 1))
        assert r.max_notification_id() == (end or None)
        inserts = {}
        hot_present = {}
        seen = set()
        for n in notes:
            key = (n.originator_id, n.originator_version)
            assert key not in seen, key
            seen.add(key)
            if n.originator_id == UUID(int=1 << 100):
                k = int(n.state[3:])
                hot_present[k] = (n.id, n.originator_version)
            else:
                t, i = n.originator_id.int >> 64, n.originator_id.int & ((1 << 64) - 1)
                inserts.setdefault((t, i), []).append((n.id, n.originator_version))
        for (t, i), got in inserts.items():         # whole, contiguous, versions 1..n
            n = 1 + i % 4
            assert [v for _, v in got] == list(range(1, n + 1)), (t, i, got)
            assert [x for x, _ in got] == list(range(got[0][0], got[0][0] + n)), (t, i, got)
        for t in range(6):
            mine = sorted(i for (tt, i) in inserts if tt == t)
            assert mine == list(range(1, len(mine) + 1)), (t, mine)  # each upstream id once
            assert (r.max_tracking_id(f"up{t}") or 0) == len(mine)
        hot_ks = sorted(hot_present)
        assert (r.max_tracking_id("hot") or None) == (hot_ks[-1] if hot_ks else None)
        assert [v for _, v in sorted(hot_present.values())] == \
            list(range(1, len(hot_present) + 1))         # the shared aggregate: dense versions
        for words in said:
            if words[0] == "ack":
                t, i, a, b = map(int, words[1:])
                got = inserts.get((t, i))
                assert got is not None and (got[0][0], got[-1][0]) == (a, b), (words, got)
            elif words[0] == "hot":
                k, sv, a = map(int, words[1:])
                assert hot_present.get(k) == (a, sv), (words, hot_present.get(k))
            elif words[0] == "refused":
                assert int(words[1]) not in hot_present, words
        per_oid = {}
        for n in notes:
            per_oid[n.originator_id] = per_oid.get(n.originator_id, 0) + 1
        for oid, count in per_oid.items():
            vs = [e.originator_version for e in r.select_events(oid)]
            assert vs == list(range(1, count + 1)), oid
        return json.dumps({"end": end, "acks": sum(w[0] == "ack" for w in said)})
    finally:
        r.close()


def test_sigkill_of_threads_committing_in_groups(tmp_path):
    """SIGKILL at a random moment of a process whose six threads commit in groups (conflicting
    tracking ids and versions mixed in), three rounds on one store: after each, exactly once."""
    import random
    rng = random.Random()
    path = str(tmp_path / "s")
    for rnd in range(3):
        said, err = run_group_writer(path, rnd, rng.uniform(0.2, 0.8))
        assert any(w[0] == "ack" for w in said), err[-3000:]
        check_group_store(path, said)
