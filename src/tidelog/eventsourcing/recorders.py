"""tidelog.eventsourcing's recorders: TidelogFactory (the one factory PERSISTENCE_MODULE finds)
and the four recorders it builds (aggregate, application, tracking, process), with the
subscription of an application recorder. They check their arguments and map the library's
calls onto a TidelogStore.

Owns: the recorders' and the factory's own state (a recorder's store reference, released once;
the factory's list of recorders it built, and the store paths it names: <TIDELOG_PATH>/<app
name>_<purpose>); writes nothing itself (the stores do). A subscription blocks in
TidelogStore.wait_for_change (which releases the GIL).
"""
from __future__ import annotations

import os
import threading
import weakref
from collections import deque
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.persistence import (
    AggregateRecorder, ApplicationRecorder, InfrastructureFactory, Notification, ProcessRecorder,
    StoredEvent, Subscription, Tracking, TrackingRecorder)
from eventsourcing.utils import Environment, EnvType, resolve_topic

from tidelog import _args, lmdbenv
from tidelog.eventsourcing.codec import text
from tidelog.eventsourcing.store import TidelogStore

# a store's transactions and database handles are untyped (tidelog.lmdbenv's): Any
_Txn = Any
_Db = Any
_R = TypeVar("_R", bound="_StoreHolder")


def _int_or_none(value: object, name: str) -> int | None:
    return None if value is None else _args.integer(value, name)


def _topics_arg(topics: Iterable[str]) -> tuple[str, ...]:
    """`topics` as a tuple of str: a sequence (or other iterable) of str, not a str itself."""
    if isinstance(topics, (str, bytes, bytearray, memoryview)):
        raise TypeError(f"topics: expected a sequence of str, not a single "
                        f"{type(topics).__name__}")
    try:
        out = tuple(topics)
    except TypeError:
        raise TypeError(f"topics: expected a sequence of str, not "
                        f"{type(topics).__name__}") from None
    for t in out:
        text(t, "topics: each topic")
    return out



class _StoreHolder:
    """What every recorder shares: its store reference, released once (close() or collection)."""

    def __init__(self, store: TidelogStore) -> None:
        if not isinstance(store, TidelogStore):
            raise TypeError(f"store: expected a TidelogStore, not {type(store).__name__}")
        self.store = store
        self._finalizer = weakref.finalize(self, store.release)

    def close(self) -> None:
        """Release this recorder's reference to its store."""
        self._finalizer()


class TidelogAggregateRecorder(_StoreHolder, AggregateRecorder):
    """Stored events of aggregates, in a TidelogStore."""

    def __init__(self, store: TidelogStore) -> None:
        _StoreHolder.__init__(self, store)

    def insert_events(self, stored_events: Sequence[StoredEvent],
                      **kwargs: Any) -> Sequence[int] | None:
        self.store.insert(list(stored_events))
        return None

    def select_events(self, originator_id: UUID | str, *, gt: int | None = None,
                      lte: int | None = None, desc: bool = False,
                      limit: int | None = None) -> Sequence[StoredEvent]:
        store = self.store
        return store.read_events(store.event_offsets(originator_id, gt, lte, desc, limit))


class TidelogApplicationRecorder(TidelogAggregateRecorder, ApplicationRecorder):
    """Stored events in the application sequence: notification id = log offset + 1."""

    def insert_events(self, stored_events: Sequence[StoredEvent],
                      **kwargs: Any) -> Sequence[int] | None:
        stored_events = list(stored_events)
        first = self.store.insert(stored_events)
        if first is None:
            return []
        return list(range(first + 1, first + 1 + len(stored_events)))

    def select_notifications(self, start: int | None, limit: int, stop: int | None = None,
                             topics: Sequence[str] = (), *,
                             inclusive_of_start: bool = True) -> Sequence[Notification]:
        start = _int_or_none(start, "start")
        limit = _args.integer(limit, "limit")
        stop = _int_or_none(stop, "stop")
        topics = _topics_arg(topics)
        if start is None:
            lo = 0
        else:
            lo = start - 1 if inclusive_of_start else start
        lo = max(lo, 0)
        hi = self.store.end() if stop is None else max(stop, 0)
        return self.store.notifications(lo, hi, limit, topics)

    def max_notification_id(self) -> int | None:
        return self.store.end() or None

    def subscribe(self, gt: int | None = None,
                  topics: Sequence[str] = ()) -> Subscription[ApplicationRecorder]:
        return TidelogSubscription(self, gt=_int_or_none(gt, "gt"), topics=_topics_arg(topics))


class TidelogSubscription(Subscription[TidelogApplicationRecorder]):
    """Notifications with id > gt: what is recorded, then new ones as they are committed (in this
    process through a condition; across processes on tidelog's wake-up of readers)."""

    buffer: deque[Notification]

    def __init__(self, recorder: TidelogApplicationRecorder, gt: int | None = None,
                 topics: Sequence[str] = ()) -> None:
        super().__init__(recorder=recorder, gt=gt, topics=topics)
        self.store = recorder.store
        self.topics = tuple(topics)
        self.position = max(gt or 0, 0)     # offsets below it are scanned
        self.buffer = deque()
        self.stopped = threading.Event()

    def stop(self) -> None:
        super().stop()
        self.stopped.set()

    def __next__(self) -> Notification:
        store = self.store
        while True:
            if self.stopped.is_set():
                raise StopIteration
            if self.buffer:
                return self.buffer.popleft()
            seen = store.end()
            got = store.notifications(self.position, seen, 500, self.topics)
            if got:
                self.buffer.extend(got)
            # fewer than the limit: everything below `seen` is scanned (a topic filter may
            # have skipped it all)
            self.position = got[-1].id if len(got) == 500 else max(seen, self.position)
            if not got:
                store.wait_for_change(self.position, 0.1)


