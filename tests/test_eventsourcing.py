"""tidelog.eventsourcing judged by the eventsourcing library's own shipped test cases (recorders,
factory, applications, projections; text-id variants; the opt-in subscribe test), plus the backend's
own checks: the per-process store registry, a reader in another process, and crash tests (SIGKILL
of real writer processes at each crash point of the design)."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from unittest import TestCase
from uuid import uuid4

import pytest

pytest.importorskip("eventsourcing")

from eventsourcing.persistence import (InfrastructureFactory, IntegrityError, OperationalError,
                                       StoredEvent, Tracking)
from eventsourcing.tests.application import ApplicationTestCase, ExampleApplicationTestCase
from eventsourcing.tests.persistence import (AggregateRecorderTestCase,
                                             ApplicationRecorderTestCase,
                                             InfrastructureFactoryTestCase,
                                             NonInterleavingNotificationIDsBaseCase,
                                             ProcessRecorderTestCase, TrackingRecorderTestCase)
from eventsourcing.tests.projection import (AggregateEventCountersProjectionTestCase,
                                            EventCountersView, EventCountersViewTestCase,
                                            EventSourcedProjectionTestCase)
from eventsourcing.utils import Environment

from tidelog.eventsourcing import (TidelogAggregateRecorder, TidelogApplicationRecorder,
                                   TidelogFactory, TidelogProcessRecorder, TidelogStore,
                                   TidelogTrackingRecorder)

SEG = 1 << 20     # small segments: every test makes fresh stores


class WithTmp(TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="tl-es-")
        super().setUp()

    def tearDown(self):
        super().tearDown()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def store(self, name="s", **kw):
        kw.setdefault("segment_bytes", SEG)
        return TidelogStore.acquire(os.path.join(self.tmp, name), **kw)


def text_id(self):
    return "test-" + str(uuid4())


class TestAggregateRecorder(WithTmp, AggregateRecorderTestCase):
    def create_recorder(self):
        return TidelogAggregateRecorder(self.store())


class TestAggregateRecorderTextIds(TestAggregateRecorder):
    new_originator_id = text_id


class TestApplicationRecorder(WithTmp, ApplicationRecorderTestCase):
    def create_recorder(self):
        return TidelogApplicationRecorder(self.store())

    def test_insert_subscribe(self):
        super().optional_test_insert_subscribe()


class TestApplicationRecorderTextIds(TestApplicationRecorder):
    new_originator_id = text_id


class TestTrackingRecorder(WithTmp, TrackingRecorderTestCase):
    def create_recorder(self):
        return TidelogTrackingRecorder(self.store(with_log=False))


class TestProcessRecorder(WithTmp, ProcessRecorderTestCase):
    def create_recorder(self):
        return TidelogProcessRecorder(self.store())


class TestProcessRecorderTextIds(TestProcessRecorder):
    new_originator_id = text_id


class TestNonInterleavingNotificationIDs(WithTmp, NonInterleavingNotificationIDsBaseCase):
    insert_num = 10000

    def create_recorder(self):
        return TidelogApplicationRecorder(self.store(segment_bytes=8 << 20))


class MyTrackingRecorder(TidelogTrackingRecorder):
    pass


class TestFactory(InfrastructureFactoryTestCase[TidelogFactory]):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="tl-es-")
        self.env = Environment("TestCase")
        self.env[InfrastructureFactory.PERSISTENCE_MODULE] = "tidelog.eventsourcing"
        self.env["TIDELOG_PATH"] = self.tmp
        self.env["TIDELOG_SEGMENT_BYTES"] = str(SEG)
        super().setUp()

    def tearDown(self):
        super().tearDown()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def expected_factory_class(self):
        return TidelogFactory

    def expected_aggregate_recorder_class(self):
        return TidelogAggregateRecorder

    def expected_application_recorder_class(self):
        return TidelogApplicationRecorder

    def expected_tracking_recorder_class(self):
        return TidelogTrackingRecorder

    def tracking_recorder_subclass(self):
        return MyTrackingRecorder

    def expected_process_recorder_class(self):
        return TidelogProcessRecorder


class WithTidelogEnv(WithTmp):
    expected_factory_topic = "tidelog.eventsourcing:TidelogFactory"

    def setUp(self):
        super().setUp()
        os.environ["PERSISTENCE_MODULE"] = "tidelog.eventsourcing"
        os.environ["TIDELOG_PATH"] = self.tmp
        os.environ["TIDELOG_SEGMENT_BYTES"] = str(SEG)

    def tearDown(self):
        for k in ("PERSISTENCE_MODULE", "TIDELOG_PATH", "TIDELOG_SEGMENT_BYTES"):
            os.environ.pop(k, None)
        super().tearDown()


class TestApplication(WithTidelogEnv, ApplicationTestCase):
    pass


class TestExampleApplication(WithTidelogEnv, ExampleApplicationTestCase):
    pass


class TidelogEventCountersView(TidelogTrackingRecorder, EventCountersView):
    """The projection tests' view: counters and the tracking record in one LMDB transaction."""

    def _get(self, key):
        db = self.view_db()
        with self.read_transaction() as txn:
            v = txn.get(key, db=db)
        return 0 if v is None else int(v)

    def _incr(self, key, tracking):
        db = self.view_db()
        with self.transaction(tracking) as txn:
            txn.put(key, b"%d" % (int(txn.get(key, b"0", db=db)) + 1), db=db)

    def get_created_event_counter(self):
        return self._get(b"created")

    def get_subsequent_event_counter(self):
        return self._get(b"subsequent")

    def incr_created_event_counter(self, tracking):
        self._incr(b"created", tracking)

    def incr_subsequent_event_counter(self, tracking):
        self._incr(b"subsequent", tracking)


class TestEventCountersView(WithTmp, EventCountersViewTestCase):
    def construct_event_counters_view(self):
        return TidelogEventCountersView(self.store(with_log=False))


class TestAggregateEventCountersProjection(WithTidelogEnv,
                                           AggregateEventCountersProjectionTestCase):
    view_class = TidelogEventCountersView


class TestEventSourcedProjection(WithTidelogEnv, EventSourcedProjectionTestCase):
    pass


# -- the backend's own checks ------------------------------------------------------------------

def ev(oid, version, state=b"{}", topic="t"):
    return StoredEvent(originator_id=oid, originator_version=version, topic=topic, state=state)


