"""What the two bridge directions share: the error, the message model, optional imports.

Owns BridgeError (every failure of a bridge worth one line and exit 2 at the command line),
Message (a record on its way between a log and a broker), Batch (an ingest's messages in the
columns append_batch takes), the position header names, and `require` (an optional client
library imported only when used, or an error naming the extra).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Optional, Protocol

from tidelog import _args
from tidelog.errors import TidelogError

__all__ = ["BridgeError", "Message", "Batch", "Target", "Source", "require", "OFFSET_HEADER", "KAFKA_POSITION",
           "NATS_POSITION", "TIMESTAMP_HEADER", "headers_of", "stamp_of"]

OFFSET_HEADER = "tidelog-offset"     # a mirrored record's offset in its log, decimal ASCII
KAFKA_POSITION = "kafka-offset"      # an ingested record's offset in its Kafka partition
NATS_POSITION = "nats-sequence"      # an ingested record's stream sequence in JetStream
TIMESTAMP_HEADER = "tidelog-timestamp"  # a record's timestamp in ns, decimal, where the broker
                                        # cannot carry it (NATS: always; Kafka: below 1 ms)


class BridgeError(TidelogError):
    """A bridge cannot go on: unreachable server, missing topic or stream, refused credentials,
    a target or log that does not allow an exactly-once resume. The message never holds a
    secret."""


@dataclass
class Message:
    """One record between a log and a broker: `position` is the source's position (log offset
    when mirroring, Kafka offset or stream sequence when ingesting)."""
    position: int
    value: bytes
    key: Optional[bytes]
    timestamp: int                   # nanoseconds since the epoch
    headers: list[tuple[str, bytes]] = field(default_factory=list)


@dataclass
class Batch:
    """Records on their way, in order, as columns (built column by column: no object per
    record). Ingest: messages a source read, in the columns Log.append_batch takes;
    `positions[i]` is message i's source position, which its last header already carries
    (KAFKA_POSITION, NATS_POSITION), or will once appended (`position_header`). Mirror: records of the log; `positions[i]` is record i's
    offset, which the target adds as OFFSET_HEADER."""
    positions: list[int]
    values: Any                      # list[bytes], or one bytes-like: see value_offsets
    keys: list[Optional[bytes]]
    timestamps: list[int]            # nanoseconds since the epoch
    headers: Sequence[Optional[Sequence[tuple[str, bytes]]]]   # of (name, value), or None
    # ingest: when set, the name of the header that carries `positions` (decimal ASCII): the
    # log adds it to each record after its own headers (append_batch's int_headers), in C,
    # where a (name, value) pair per record built in Python cost ~0.35 us; None: each record's
    # headers already end with it
    position_header: Optional[str] = None
    # when set (an int64 array of len(positions) + 1), `values` is one bytes-like object
    # holding the values back to back, value i at values[value_offsets[i]:value_offsets[i + 1]]
    # (append_batch's value_offsets): no bytes object per message (Kafka's C loop; at 1 KiB
    # values their allocation and frees were ~7 % of an ingest's CPU)
    value_offsets: Any = None

    def __len__(self) -> int:
        return len(self.positions)

    def value_list(self) -> list[bytes]:
        """The values as a list of bytes, packed or not."""
        if self.value_offsets is None:
            return list(self.values)
        o, v = self.value_offsets.tolist(), self.values
        return [bytes(v[a:b]) for a, b in zip(o, o[1:])]

    def value_bytes(self) -> int:
        """The values' bytes, all together."""
        if self.value_offsets is None:
            return sum(map(len, self.values))
        return int(self.value_offsets[-1] - self.value_offsets[0])

    @classmethod
    def of(cls, msgs: list[Message]) -> "Batch":
        """The columns of `msgs`."""
        return cls([m.position for m in msgs], [m.value for m in msgs], [m.key for m in msgs],
                   [m.timestamp for m in msgs], [m.headers for m in msgs])

    def messages(self) -> list[Message]:
        """One Message per record (for a target that handles records one by one)."""
        return [Message(p, v, k, t, list(h or ())) for p, v, k, t, h in
                zip(self.positions, self.value_list(), self.keys, self.timestamps,
                    self.headers)]


class Target(Protocol):
    """Where a mirror ships (kafka.KafkaTarget, nats.NatsTarget)."""

    def last_offset(self) -> Optional[int]:
        """The tidelog-offset of the target's last message; None when it holds none."""

    def send(self, batch: Batch) -> None:
        """Store the batch's records in order, each with its OFFSET_HEADER, after those of
        earlier sends; it may return before the broker acknowledged them (BridgeError for a
        failure it heard of)."""

    def flush(self) -> None:
        """Return once the broker acknowledged every record sent (BridgeError if not)."""

    def close(self) -> None: ...


class Source(Protocol):
    """Where an ingest reads (kafka.KafkaSource, nats.NatsSource)."""

    def batches(self, after: Optional[int], follow: bool,
                stopping: Callable[[], bool]) -> Iterator[Batch]:
        """Messages after position `after` (None: from the first), in order, in batches."""

    def close(self) -> None: ...


_STAMP = re.compile(r"-?[0-9]{1,19}")


def stamp_of(value: Optional[str | bytes]) -> Optional[int]:
    """The timestamp (ns) a TIMESTAMP_HEADER value states: decimal ASCII, negative for a record
    stamped before the epoch (a log may hold one; the mirrors write it as such), within int64
    (a record's range); None when it states none."""
    if value is None:
        return None
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    if _STAMP.fullmatch(text) is None:
        return None
    t = int(text)
    return t if _args.INT64_MIN <= t <= _args.INT64_MAX else None


def headers_of(record: object) -> list[tuple[str, bytes]]:
    """A record's headers as a list of (str, bytes) (records of a log without headers: [])."""
    hs = getattr(record, "headers", None)
    return [(str(k), bytes(v)) for k, v in hs] if hs else []


EXTRAS = {"confluent_kafka": "kafka", "nats": "nats", "nkeys": "nats"}


def require(module: str) -> ModuleType:
    """Import an optional client library, or BridgeError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = EXTRAS.get(module.split(".")[0], module)
        raise BridgeError(f"this bridge needs the {module.split('.')[0]} package: "
                          f"pip install 'tidelog[{extra}]'") from None
