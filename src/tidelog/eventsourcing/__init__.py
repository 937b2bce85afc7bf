"""tidelog as a persistence module for the `eventsourcing` library (extra `tidelog[eventsourcing]`).

The package owns: TidelogFactory, the four recorders, TidelogStore (one store = what SQLite
calls a table) and its per-process registry, the store's record format and its LMDB index. Uses
tidelog's public API and its shared argument checks (tidelog._args); the index is opened, grown
and handled across fork() by tidelog.lmdbenv. Writes: the store's files only (`log/` through its
tidelog writer, `index/`; the store's directory is flocked while this process takes or tries the
log's writer lock).

Select it with PERSISTENCE_MODULE=tidelog.eventsourcing and TIDELOG_PATH=<directory>
(<APPNAME>_TIDELOG_PATH overrides it per application). Optional: TIDELOG_SEGMENT_BYTES.

Design: the tidelog log is the source of truth; notification id = offset + 1. LMDB holds derived
data (the (originator_id, version) -> offset index, tracking, `indexed_upto`) and may lag the log,
never lead it: whoever takes the log's writer lock re-indexes [indexed_upto, end) from the log
(at open, briefly, if the lock is free; at a store's first write, when it becomes the writer);
readers look in the log for what the index lacks. The tracking record of an insert travels in its
last log record, so exactly-once survives a crash between the log sync and the index commit.
Inserts are checked before anything is appended (nothing is written on a conflict), appended as
one atomic batch, and made durable by a group commit shared by concurrent inserts; index entries
wait in an in-memory overlay until they are committed to LMDB in bulk.

Layout: codec.py (the record format: encode/decode, index keys, decode_event, TopicCounts),
store.py (TidelogStore: registry, recovery, write path, index, reads), recorders.py (the
factory, the four recorders and the subscription). This module only gathers their public names
(the ones tidelog.eventsourcing always had) and checks that the library is installed.
"""
from __future__ import annotations

try:
    import eventsourcing.persistence  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("tidelog.eventsourcing needs the `eventsourcing` library: "
                      "pip install 'tidelog[eventsourcing]'") from exc

from tidelog.eventsourcing.codec import (  # noqa: F401  (names the module always had)
    F_END, F_TRACKING, FORMAT, LONG_OID, OID_STR, OID_UUID, TopicCounts, decode_event)
from tidelog.eventsourcing.recorders import (
    TidelogAggregateRecorder, TidelogApplicationRecorder, TidelogFactory, TidelogProcessRecorder,
    TidelogSubscription, TidelogTrackingRecorder)
from tidelog.eventsourcing.store import (  # noqa: F401
    DEFAULT_SEGMENT_BYTES, FLUSH_EVERY, FLUSH_SECONDS, MAX_READERS, VIEW_HEADROOM, TidelogStore)

__all__ = ["TidelogFactory", "TidelogAggregateRecorder", "TidelogApplicationRecorder",
           "TidelogTrackingRecorder", "TidelogProcessRecorder", "TidelogStore", "TidelogSubscription",
           "decode_event", "TopicCounts"]

# the public classes keep the topic they always had ("tidelog.eventsourcing:TidelogFactory"):
# eventsourcing names a class by its module, and applications may have stored such topics
for _cls in (TidelogFactory, TidelogAggregateRecorder, TidelogApplicationRecorder,
             TidelogTrackingRecorder, TidelogProcessRecorder, TidelogStore, TidelogSubscription,
             TopicCounts):
    _cls.__module__ = __name__
del _cls