class TestStoreSharing(WithTmp):
    def test_one_writer_shared_by_recorders_and_released(self):
        a = TidelogApplicationRecorder(self.store())
        b = TidelogProcessRecorder(self.store())
        assert a.store is b.store and a.store.readonly      # the writer from the first write on
        oid = uuid4()
        assert a.insert_events([ev(oid, 1)]) == [1]
        assert not b.store.readonly
        assert b.insert_events([ev(oid, 2)], tracking=Tracking("up", 5)) == [2]
        assert [e.originator_version for e in a.select_events(oid)] == [1, 2]
        store = a.store
        a.close()
        assert not store.closed
        b.close()
        assert store.closed
        # reopened: the index came back (from LMDB and the log)
        c = TidelogProcessRecorder(self.store())
        assert c.store is not store
        assert [e.originator_version for e in c.select_events(oid)] == [1, 2]
        assert c.max_tracking_id("up") == 5 and c.max_notification_id() == 2
        with pytest.raises(IntegrityError):
            c.insert_events([ev(oid, 2)])
        c.close()

    def test_nothing_visible_before_durable(self):
        """A reader sees an insert's tracking, events and notification ids only once it is
        durable (a projection's wait() returned before its events could be read)."""
        r = TidelogProcessRecorder(self.store())
        r.store.become_writer()     # the log the insert will sync: the writer's
        log = r.store.log
        seen = []
        sync = log.sync

        def observing_sync():
            seen.append((r.max_tracking_id("up"), r.max_notification_id(),
                         len(r.select_events("a")), len(r.select_notifications(1, 10))))
            return sync()

        log.sync = observing_sync
        r.insert_events([ev("a", 1), ev("a", 2)], tracking=Tracking("up", 5))
        assert seen == [(None, None, 0, 0)]
        assert (r.max_tracking_id("up"), r.max_notification_id(), len(r.select_events("a"))) \
            == (5, 2, 2)
        del log.sync
        r.close()

    def test_conflict_writes_nothing(self):
        r = TidelogProcessRecorder(self.store())
        oid = uuid4()
        r.insert_events([ev(oid, 1)], tracking=Tracking("up", 1))
        for bad, t in (([ev(oid, 2), ev(oid, 1)], None), ([ev(oid, 3), ev(oid, 3)], None),
                       ([ev(oid, 2)], Tracking("up", 1))):
            with pytest.raises(IntegrityError):
                r.insert_events(bad, tracking=t)
        assert r.max_notification_id() == 1 and r.store.log.end_offset == 1
        assert r.insert_events([ev(oid, 2)], tracking=Tracking("up", 2)) == [2]
        r.close()


class TestGroupCommit(WithTmp):
    """Concurrent inserts queue behind the leader's sync and go into the log as ONE batch with
    one sync; each insert stays contiguous and all-or-nothing, a conflicting one is refused
    alone."""

    def queued_behind_a_held_sync(self, recorder, inserts, n_queued, later_sync=None):
        """Run `inserts` (callables) in threads while the first one's sync is held, until
        `n_queued` more inserts wait in the queue; then let the sync go (later syncs call
        `later_sync` if given). Returns (results in order, append_batch calls, sync calls)."""
        import threading
        store = recorder.store
        store.become_writer()
        log = store.log
        held, go = threading.Event(), threading.Event()
        calls = {"append_batch": [], "sync": 0}
        append_batch, sync = log.append_batch, log.sync

        def counting_append(values, **kw):
            first = append_batch(values, **kw)
            calls["append_batch"].append(len(values))       # (the ones that succeeded)
            return first

        def held_sync():
            calls["sync"] += 1
            if not held.is_set():
                held.set()
                assert go.wait(30)
            elif later_sync is not None:
                return later_sync(sync)
            return sync()

        log.append_batch, log.sync = counting_append, held_sync
        out = [None] * len(inserts)

        def run(i):
            try:
                out[i] = inserts[i]()
            except Exception as exc:
                out[i] = exc

        ts = [threading.Thread(target=run, args=(0,))]
        ts[0].start()
        assert held.wait(30)
        ts += [threading.Thread(target=run, args=(i,)) for i in range(1, len(inserts))]
        for t in ts[1:]:
            t.start()
        deadline = time.monotonic() + 30
        while len(store._queue) < n_queued and time.monotonic() < deadline:
            time.sleep(0.001)
        assert len(store._queue) == n_queued
        go.set()
        for t in ts:
            t.join(30)
        del log.append_batch, log.sync
        return out, calls["append_batch"], calls["sync"]

    def test_queued_inserts_share_one_batch_and_one_sync(self):
        r = TidelogProcessRecorder(self.store())
        oid = uuid4()
        r.insert_events([ev(oid, 1)])
        inserts = [lambda: r.insert_events([ev(uuid4(), 1)])]
        for k in range(6):          # 1..3 events each, tracking on every other one
            evs = [ev(uuid4(), v) for v in range(1, 2 + k % 3)]
            inserts.append(lambda evs=evs, k=k: r.insert_events(
                evs, tracking=Tracking(f"up{k % 2}", 10 + k) if k % 2 == 0 else None))
        bad_version = lambda: r.insert_events([ev(uuid4(), 1), ev(oid, 1)])   # noqa: E731
        bad_tracking = lambda: r.insert_events(                               # noqa: E731
            [ev(uuid4(), 1)], tracking=Tracking("up0", 10))     # not above the queued 10
        inserts[3:3] = [bad_version]
        inserts.append(bad_tracking)
        out, batches, syncs = self.queued_behind_a_held_sync(r, inserts, len(inserts) - 1)
        assert isinstance(out[3], IntegrityError) and isinstance(out[-1], IntegrityError)
        good = [o for i, o in enumerate(out) if i not in (3, len(out) - 1)]
        assert all(isinstance(o, list) for o in good), out
        # one batch for the first insert, ONE for the queued good ones; one sync for them
        assert batches == [1, sum(map(len, good[1:]))]
        assert syncs == 2
        ids = sorted(i for o in good for i in o)
        assert ids == list(range(2, 2 + len(ids)))          # dense: nothing of the refused
        for o in good:
            assert o == list(range(o[0], o[0] + len(o)))    # each insert contiguous
        assert r.max_notification_id() == 1 + len(ids) == r.store.log.end_offset
        assert r.max_tracking_id("up0") == 14 and r.max_tracking_id("up1") is None
        assert [e.originator_version for e in r.select_events(oid)] == [1]
        r.close()

    def test_a_group_too_large_for_one_batch_is_split(self):
        """Queued inserts whose records together would not fit in a segment all succeed (the
        leader takes fewer at a time; a batch refused as too large is appended insert by
        insert)."""
        r = TidelogApplicationRecorder(self.store(segment_bytes=1 << 16))
        big = b"x" * 12000
        inserts = [lambda: r.insert_events([ev(uuid4(), 1, big)]) for _ in range(9)]
        out, batches, syncs = self.queued_behind_a_held_sync(r, inserts, 8)
        assert all(isinstance(o, list) and len(o) == 1 for o in out), out
        assert sorted(o[0] for o in out) == list(range(1, 10))
        assert len(batches) > 2 and sum(batches) == 9      # several batches, nothing lost
        assert all(len(r.select_events(n.originator_id)) == 1
                   for n in r.select_notifications(1, 20))
        r.close()

    def test_a_failed_sync_fails_every_insert_of_the_group(self):
        """The leader's sync fails: each queued insert gets an eventsourcing error (not a raw
        tidelog one), and the store stops (a reopen recovers from the log)."""
        from eventsourcing.persistence import PersistenceError
        import tidelog
        r = TidelogApplicationRecorder(self.store())
        r.insert_events([ev(uuid4(), 1)])

        def failing_sync(sync):
            raise tidelog.LogFailedError("injected: fdatasync failed")

        inserts = [lambda: r.insert_events([ev(uuid4(), 1)]) for _ in range(4)]
        out, batches, syncs = self.queued_behind_a_held_sync(r, inserts, 3, failing_sync)
        assert out[0] == [2]
        assert batches == [1, 3] and syncs == 2
        assert all(isinstance(o, PersistenceError) for o in out[1:]), out
        assert len({id(o) for o in out[1:]}) == 3           # each caller raises its own
        assert r.max_notification_id() == 2                 # never published
        with pytest.raises(OperationalError, match="stopped after a failure"):
            r.insert_events([ev(uuid4(), 1)])
        path = r.store.path
        r.store.close()
        r2 = TidelogApplicationRecorder(TidelogStore.acquire(path, segment_bytes=SEG))
        assert r2.max_notification_id() == 5                # appended: recovered from the log
        r2.close()


    def test_an_insert_interrupted_while_queued_leaves_nothing_and_no_stuck_queue(self):
        """Ctrl-C (KeyboardInterrupt) in a caller whose insert waits in the queue: the insert
        leaves the queue unwritten, and the inserts queued behind it still get a leader."""
        import threading
        r = TidelogApplicationRecorder(self.store())
        store = r.store
        store.become_writer()
        sync = store.log.sync
        held, go = threading.Event(), threading.Event()

        def held_sync():
            if not held.is_set():
                held.set()
                assert go.wait(30)
            return sync()

        store.log.sync = held_sync
        first = threading.Thread(target=lambda: r.insert_events([ev("first", 1)]))
        first.start()
        assert held.wait(30)
        main = threading.get_ident()
        out = []

        def interrupt_then_go():
            while len(store._queue) < 1:
                time.sleep(0.001)
            signal.pthread_kill(main, signal.SIGINT)        # the main thread waits: interrupt it
            while len(store._queue) < 1:                    # then one more insert queues
                time.sleep(0.001)
            go.set()

        t = threading.Thread(target=interrupt_then_go)
        t.start()
        with pytest.raises(KeyboardInterrupt):
            r.insert_events([ev("interrupted", 1)])
        t2 = threading.Thread(target=lambda: out.append(r.insert_events([ev("later", 1)])))
        t2.start()
        t.join(30)
        first.join(30)
        t2.join(30)
        del store.log.sync
        assert out == [[2]]
        assert r.select_events("interrupted") == [] and len(r.select_events("later")) == 1
        assert r.insert_events([ev("after", 1)]) == [3]
        r.close()


