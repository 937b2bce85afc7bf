"""tidelog.eventsourcing's record format: how a stored event (and, on the last record of an
insert, its tracking record) is encoded as a value of the events log, and decoded back; the
(originator_id, version) keys of the index; the checks of an event's fields made while encoding.

Owns: the format (HEAD, TRACK, BE64, the flags and originator id kinds), encode/decode,
parse_head, oid_key/version_key, decode_event and the replay machine TopicCounts, and a small
per-process cache of decoded topics. Pure functions: no I/O, no locks; nothing releases the GIL.
"""
from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from typing import overload
from uuid import UUID, SafeUUID

from eventsourcing.persistence import Notification, StoredEvent, Tracking

import tidelog

FORMAT = 1                 # the store's format (written once into its index's meta)

# log record: flags, oid type, version, oid length, topic length, tracking length;
# then oid, topic (utf-8), tracking (int64 id + utf-8 name, on the last record of an insert), state
HEAD = struct.Struct("<BBqIII")
TRACK = struct.Struct("<q")
BE64 = struct.Struct(">Q")
F_TRACKING = 1
F_END = 2                  # last record of an insert
OID_UUID, OID_STR = 0, 1
LONG_OID = 256             # longer originator ids are hashed in index keys


def oid_bytes(oid: object) -> tuple[int, bytes]:
    if isinstance(oid, UUID):
        return OID_UUID, oid.bytes
    if isinstance(oid, str):
        try:
            return OID_STR, oid.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"originator_id: not encodable as UTF-8 ({exc})") from None
    raise TypeError(f"originator_id: expected a UUID or a str, not {type(oid).__name__}")


def oid_key(kind: int, raw: bytes) -> bytes:
    """The index prefix of one originator: unambiguous, so a prefix scan never mixes two ids.
    An id longer than LONG_OID bytes is keyed by its length and SHA-256 (an LMDB key holds at
    most 511 bytes)."""
    if len(raw) > LONG_OID:
        return bytes((kind | 0x80,)) + struct.pack(">I", len(raw)) + hashlib.sha256(raw).digest()
    return bytes((kind,)) + struct.pack(">I", len(raw)) + raw


def version_key(version: object) -> bytes:
    if isinstance(version, bool) or not isinstance(version, int):
        raise TypeError(f"originator_version: expected an int, not {type(version).__name__}")
    if not -(1 << 63) <= version < (1 << 63):
        raise ValueError(f"originator_version: {version} is out of the 64-bit range")
    return BE64.pack((version + (1 << 63)) & 0xFFFFFFFFFFFFFFFF)



def text(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"{what}: expected a str, not {type(value).__name__}")
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what}: not encodable as UTF-8 ({exc})") from None


def tracking_trailer(tracking: object) -> bytes:
    """The trailer a tracking record adds to the last log record of an insert (int64 id, then
    the application name in UTF-8), every field checked (TypeError/ValueError naming it)."""
    if not isinstance(tracking, Tracking):
        raise TypeError(f"tracking: expected a Tracking, not {type(tracking).__name__}")
    nid = tracking.notification_id
    if isinstance(nid, bool) or not isinstance(nid, int):
        raise TypeError(f"tracking.notification_id: expected an int, not "
                        f"{type(nid).__name__}")
    if not -(1 << 63) <= nid < (1 << 63):
        raise ValueError(f"tracking.notification_id: {nid} is out of the 64-bit range")
    name = text(tracking.application_name, "tracking.application_name")
    if len(name) > 480:
        raise ValueError("tracking.application_name: longer than 480 bytes of UTF-8")
    return TRACK.pack(nid) + name


_topic_bytes: dict[str, bytes] = {}


def encode(event: StoredEvent, trailer: bytes = b"") -> tuple[bytes, bytes, bytes, bytes]:
    """(log value, log key, index oid key, index version key) of one stored event; `trailer`
    (tracking_trailer's) goes on the last record of an insert. TypeError/ValueError naming the
    field that is wrong."""
    if not isinstance(event, StoredEvent):
        raise TypeError(f"stored_events: expected StoredEvent items, not "
                        f"{type(event).__name__}")
    oid = event.originator_id
    kind, raw = oid_bytes(oid)
    version = event.originator_version
    vkey = version_key(version)
    topic = event.topic
    tb = _topic_bytes.get(topic) if isinstance(topic, str) else None
    if tb is None:
        tb = text(topic, "topic")
        if len(_topic_bytes) < 4096:
            _topic_bytes[topic] = tb
    state = event.state
    if not isinstance(state, (bytes, bytearray, memoryview)):
        raise TypeError(f"state: expected bytes, not {type(state).__name__}")
    value = b"".join((HEAD.pack(F_TRACKING if trailer else 0, kind, version, len(raw),
                                len(tb), len(trailer)), raw, tb, trailer, state))
    key = raw if kind == OID_STR else str(oid).encode("ascii")   # the id as text
    return value, key, oid_key(kind, raw), vkey