class TidelogTrackingRecorder(_StoreHolder, TrackingRecorder):
    """Tracking records in a store's LMDB. A view subclass keeps its own state in `view_db()`
    and writes it with `transaction(tracking)`, so state and tracking commit together."""

    def __init__(self, store: TidelogStore) -> None:
        _StoreHolder.__init__(self, store)

    def insert_tracking(self, tracking: Tracking) -> None:
        self.store.insert_tracking(tracking)

    def max_tracking_id(self, application_name: str) -> int | None:
        return self.store.max_tracking_id(application_name)

    def view_db(self, name: str | bytes = b"view") -> _Db:
        """A named LMDB database of this store for a view's own state (the first call for a
        name must come outside a transaction: it may create the database)."""
        if isinstance(name, str):
            name = name.encode("utf-8")
        if name in (b"idx", b"tracking", b"meta"):
            raise ValueError(f"name: {name!r} is reserved")
        return self.store.named_db(b"view:" + name)

    def transaction(self, tracking: Tracking | None = None) -> AbstractContextManager[_Txn]:
        """An LMDB write transaction (context manager) that also records `tracking`."""
        return self.store.transaction(tracking)

    def read_transaction(self) -> lmdbenv.HeldReader:
        """An LMDB read transaction (context manager)."""
        return self.store.reader()


class TidelogProcessRecorder(TidelogTrackingRecorder, TidelogApplicationRecorder, ProcessRecorder):
    """Events and the tracking record of the upstream notification they came from, atomically."""

    def __init__(self, store: TidelogStore) -> None:
        _StoreHolder.__init__(self, store)

    def insert_events(self, stored_events: Sequence[StoredEvent],
                      **kwargs: Any) -> Sequence[int] | None:
        stored_events = list(stored_events)
        first = self.store.insert(stored_events, kwargs.get("tracking"))
        if first is None:
            return []
        return list(range(first + 1, first + 1 + len(stored_events)))


class TidelogFactory(InfrastructureFactory[TidelogTrackingRecorder]):
    """Builds tidelog recorders under TIDELOG_PATH: a store per <app name>_<purpose>."""

    TIDELOG_PATH = "TIDELOG_PATH"
    TIDELOG_SEGMENT_BYTES = "TIDELOG_SEGMENT_BYTES"
    CREATE_TABLE = "CREATE_TABLE"
    tracking_recorder_class = TidelogTrackingRecorder
    _recorders: list[weakref.ref[_StoreHolder]]

    def __init__(self, env: Environment | EnvType | None) -> None:
        super().__init__(env)
        root = self.env.get(self.TIDELOG_PATH)
        if not root:
            raise EnvironmentError(
                f"tidelog.eventsourcing: set {self.TIDELOG_PATH} (or "
                f"{(self.env.name or 'APPNAME').upper()}_{self.TIDELOG_PATH}) to a directory")
        self.root = root
        seg = self.env.get(self.TIDELOG_SEGMENT_BYTES)
        try:
            self.segment_bytes = int(seg) if seg else None
        except ValueError:
            raise ValueError(f"{self.TIDELOG_SEGMENT_BYTES}: an int, not {seg!r}") from None
        self.prefix = self.env.name.lower() or "stored"
        self._recorders = []

    def _create(self) -> bool:
        v = (self.env.get(self.CREATE_TABLE) or "yes").lower()
        return v not in ("n", "no", "f", "false", "off", "0")

    def _store(self, purpose: str, with_log: bool = True) -> TidelogStore:
        os.makedirs(self.root, exist_ok=True)
        return TidelogStore.acquire(os.path.join(self.root, f"{self.prefix}_{purpose}"),
                                    with_log=with_log, create=self._create(),
                                    segment_bytes=self.segment_bytes)

    def _keep(self, recorder: _R) -> _R:
        self._recorders.append(weakref.ref(recorder))
        return recorder

    def aggregate_recorder(self, purpose: str = "events") -> AggregateRecorder:
        return self._keep(TidelogAggregateRecorder(self._store(purpose)))

    def application_recorder(self) -> ApplicationRecorder:
        return self._keep(TidelogApplicationRecorder(self._store("events")))

    def tracking_recorder(self, tracking_recorder_class: type[TidelogTrackingRecorder] | None = None
                          ) -> TidelogTrackingRecorder:
        if tracking_recorder_class is None:
            topic = self.env.get(self.TRACKING_RECORDER_TOPIC)
            tracking_recorder_class = (resolve_topic(topic) if topic
                                       else self.tracking_recorder_class)
        if not (isinstance(tracking_recorder_class, type)
                and issubclass(tracking_recorder_class, TidelogTrackingRecorder)):
            raise TypeError(f"tracking_recorder_class: expected a TidelogTrackingRecorder "
                            f"subclass, not {tracking_recorder_class!r}")
        return self._keep(tracking_recorder_class(self._store("tracking", with_log=False)))

    def process_recorder(self) -> ProcessRecorder:
        return self._keep(TidelogProcessRecorder(self._store("events")))

    def close(self) -> None:
        """Release the stores of every recorder this factory built."""
        refs, self._recorders = self._recorders, []
        for ref in refs:
            r = ref()
            if r is not None:
                r.close()