class TestFactoryEnv(WithTmp):
    def test_missing_path_names_the_variable(self):
        with pytest.raises(OSError, match="TIDELOG_PATH"):
            TidelogFactory(Environment("Shop", {}))

    def test_per_application_path_and_namespacing(self):
        other = os.path.join(self.tmp, "other")
        env = Environment("Shop", {"TIDELOG_PATH": self.tmp, "SHOP_TIDELOG_PATH": other,
                                   "TIDELOG_SEGMENT_BYTES": str(SEG)})
        f = TidelogFactory(env)
        r = f.application_recorder()
        s = f.aggregate_recorder("snapshots")
        t = f.tracking_recorder()
        assert sorted(os.listdir(other)) == ["shop_events", "shop_snapshots", "shop_tracking"]
        assert not os.path.isdir(os.path.join(other, "shop_tracking", "log"))
        assert r.store.path.endswith("shop_events") and not s.store.closed and not t.store.closed
        f.close()
        assert r.store.closed and s.store.closed and t.store.closed

    def test_bad_segment_bytes(self):
        with pytest.raises(ValueError, match="TIDELOG_SEGMENT_BYTES"):
            TidelogFactory(Environment("", {"TIDELOG_PATH": self.tmp,
                                            "TIDELOG_SEGMENT_BYTES": "big"}))

    def test_missing_library_names_the_extra(self):
        code = ("import sys; sys.modules['eventsourcing'] = None\n"
                "try:\n import tidelog.eventsourcing\n"
                "except ImportError as e:\n print(e)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert "tidelog[eventsourcing]" in out.stdout, out.stderr


class TestSubscribeTopics(WithTmp):
    def test_rare_topic_subscription_keeps_its_scan_position(self):
        r = TidelogApplicationRecorder(self.store())
        r.insert_events([ev("a", v, topic="common") for v in range(1, 2001)])
        r.insert_events([ev("b", 1, topic="rare")])
        with r.subscribe(topics=["rare"]) as sub:
            first = next(sub)
            assert (first.id, first.topic) == (2001, "rare")
            r.insert_events([ev("a", 2001, topic="common"), ev("b", 2, topic="rare")])
            second = next(sub)
            assert (second.id, second.originator_version) == (2003, 2)
        r.close()


READER = """
import sys, time
from tidelog.eventsourcing import TidelogStore, TidelogApplicationRecorder
r = TidelogApplicationRecorder(TidelogStore.acquire(sys.argv[1]))
print("readonly", r.store.readonly, flush=True)
n = int(sys.argv[2])
got = []
with r.subscribe(gt=0) as sub:
    for note in sub:
        got.append(note.id)
        if len(got) == n:
            break
print("ids", ",".join(map(str, got)), flush=True)
print("versions", len(r.select_events(sys.argv[3])), flush=True)
"""


class TestOtherProcess(WithTmp):
    def test_reader_process_subscribes_while_writer_open(self):
        w = TidelogApplicationRecorder(self.store())
        w.insert_events([ev("a", 1), ev("a", 2)])
        child = subprocess.Popen([sys.executable, "-c", READER, os.path.join(self.tmp, "s"),
                                  "30", "a"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
        assert child.stdout.readline().split() == ["readonly", "True"]
        for v in range(3, 31):
            w.insert_events([ev("a", v)])
            time.sleep(0.002)
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        lines = dict(line.split(" ", 1) for line in out.strip().split("\n"))
        assert lines["ids"] == ",".join(map(str, range(1, 31)))
        assert lines["versions"] == "30"
        w.close()

    def test_reader_cannot_write(self):
        """While another process is the writer (it wrote, or took the lock), an insert is
        refused clearly and writes nothing."""
        w = TidelogApplicationRecorder(self.store())
        w.store.become_writer()
        code = textwrap.dedent("""
            import sys
            from uuid import uuid4
            from eventsourcing.persistence import StoredEvent, OperationalError
            from tidelog.eventsourcing import TidelogStore, TidelogApplicationRecorder
            r = TidelogApplicationRecorder(TidelogStore.acquire(sys.argv[1]))
            try:
                r.insert_events([StoredEvent(uuid4(), 1, "t", b"")])
            except OperationalError as e:
                print("refused", "LogLockedError" in str(e))
        """)
        out = subprocess.run([sys.executable, "-c", code, os.path.join(self.tmp, "s")],
                             capture_output=True, text=True, timeout=60)
        assert out.stdout.strip() == "refused True", out.stderr
        w.close()


# -- crash tests: SIGKILL of real writer processes -------------------------------------------
#
# The writer does process-recorder inserts of 1..5 events of one aggregate each, tracking the
# upstream id i, and prints each acknowledged insert. It is killed at a random moment, or at a
# given crash point through TIDELOG_ES_CRASH (the writer wraps the store's methods to SIGKILL
# itself there). After each kill the store must reopen consistent with the log: every
# acknowledged insert present, whole; every insert present is whole with its tracking; the index
# never ahead of the log; versions dense per aggregate; a re-run continues exactly once.

CRASH_WRITER = """
import os, signal, sys
from uuid import UUID
from eventsourcing.persistence import StoredEvent, Tracking, IntegrityError
from tidelog.eventsourcing import TidelogStore, TidelogProcessRecorder
import tidelog.eventsourcing.store as tes   # (its write path reads FLUSH_*)

path, point, after = sys.argv[1], sys.argv[2], int(sys.argv[3])
wait = point.endswith("+wait")          # wait for a line on stdin before the first insert
point = point.removesuffix("+wait")
store = TidelogStore.acquire(path, segment_bytes=1 << 16)
r = TidelogProcessRecorder(store)
store.become_writer()       # the log the wrappers below patch: the writer's
count = [0]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def wrap(obj, name, before=True):
    orig = getattr(obj, name)
    def w(*a, **k):
        count[0] += 1
        if before and count[0] > after:
            die()
        out = orig(*a, **k)
        if not before and count[0] > after:
            die()
        return out
    setattr(obj, name, w)

if point == "before_append":
    wrap(store.log, "append_batch", before=True)
elif point == "after_append":           # appended, not yet synced: c
    wrap(store.log, "append_batch", before=False)
elif point == "after_sync":             # durable, index not committed: e
    wrap(store.log, "sync", before=False)
elif point == "before_flush":           # durable, before the LMDB index commit: e
    wrap(store, "flush_index", before=True)
elif point == "after_flush":            # index committed, caller not told: f
    wrap(store, "flush_index", before=False)
tes.FLUSH_EVERY = 3
if point == "noflush":                  # leave a long un-indexed tail for the recovery test
    tes.FLUSH_EVERY, tes.FLUSH_SECONDS = 10 ** 9, 10.0 ** 9
start = (r.max_tracking_id("up") or 0) + 1
print("start", start, flush=True)
if wait:
    sys.stdin.readline()
for i in range(start, start + 10 ** 6):
    n = (50 if point == "noflush" else 1) + i % 5
    if point == "noflush" and i >= start + 300:
        die()
    oid = UUID(int=i)
    evs = [StoredEvent(oid, v, "t%d" % (v % 3), b"x" * (i % 50)) for v in range(1, n + 1)]
    ids = r.insert_events(evs, tracking=Tracking("up", i))
    print("ack", i, ids[0], ids[-1], flush=True)
"""

CHECK = """
import sys, json
from uuid import UUID
from tidelog.eventsourcing import TidelogStore, TidelogProcessRecorder
store = TidelogStore.acquire(sys.argv[1], segment_bytes=1 << 16)
r = TidelogProcessRecorder(store)
end = store.log.end_offset
out = {"end": end, "indexed": store.indexed_upto(), "max_id": r.max_notification_id(),
       "tracking": r.max_tracking_id("up")}
notes = r.select_notifications(None, end + 10)
out["ids_dense"] = [n.id for n in notes] == list(range(1, end + 1))
per = {}
for n in notes:
    per.setdefault(n.originator_id.int, []).append(n.originator_version)
K = int(sys.argv[2])
out["whole"] = all(v == list(range(1, K + (i % 5) + 1)) for i, v in per.items())
out["aggs"] = sorted(per)
out["select_ok"] = all(len(r.select_events(UUID(int=i))) == len(v) for i, v in per.items())
r.close()
print(json.dumps(out))
"""


def _run_writer(path, point, after, rng_sleep, env=None):
    child = subprocess.Popen([sys.executable, "-c", CRASH_WRITER, path, point, str(after)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if rng_sleep is not None:
        first = child.stdout.readline()
        assert first.startswith("start"), child.stderr.read()
        time.sleep(rng_sleep)
        os.kill(child.pid, signal.SIGKILL)
        # through the same reader as the first line (communicate() would skip what it
        # buffered past it); the child is dead: both pipes end
        out, err = first + child.stdout.read(), child.stderr.read()
        child.wait(timeout=120)
    else:
        out, err = child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL, err[-2000:]
    # print() writes its arguments one by one: a kill may cut the last line after "ack " or
    # after its id; the id alone, whole, says the insert was acknowledged
    acks = [tuple(map(int, line.split()[1:])) for line in out.split("\n")
            if line.startswith("ack ") and len(line.split()) >= 2]
    start = int(out.split("\n")[0].split()[1])
    return start, acks


def _check(path, per_insert=1):
    out = subprocess.run([sys.executable, "-c", CHECK, path, str(per_insert)],
                         capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    import json
    return json.loads(out.stdout)


def _assert_consistent(state, acked_upto):
    assert state["indexed"] == state["end"]            # caught up on open, never ahead
    assert state["ids_dense"] and state["whole"] and state["select_ok"]
    assert (state["max_id"] or 0) == state["end"]
    aggs = state["aggs"]
    # exactly once: upstream ids 1..tracking, each once, and nothing acknowledged is lost
    assert aggs == list(range(1, len(aggs) + 1))
    assert (state["tracking"] or 0) == len(aggs)
    assert len(aggs) >= acked_upto


@pytest.mark.parametrize("point", ["before_append", "after_append", "after_sync", "before_flush", "after_flush"])
def test_crash_point(tmp_path, point):
    """SIGKILL at a crash point of the write path, three rounds on one store."""
    path = str(tmp_path / "s")
    acked = 0
    for rnd in range(3):
        start, acks = _run_writer(path, point, 4 + 3 * rnd, None)
        assert start == acked + 1 or start > acked   # resumed after what was recorded
        if acks:
            acked = max(acked, acks[-1][0])
        state = _check(path)
        _assert_consistent(state, acked)
        acked = state["tracking"] or 0


def test_crash_random_kill(tmp_path):
    """SIGKILL at random moments of a busy writer, five rounds on one store."""
    import random
    rng = random.Random(os.getpid())
    path = str(tmp_path / "s")
    acked = 0
    for _ in range(5):
        start, acks = _run_writer(path, "none", 0, rng.uniform(0.05, 0.4))
        if acks:
            acked = max(acked, acks[-1][0])
        state = _check(path)
        _assert_consistent(state, acked)


OPEN = """
import sys
from tidelog.eventsourcing import TidelogStore
recover = TidelogStore.recover
def announced(self):
    print("recovering", flush=True)
    return recover(self)
TidelogStore.recover = announced
TidelogStore.acquire(sys.argv[1], segment_bytes=1 << 16)
print("open", flush=True)
"""


def test_crash_during_recovery(tmp_path):
    """Crash case h: SIGKILL while a reopen re-indexes a long tail of the log (~15,000 records
    never indexed), several times over; then the store opens caught up and exactly once."""
    import random
    rng = random.Random(os.getpid())
    path = str(tmp_path / "s")
    _start, acks = _run_writer(path, "noflush", 0, None)
    assert len(acks) == 300
    killed_in_recovery = 0
    for _ in range(5):
        child = subprocess.Popen([sys.executable, "-c", OPEN, path], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        assert child.stdout.readline() == "recovering\n", child.stderr.read()
        time.sleep(rng.uniform(0, 0.01))
        os.kill(child.pid, signal.SIGKILL)
        out, err = child.communicate(timeout=60)
        killed_in_recovery += "open" not in out
    assert killed_in_recovery > 0
    _assert_consistent(_check(path, 50), acks[-1][0])


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    from powerloss import build_shim
    return build_shim(tmp_path_factory.mktemp("shim"))


def test_power_loss(tmp_path, shim):
    """Power loss (images of what the LD_PRELOAD interposer saw reach stable storage, for the log
    and the LMDB index alike) at random moments: every acknowledged insert survives, whole, with
    its tracking, and the index reopens caught up with the log. The index sees only whole-page
    variants: LMDB relies on a page (its meta page) being written whole."""
    import random
    from powerloss import power_loss_image
    rng = random.Random(os.getpid())
    for cycle in range(4):
        d = tmp_path / f"c{cycle}"
        path, shadow = str(d / "s"), str(d / "shadow")
        os.makedirs(os.path.join(shadow, "files"))
        env = dict(os.environ, LD_PRELOAD=shim, SYNCLOG_DIR=shadow)
        _start, acks = _run_writer(path, "none", 0, rng.uniform(0.1, 0.5), env)
        acked = acks[-1][0] if acks else 0
        for variant in ("drop", "cut", "pages"):
            img = str(d / f"img-{variant}")
            os.makedirs(img)
            power_loss_image(os.path.join(path, "log"), shadow, os.path.join(img, "log"), rng,
                             variant)
            power_loss_image(os.path.join(path, "index"), shadow, os.path.join(img, "index"),
                             rng, "pages" if variant == "cut" else variant)
            _assert_consistent(_check(img), acked)


def test_index_ahead_of_log_refuses(tmp_path):
    """Crash case l: an index past the log's end (acknowledged events lost) refuses to open."""
    path = str(tmp_path / "s")
    s = TidelogStore.acquire(path, segment_bytes=SEG)
    r = TidelogApplicationRecorder(s)
    r.insert_events([ev("a", 1), ev("a", 2)])
    r.close()
    shutil.rmtree(os.path.join(path, "log"))
    from eventsourcing.persistence import DatabaseError
    with pytest.raises(DatabaseError, match="refusing to open"):
        TidelogStore.acquire(path, segment_bytes=SEG)



# -- who is the writer: a store opens read-only and becomes the log's writer at its first write ----
#
# Real processes, driven line by line over their stdin/stdout. On 669a8b7 the first process to
# open a store kept the writer lock for good, even if it only read, and a store opened read-only
# never became the writer: each test below fails there.

class Child:
    """A Python child process running `code`, its stdout read line by line (with a timeout)."""

    def __init__(self, code, *args, env=None):
        import queue
        import threading
        self.p = subprocess.Popen([sys.executable, "-c", code, *map(str, args)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env)
        self.lines = queue.Queue()
        self.out = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.p.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def line(self, timeout=60):
        line = self.lines.get(timeout=timeout)
        if line is None:
            self.p.wait(timeout=60)
            raise AssertionError(f"the child ended (rc {self.p.returncode}): "
                                 f"{self.p.stderr.read()[-3000:]}")
        self.out.append(line)
        return line

    def expect(self, prefix, timeout=60):
        line = self.line(timeout)
        assert line.startswith(prefix), (prefix, line)
        return line.split()[1:]

    def send(self, text=""):
        self.p.stdin.write(text + "\n")
        self.p.stdin.flush()

    def end(self, timeout=60):
        """Close stdin, collect the rest of stdout; the lines and the return code."""
        try:
            self.p.stdin.close()
        except BrokenPipeError:
            pass
        self.p.wait(timeout=timeout)
        rest = []
        while True:
            line = self.lines.get(timeout=timeout)
            if line is None:
                break
            rest.append(line)
        self.out += rest
        return rest, self.p.returncode

    def kill(self):
        if self.p.poll() is None:
            os.kill(self.p.pid, signal.SIGKILL)
        self.p.wait(timeout=60)


@pytest.fixture
def children():
    made = []
    yield lambda *a, **k: made.append(Child(*a, **k)) or made[-1]
    for c in made:
        c.kill()
        for f in (c.p.stdin, c.p.stderr):
            try:
                f.close()
            except OSError:
                pass


READER_FIRST = """
import sys
from tidelog.eventsourcing import TidelogStore, TidelogApplicationRecorder
r = TidelogApplicationRecorder(TidelogStore.acquire(sys.argv[1]))
n = int(sys.argv[2])
print("open", r.store.readonly, r.max_notification_id(), flush=True)
got = []
with r.subscribe(gt=0) as sub:
    for note in sub:
        if not got:
            print("first", note.id, flush=True)
        got.append(note)
        if len(got) == n:
            break
print("ids", ",".join(str(g.id) for g in got), flush=True)
print("versions", ",".join(str(e.originator_version) for e in r.select_events(got[0].originator_id)))
print("readonly", r.store.readonly, flush=True)
"""

APPLICATION = """
import sys
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

class Counter(Aggregate):
    def __init__(self):
        self.n = 0

    @event("Incremented")
    def inc(self):
        self.n += 1

class Shop(Application):
    pass

app = Shop(env={"PERSISTENCE_MODULE": "tidelog.eventsourcing", "TIDELOG_PATH": sys.argv[1]})
c = Counter()
app.save(c)
for _ in range(int(sys.argv[2]) - 1):
    c.inc()
    app.save(c)
print("saved", c.id, app.repository.get(c.id).n, flush=True)
app.close()
"""


def test_reader_opened_first_does_not_stop_the_application(tmp_path, children):
    """A projection-like reader process opens the store before the application: the
    application's inserts succeed (on 669a8b7 every one failed: the reader held the writer
    lock), and the reader, subscribed meanwhile, sees every event as it is recorded."""
    n = 30
    reader = children(READER_FIRST, tmp_path / "shop_events", n)
    assert reader.expect("open") == ["True", "None"]
    app = children(APPLICATION, tmp_path, n)
    assert reader.expect("first", timeout=120) == ["1"]      # while the application runs on
    app_out, rc = app.end(timeout=120)
    assert rc == 0, app.p.stderr.read()[-3000:]
    assert app_out[0].split()[0] == "saved" and app_out[0].split()[2] == str(n - 1)
    assert reader.expect("ids") == [",".join(map(str, range(1, n + 1)))]
    assert reader.expect("versions") == [",".join(map(str, range(1, n + 1)))]
    assert reader.expect("readonly") == ["True"]
    assert reader.end()[1] == 0


WRITER_THEN_GONE = """
import os, signal, sys
from uuid import UUID
from eventsourcing.persistence import StoredEvent
from tidelog.eventsourcing import TidelogStore, TidelogApplicationRecorder
import tidelog.eventsourcing.store as tes   # (its write path reads FLUSH_*)
tes.FLUSH_EVERY, tes.FLUSH_SECONDS = 10 ** 9, 10.0 ** 9    # its index lags: nothing committed
r = TidelogApplicationRecorder(TidelogStore.acquire(sys.argv[1]))
ids = []
for v in range(1, 31):
    ids += r.insert_events([StoredEvent(UUID(int=1), v, "t", b"w")])
print("acked", ids[0], ids[-1], flush=True)
sys.stdin.readline()
if sys.argv[2] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
r.close()
"""

READER_THEN_WRITER = """
import sys
from uuid import UUID
from eventsourcing.persistence import IntegrityError, OperationalError, StoredEvent
from tidelog.eventsourcing import TidelogStore, TidelogApplicationRecorder
r = TidelogApplicationRecorder(TidelogStore.acquire(sys.argv[1]))
print("open", r.store.readonly, r.max_notification_id(), flush=True)

def attempt(v):
    try:
        return "ids", ",".join(map(str, r.insert_events([StoredEvent(UUID(int=1), v, "t", b"r")])))
    except IntegrityError:
        return "conflict", "-"
    except OperationalError as e:
        return "refused", "LogLockedError" in str(e)

for line in sys.stdin:
    print(*attempt(int(line)), r.store.readonly, flush=True)
print("versions", len(r.select_events(UUID(int=1))), r.max_notification_id(), flush=True)
r.close()
"""


@pytest.mark.parametrize("how", ["exit", "kill"])
def test_reader_becomes_the_writer_once_the_writer_is_gone(tmp_path, children, how):
    """A process that opened the store while another was its writer is refused clearly while
    that writer lives, and becomes the writer once it has exited (or was SIGKILLed with its
    index lagging the log): the index it catches up sees every acknowledged event (a
    conflicting version is refused), and its own insert continues the ids. On 669a8b7 the
    reader could never write."""
    path = tmp_path / "s"
    writer = children(WRITER_THEN_GONE, path, how)
    assert writer.expect("acked") == ["1", "30"]
    reader = children(READER_THEN_WRITER, path)
    assert reader.expect("open") == ["True", "30"]
    reader.send("31")
    assert reader.expect("refused") == ["True", "True"]      # LogLockedError named, readonly
    writer.send()
    rc = writer.end()[1]
    assert rc == (-signal.SIGKILL if how == "kill" else 0), writer.p.stderr.read()[-3000:]
    reader.send("30")
    assert reader.expect("conflict") == ["-", "False"]       # it is the writer now
    reader.send("31")
    assert reader.expect("ids") == ["31", "False"]
    out, rc = reader.end()
    assert rc == 0, reader.p.stderr.read()[-3000:]
    assert out == ["versions 31 31"]
    s = TidelogStore.acquire(path)
    r = TidelogApplicationRecorder(s)
    assert [n.id for n in r.select_notifications(1, 100)] == list(range(1, 32))
    assert [n.state for n in r.select_notifications(1, 100)] == [b"w"] * 30 + [b"r"]
    assert s.indexed_upto() == s.log.end_offset == 31
    r.close()


RACER = """
import sys, time
from eventsourcing.persistence import OperationalError, StoredEvent
from tidelog.eventsourcing import TidelogStore, TidelogApplicationRecorder
path, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
r = TidelogApplicationRecorder(TidelogStore.acquire(path))
print("ready", r.store.readonly, flush=True)
sys.stdin.readline()
refused, v, deadline = 0, 1, time.monotonic() + 90
while v <= n:
    try:
        ids = r.insert_events([StoredEvent(name, v, "t", name.encode())])
    except OperationalError as e:
        assert "LogLockedError" in str(e) and r.store.readonly, e
        refused += 1
        assert time.monotonic() < deadline, "never became the writer"
        time.sleep(0.001)
        continue
    print("ack", v, ids[0], flush=True)
    v += 1
print("refused", refused, flush=True)
r.close()
"""


def test_two_processes_race_their_first_insert(tmp_path, children):
    """Two processes open one store, then race their first insert: one becomes the writer, the
    other gets OperationalError (nothing written) until the first has closed the store, then
    becomes the writer itself. Every acknowledged insert is there under the id it was given,
    the ids are gap-free, each aggregate whole, the index caught up. Five rounds."""
    n = 40
    for rnd in range(5):
        path = tmp_path / f"s{rnd}"
        racers = [children(RACER, path, name, n) for name in ("a", "b")]
        for c in racers:
            assert c.expect("ready") == ["True"]
        for c in racers:
            c.send()
        acked = {}
        refusals = 0
        for c, name in zip(racers, ("a", "b")):
            out, rc = c.end(timeout=120)
            assert rc == 0, c.p.stderr.read()[-3000:]
            acks = [line.split()[1:] for line in out if line.startswith("ack ")]
            assert [int(v) for v, _id in acks] == list(range(1, n + 1))
            for v, nid in acks:
                assert int(nid) not in acked
                acked[int(nid)] = (name, int(v))
            refusals += int(out[-1].split()[1])
        assert sorted(acked) == list(range(1, 2 * n + 1))      # gap-free
        s = TidelogStore.acquire(path)
        r = TidelogApplicationRecorder(s)
        notes = r.select_notifications(1, 10 * n)
        assert {x.id: (x.originator_id, x.originator_version) for x in notes} == acked
        for name in ("a", "b"):
            assert [e.originator_version for e in r.select_events(name)] == list(range(1, n + 1))
        assert s.indexed_upto() == s.log.end_offset == 2 * n
        r.close()


SLOW_CATCH_UP = """
import sys, time
from tidelog.eventsourcing import TidelogStore
recover = TidelogStore.recover
def slow(self):
    print("recovering", flush=True)
    time.sleep(1.0)
    return recover(self)
TidelogStore.recover = slow
s = TidelogStore.acquire(sys.argv[1])
print("open", s.readonly, flush=True)
sys.stdin.readline()
"""


def test_a_reader_catching_up_at_open_delays_a_first_insert_but_never_fails_it(tmp_path,
                                                                                 children):
    """A process that opens a store holds the writer lock briefly to catch the index up; an
    application's first insert meanwhile waits for it (the store's turn lock) instead of
    failing with LogLockedError, and the reader then opens read-only."""
    path = str(tmp_path / "s")
    app = TidelogApplicationRecorder(TidelogStore.acquire(path))
    assert app.store.readonly
    reader = children(SLOW_CATCH_UP, path)
    reader.expect("recovering")             # holds the log's writer lock for a second
    assert app.insert_events([ev("a", 1)]) == [1]
    assert reader.expect("open") == ["True"]
    reader.send()
    assert reader.end()[1] == 0
    app.close()


BECOME_WRITER_KILLED = """
import sys
from uuid import UUID
from eventsourcing.persistence import StoredEvent, Tracking
from tidelog.eventsourcing import TidelogStore, TidelogProcessRecorder
r = TidelogProcessRecorder(TidelogStore.acquire(sys.argv[1], segment_bytes=1 << 16))
print("open", r.store.readonly, flush=True)
recover = TidelogStore.recover
def announced(self):
    print("recovering", flush=True)
    return recover(self)
TidelogStore.recover = announced        # from now on: only become_writer recovers
sys.stdin.readline()
i = (r.max_tracking_id("up") or 0) + 1
evs = [StoredEvent(UUID(int=i), v, "t%d" % (v % 3), b"x" * (i % 50)) for v in range(1, 51 + i % 5)]
ids = r.insert_events(evs, tracking=Tracking("up", i))
print("ack", i, ids[0], ids[-1], flush=True)
"""


def test_crash_while_becoming_the_writer(tmp_path, children):
    """Crash case h at the first write: a process opened the store while another was its
    writer; that writer leaves ~15,000 records never indexed and dies (SIGKILL); the first
    process's first insert makes it the writer and re-indexes that tail, and is SIGKILLed
    there. Each time the store reopens consistent and exactly once; a last round lets the
    insert finish, and it is kept."""
    import random
    rng = random.Random(os.getpid())
    path = str(tmp_path / "s")
    acked = 0
    killed_in_recovery = 0
    for rnd in range(4):
        writer = children(CRASH_WRITER, path, "noflush+wait", 0)
        writer.expect("start")
        late = children(BECOME_WRITER_KILLED, path)
        assert late.expect("open") == ["True"]
        writer.send()
        out, rc = writer.end(timeout=120)
        assert rc == -signal.SIGKILL, writer.p.stderr.read()[-3000:]
        acks = [int(line.split()[1]) for line in out if line.startswith("ack ")]
        assert len(acks) == 300
        acked = acks[-1]
        late.send()
        late.expect("recovering", timeout=120)
        if rnd < 3:
            time.sleep(rng.uniform(0, 0.01))
            late.kill()
            out, _rc = late.end()
            killed_in_recovery += not any(line.startswith("ack") for line in out)
        else:
            acked = int(late.expect("ack")[0])
            assert late.end()[1] == 0
        _assert_consistent(_check(path, 50), acked)
    assert killed_in_recovery > 0


# -- the index goes through tidelog.lmdbenv: a small map that grows, not 1 TiB per store ----------

MANY_STORES = textwrap.dedent("""
    import os, resource, sys
    from uuid import uuid4
    from eventsourcing.persistence import StoredEvent
    from tidelog.eventsourcing import TidelogStore, TidelogApplicationRecorder

    def vm_size():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    limit = vm_size() + (2 << 30)          # 2 GiB of address space for 24 stores
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    recs = []
    for i in range(24):
        s = TidelogStore.acquire(os.path.join(sys.argv[1], "s%d" % i), segment_bytes=1 << 20)
        r = TidelogApplicationRecorder(s)
        r.insert_events([StoredEvent(uuid4(), 1, "t", b"x")])
        recs.append(r)
    print("ok", sum(r.max_notification_id() for r in recs))
""")


class TestIndexMap(WithTmp):
    def test_many_stores_under_address_space_limit(self):
        out = subprocess.run([sys.executable, "-c", MANY_STORES, self.tmp], capture_output=True,
                             text=True, timeout=120)
        assert out.stdout.strip() == "ok 24", out.stderr[-2000:]

    def test_index_grows_past_its_initial_map(self):
        from tidelog import lmdbenv
        s = self.store()
        assert s.env.map_size == lmdbenv.INITIAL_MAP
        r = TidelogApplicationRecorder(s)
        oids = [uuid4() for _ in range(20000)]
        for i in range(0, len(oids), 500):
            r.insert_events([StoredEvent(o, 1, "t", b"") for o in oids[i:i + 500]])
        s.flush_index()
        assert s.env.map_size > lmdbenv.INITIAL_MAP
        assert s.indexed_upto() == 20000
        r.close()
        s = self.store()              # reopened: the index is complete and readable
        r = TidelogApplicationRecorder(s)
        for o in oids[::997] + oids[-1:]:
            assert [e.originator_version for e in r.select_events(o)] == [1]
        r.close()

    def test_view_transactions_grow_the_map(self):
        s = self.store("t", with_log=False)
        rec = TidelogTrackingRecorder(s)
        db = rec.view_db()
        for i in range(1, 301):       # 3 MB of view state through transaction(): never full
            with rec.transaction(Tracking("up", i)) as txn:
                txn.put(b"k%d" % i, b"v" * 10000, db=db)
        assert rec.max_tracking_id("up") == 300
        with rec.read_transaction() as txn:
            assert txn.get(b"k299", db=db) == b"v" * 10000
        rec.close()

    def test_huge_view_transaction_asks_for_a_retry(self):
        s = self.store("t", with_log=False)
        rec = TidelogTrackingRecorder(s)
        db = rec.view_db()
        with pytest.raises(OperationalError, match="run the transaction again"):
            with rec.transaction(Tracking("up", 1)) as txn:
                for i in range(8000):
                    txn.put(b"k%d" % i, b"v" * 1000, db=db)
        assert rec.max_tracking_id("up") is None      # nothing committed
        for attempt in range(10):     # each full map at least doubles it
            try:
                with rec.transaction(Tracking("up", 1)) as txn:
                    for i in range(8000):
                        txn.put(b"k%d" % i, b"v" * 1000, db=db)
                break
            except OperationalError:
                assert rec.max_tracking_id("up") is None
        assert rec.max_tracking_id("up") == 1
        rec.close()



# -- hostile input --------------------------------------------------------------------------------

class TestOddInput(WithTmp):
    def test_long_originator_ids_are_indexed(self):
        """An id longer than an LMDB key was acknowledged, then failed the index commit: the
        store stopped, and every reopen failed re-indexing it."""
        s = self.store()
        r = TidelogApplicationRecorder(s)
        long_a, long_b = "x" * 600, "x" * 599 + "y"
        assert r.insert_events([ev(long_a, 1), ev(long_a, 2), ev(long_b, 1), ev("", 1)]) == [
            1, 2, 3, 4]
        s.flush_index()
        with pytest.raises(IntegrityError):
            r.insert_events([ev(long_a, 2)])
        assert [e.originator_version for e in r.select_events(long_a)] == [1, 2]
        assert [e.originator_id for e in r.select_events(long_b)] == [long_b]
        assert r.select_events("x" * 601) == []
        r.close()
        r = TidelogApplicationRecorder(self.store())      # reopened: re-indexed from the log
        assert [e.originator_version for e in r.select_events(long_a, desc=True)] == [2, 1]
        assert r.insert_events([ev(long_a, 3)]) == [5]
        r.close()

    def test_bad_input_is_refused_before_anything_is_written(self):
        s = self.store()
        r = TidelogProcessRecorder(s)
        cases = [
            (ValueError, "originator_version", [ev("a", 1 << 63)], None),
            (ValueError, "originator_id", [ev("\ud800", 1)], None),
            (ValueError, "topic", [ev("a", 1, topic="\ud800")], None),
            (TypeError, "topic", [ev("a", 1, topic=5)], None),
            (TypeError, "stored_events", [None], None),
            (ValueError, "tracking.notification_id", [ev("a", 1)], Tracking("up", 1 << 64)),
            (ValueError, "tracking.application_name", [ev("a", 1)], Tracking("\udc00", 1)),
            (ValueError, "tracking.application_name", [ev("a", 1)], Tracking("u" * 600, 1)),
        ]
        for exc, arg, events, tracking in cases:
            with pytest.raises(exc, match=arg):
                r.insert_events(events, tracking=tracking)
        assert r.max_notification_id() is None
        assert r.insert_events([ev("a", 1)], tracking=Tracking("up", 1)) == [1]
        assert r.select_events("a", limit=0) == []
        r.close()

    def test_select_notifications_and_subscribe_check_their_arguments(self):
        """start/limit/stop must be ints (or None where allowed), topics a sequence of str: a
        str `topics` used to filter by its characters, a str start gave an unrelated error."""
        r = TidelogApplicationRecorder(self.store())
        r.insert_events([ev("a", 1, topic="x"), ev("a", 2, topic="y")])
        import numpy
        cases = [
            (TypeError, "start", dict(start="1", limit=10)),
            (TypeError, "start", dict(start=1.0, limit=10)),
            (TypeError, "start", dict(start=True, limit=10)),
            (TypeError, "limit", dict(start=1, limit="10")),
            (TypeError, "limit", dict(start=1, limit=None)),
            (TypeError, "limit", dict(start=1, limit=2.5)),
            (TypeError, "stop", dict(start=1, limit=10, stop="2")),
            (TypeError, "topics", dict(start=1, limit=10, topics="xy")),
            (TypeError, "topics", dict(start=1, limit=10, topics=b"x")),
            (TypeError, "topics", dict(start=1, limit=10, topics=5)),
            (TypeError, "topics", dict(start=1, limit=10, topics=["x", 5])),
            (ValueError, "topics", dict(start=1, limit=10, topics=["\ud800"])),
        ]
        for exc, arg, kw in cases:
            with pytest.raises(exc, match=arg):
                r.select_notifications(**kw)
        for exc, arg, kw in ((TypeError, "gt", dict(gt="0")), (TypeError, "topics",
                                                              dict(topics="x"))):
            with pytest.raises(exc, match=arg):
                r.subscribe(**kw)
        got = r.select_notifications(numpy.int64(1), numpy.int32(10), topics=("y",))
        assert [(n.id, n.topic) for n in got] == [(2, "y")]
        assert [n.id for n in r.select_notifications(None, 10, stop=1)] == [1]
        r.close()



class TestLifecycle(WithTmp):
    def test_close_while_a_subscription_iterates(self):
        """The iterating thread spun forever (busy) once the store closed under it."""
        import threading
        from eventsourcing.persistence import InterfaceError
        r = TidelogApplicationRecorder(self.store())
        r.insert_events([ev("a", v) for v in range(1, 51)])
        got, errors, started = [], [], threading.Event()

        def follow():
            try:
                with r.subscribe(gt=0) as sub:
                    for n in sub:
                        got.append(n.id)
                        if len(got) == 50:
                            started.set()
            except Exception as e:
                errors.append(e)
        t = threading.Thread(target=follow, daemon=True)
        t.start()
        assert started.wait(60)
        r.close()
        t.join(60)
        assert not t.is_alive()
        assert got == list(range(1, 51))
        assert len(errors) == 1 and isinstance(errors[0], InterfaceError), errors

    def test_fork_child_opens_its_own_store(self):
        """A child got its parent's store (and writer) from the registry: LogForkedError, a
        tidelog error, on every use and at its exit."""
        path = os.path.join(self.tmp, "s")
        r = TidelogApplicationRecorder(self.store())
        r.insert_events([ev("a", 1)])
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:            # pragma: no cover - the child
            out = []
            try:
                s2 = TidelogStore.acquire(path)
                r2 = TidelogApplicationRecorder(s2)
                out.append(f"same={s2 is r.store} readonly={s2.readonly}")
                out.append("ids=" + ",".join(str(n.id) for n in r2.select_notifications(1, 9)))
                for rec in (r2, r):
                    try:
                        rec.insert_events([ev("b", 1)])
                        out.append("inserted")
                    except OperationalError as e:
                        out.append("refused")
                r2.close()
            except BaseException as e:
                out.append(f"error {type(e).__name__} {e}")
            os.write(wfd, "\n".join(out).encode())
            os._exit(0)
        os.close(wfd)
        with os.fdopen(rfd) as f:
            lines = f.read().split("\n")
        os.waitpid(pid, 0)
        assert lines == ["same=False readonly=True", "ids=1", "refused", "refused"]
        assert r.insert_events([ev("a", 2)]) == [2]        # the parent's writer is intact
        r.close()
        r = TidelogApplicationRecorder(self.store())
        assert [n.originator_id for n in r.select_notifications(1, 9)] == ["a", "a"]
        r.close()



FULL_DISK = """
import os, sys
from eventsourcing.persistence import StoredEvent, Tracking, OperationalError
from tidelog.eventsourcing import TidelogStore, TidelogProcessRecorder
root = sys.argv[1]
r = TidelogProcessRecorder(TidelogStore.acquire(os.path.join(root, "s"), segment_bytes=1 << 20))
v = 0
while True:
    try:
        r.insert_events([StoredEvent("a", v + 1, "t", b"x" * 3000)], tracking=Tracking("up", v + 1))
        v += 1
    except OperationalError as e:
        print("full", "No space" in str(e) or "no space" in str(e), flush=True)
        break
os.unlink(os.path.join(root, "filler"))
r.insert_events([StoredEvent("a", v + 1, "t", b"y")], tracking=Tracking("up", v + 1))
print("after", r.max_notification_id() == v + 1, len(r.select_events("a")) == v + 1,
      r.max_tracking_id("up") == v + 1)
r.close()
r = TidelogProcessRecorder(TidelogStore.acquire(os.path.join(root, "s")))
print("reopened", r.max_notification_id() == v + 1, r.select_events("a", desc=True, limit=1)[0].state == b"y")
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare(1) for a private tmpfs")
def test_full_disk_then_space_freed(tmp_path):
    """A full disk stopped the store for good (reopen needed) although nothing was appended;
    now the insert is refused, and the next one after space is freed succeeds."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = tmp_path / "full.py"
    script.write_text(FULL_DISK)
    out = subprocess.run(
        ["unshare", "-m", "sh", "-c",
         f"mount -t tmpfs -o size=8m tmpfs {mnt} && "
         f"dd if=/dev/zero of={mnt}/filler bs=1M count=4 2>/dev/null && "
         f"{sys.executable} {script} {mnt}"],
        capture_output=True, text=True, timeout=300)
    if "mount:" in out.stderr or "unshare:" in out.stderr:
        pytest.skip(f"no private tmpfs here: {out.stderr.strip()}")
    assert out.stdout.split("\n")[:3] == ["full True", "after True True True",
                                           "reopened True True"], out.stderr[-3000:]



def test_many_threads_hold_read_transactions(tmp_path):
    """300 threads each holding a view's read transaction: the index has 1024 reader slots
    (lmdbenv's default of 126 refused the 127th with "too many readers")."""
    import threading
    rec = TidelogTrackingRecorder(TidelogStore.acquire(str(tmp_path / "t"), with_log=False))
    rec.insert_tracking(Tracking("up", 1))
    n = 300
    inside, errors = threading.Barrier(n), []

    def read():
        try:
            with rec.read_transaction():
                inside.wait(60)
        except Exception as e:
            errors.append(e)
            inside.abort()
    threads = [threading.Thread(target=read) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rec.close()



TRACKER = """
import sys
from eventsourcing.persistence import Tracking, IntegrityError
from tidelog.eventsourcing import TidelogStore, TidelogTrackingRecorder
r = TidelogTrackingRecorder(TidelogStore.acquire(sys.argv[1], with_log=False))
print("ready", flush=True)
sys.stdin.readline()
ok = 0
for i in range(1, 301):
    try:
        r.insert_tracking(Tracking("up", i))
        ok += 1
    except IntegrityError:
        pass
print(ok, flush=True)
"""


def test_tracking_store_shared_by_processes_accepts_each_id_once(tmp_path):
    """A tracking store has no log, hence no writer lock: processes racing insert_tracking
    each checked in a read transaction, then wrote: an id was accepted twice (583 of 300)."""
    path = str(tmp_path / "t")
    procs = [subprocess.Popen([sys.executable, "-c", TRACKER, path], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(3)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    total = sum(int(p.communicate(timeout=120)[0]) for p in procs)
    assert total == 300
    rec = TidelogTrackingRecorder(TidelogStore.acquire(path, with_log=False))
    assert rec.max_tracking_id("up") == 300
    rec.close()


del (AggregateRecorderTestCase, ApplicationRecorderTestCase, TrackingRecorderTestCase,
     ProcessRecorderTestCase, NonInterleavingNotificationIDsBaseCase,
     InfrastructureFactoryTestCase, ApplicationTestCase, ExampleApplicationTestCase,
     EventCountersViewTestCase, AggregateEventCountersProjectionTestCase,
     EventSourcedProjectionTestCase)