def encode_insert(events: Sequence[StoredEvent], tracking: Tracking | None
                  ) -> tuple[list[tuple[bytes, bytes]], list[bytes], list[bytes]]:
    """An insert's index entries ((oid key, version key) per event), log values and log keys,
    every field checked first (TypeError/ValueError naming it); the tracking trailer goes on
    the last record."""
    trailer = b"" if tracking is None else tracking_trailer(tracking)
    entries = []
    values = []
    keys = []
    last = len(events) - 1
    for i, e in enumerate(events):
        value, key, okey, vkey = encode(e, trailer if i == last else b"")
        values.append(value)
        keys.append(key)
        entries.append((okey, vkey))
    return entries, values, keys


def parse_head(value: bytes | memoryview
               ) -> tuple[int, int, bytes, int, bytes, tuple[str, int] | None, int]:
    """(flags, oid key, version, topic bytes, tracking or None, state start) of a log record."""
    flags, kind, version, nraw, ntopic, ntrk = HEAD.unpack_from(value, 0)
    p = HEAD.size
    raw = bytes(value[p:p + nraw])
    p += nraw
    topic = bytes(value[p:p + ntopic])
    p += ntopic
    trk = None
    if ntrk:
        (nid,) = TRACK.unpack_from(value, p)
        trk = (bytes(value[p + 8:p + ntrk]).decode("utf-8"), nid)
        p += ntrk
    return flags, kind, raw, version, topic, trk, p


def _oid_from(kind: int, raw: bytes) -> UUID | str:
    if kind == OID_UUID:
        u = object.__new__(UUID)            # UUID(bytes=raw) without its argument checks
        object.__setattr__(u, "int", int.from_bytes(raw, "big"))
        object.__setattr__(u, "is_safe", SafeUUID.unknown)
        return u
    return raw.decode("utf-8")


_topics: dict[bytes, str] = {}


@overload
def decode(value: bytes | memoryview, nid: None = None) -> StoredEvent: ...
@overload
def decode(value: bytes | memoryview, nid: int) -> Notification: ...
def decode(value: bytes | memoryview, nid: int | None = None) -> StoredEvent:
    """The StoredEvent (or, given its id, the Notification) a log record holds."""
    v = bytes(value)            # one copy: `state` must be bytes anyway
    flags, kind, version, nraw, ntopic, ntrk = HEAD.unpack_from(v, 0)
    p = HEAD.size
    oid = _oid_from(kind, v[p:p + nraw])
    p += nraw
    tb = v[p:p + ntopic]
    topic = _topics.get(tb)
    if topic is None:
        topic = tb.decode("utf-8")
        if len(_topics) < 4096:
            _topics[tb] = topic
    state = v[p + ntopic + ntrk:]
    if nid is None:
        return StoredEvent(originator_id=oid, originator_version=version, topic=topic,
                           state=state)
    return Notification(id=nid, originator_id=oid, originator_version=version, topic=topic,
                        state=state)


def decode_event(record: tidelog.Record) -> Notification:
    """The eventsourcing Notification a record of an events log holds (id = offset + 1): for
    readers of the log itself (a tidelog Replayer, a cursor)."""
    return decode(record.value, record.offset + 1)


class TopicCounts:
    """A replay machine for `tidelog replay LOG --machine tidelog.eventsourcing:TopicCounts`:
    events per topic of an events log."""

    counts: dict[str, int]

    def __init__(self) -> None:
        self.counts = {}

    def apply(self, record: tidelog.Record) -> None:
        topic = parse_head(record.value)[4].decode("utf-8")
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def snapshot(self) -> bytes:
        import json
        return json.dumps(self.counts, sort_keys=True).encode("utf-8")

    def restore(self, snapshot: bytes) -> None:
        import json
        self.counts = json.loads(snapshot)

    def __repr__(self) -> str:
        return f"TopicCounts({self.counts})"
