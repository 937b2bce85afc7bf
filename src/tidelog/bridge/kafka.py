"""The Kafka side of the bridges: KafkaTarget (mirror produces) and KafkaSource (ingest
consumes), over confluent-kafka (the `tidelog[kafka]` extra, imported only here, when used).

Owns one librdkafka client per object. librdkafka's own log lines go to a logger that drops them
(they would reach stderr otherwise); its errors reach us through callbacks and become one
BridgeError. The producer is idempotent with acks=all: it never reorders and never leaves a gap
within a run, so the partition holds a prefix of what was sent when a run dies. Fields travel
natively: key (None stays a null key), value, headers (in order, names may repeat), timestamp
(Kafka has milliseconds: out `ns // 10**6`, in `ms * 10**6`). A timestamp below 1 ms cannot
travel as a Kafka timestamp (librdkafka reads 0 as "now"): such a record goes with the producer's
clock plus a header `tidelog-timestamp` (nanoseconds, decimal), which an ingest takes back.
A cluster that cannot be reached says why in the error line: refused credentials (SASL), an
untrusted certificate or another TLS failure, from what librdkafka reported (_Errors); a secret
of the settings never shows in it.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import time
from bisect import bisect_right
from itertools import accumulate, repeat
from operator import itemgetter, mul
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any, Optional

import numpy as np

from tidelog import _core
from tidelog.bridge.address import Address
from tidelog.bridge.base import (KAFKA_POSITION, OFFSET_HEADER, TIMESTAMP_HEADER, Batch,
                                 BridgeError, require, stamp_of)
from tidelog.bridge.security import SECRET_KEYS

_rdkc: Optional[ModuleType]
try:
    from tidelog.bridge import _rdkc
except ImportError:                 # (a build without it: confluent-kafka's Messages)
    _rdkc = None

__all__ = ["KafkaTarget", "KafkaSource"]

CONNECT_TIMEOUT = 8.0     # seconds: give up on an unreachable cluster within ~10 s
CONNECT_SLICE = 0.25      # seconds: a first metadata request waits this long, then we look why
CREATE_TIMEOUT = 3.0      # seconds a CreateTopics request may take (the mock cluster: never)
ACK_TIMEOUT = 30.0        # seconds for the cluster to acknowledge a batch
POLL = 0.5                # seconds a consumer poll waits
STALL = 4.0               # seconds with no message before an ingest that is catching up (not
                          # --follow) asks the cluster whether it is still there
BATCH_BYTES = 2 << 20     # an ingest batch's values, at most, about: a batch of 10,000 1 KiB
                          # messages (10 MB, out of the caches by the time it is appended)
                          # ingested at 0.48x of the raw loop, of 2,000 at 0.80x (Tansu, same run)
CONSUME = 100             # messages per consume(): a Message is tracked by the cyclic GC, and
                          # the fewer live at a time the less its collections walk and promote
                          # (the raw loop of bench/bridges.py ran 1.3-1.6x faster at 100 than at
                          # 10,000); a batch takes several, its columns kept, its messages not
BATCH_MESSAGES = 500      # an ingest batch's messages, at most: each consume() makes a Message
                          # per message, tracked by the cyclic GC, and the fewer live at a time
                          # the less its collections walk and promote. 1 KiB, Tansu, one run,
                          # against the raw loop: 10,000 0.70x, 1,000 0.82x, 500 0.85x, 250
                          # 0.84x, 100 0.76x (per-call costs); 100 B: 500 best too

FETCH_BACKOFF_MS = 20     # librdkafka's fetch.queue.backoff.ms for an ingest (default 1000): how
                          # long its fetcher rests once the consumer's queue is full. An ingest
                          # slower than the fetcher fills the queue (64 MiB), and the fetcher then
                          # rested a whole second while the queue drained in a third of one: at
                          # 1 KiB the ingest went from 0.41x to 0.66-0.72x of the raw loop (whose
                          # queue never fills) with 10-100 ms (Tansu, same run). A user's
                          # --config setting wins.

RECONNECT_BACKOFF_MS = 50   # librdkafka's reconnect.backoff.ms for the bridges (default 100): see
                            # _base_config
FETCH_WAIT_MS = 20        # librdkafka's fetch.wait.max.ms for an ingest (default 500): how long
                          # a broker may hold a fetch that finds nothing new. Kafka answers as
                          # soon as a message comes; Tansu and librdkafka's mock cluster hold it
                          # the whole time: a following ingest saw a message 232 ms (p50) after
                          # it was produced on Tansu, 5.6 ms with 20 (100 ms: 32 ms). Idle, it
                          # costs a small request every 20 ms. A user's --config setting wins.

# librdkafka's local error codes are spelled with a leading underscore (its public names)
PARTITION_EOF = "_PARTITION_EOF"
OFFSET_RESET = "_AUTO_OFFSET_RESET"   # auto.offset.reset=error: the position is out of range

_kind_of, _ms_of = itemgetter(0), itemgetter(1)     # of a Message.timestamp() pair

_quiet = logging.getLogger("tidelog.bridge.librdkafka")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


# librdkafka's error text: "sasl_ssl://HOST:PORT/ID: WHAT (after N ms in state S)"
_WHERE_PREFIX = re.compile(r"^[a-z_]+://\S+?: ")
_STATE_SUFFIX = re.compile(r" \(after \d+ms in state [A-Z_]+\)$")


class _Errors:
    """librdkafka's error_cb for every client of one bridge: the last errors it reported (a
    client retries, so they repeat), and from them the cause of a failure in one line."""

    def __init__(self, opts: dict[str, str]) -> None:
        self.seen: collections.deque[tuple[str, str]] = collections.deque(maxlen=32)
        self.secrets = [v for k, v in opts.items() if k in SECRET_KEYS and v]

    def __call__(self, err: Any) -> None:
        self.seen.append((err.name(), err.str()))

    def _clean(self, text: str) -> str:
        text = _STATE_SUFFIX.sub("", _WHERE_PREFIX.sub("", text))
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def refusal(self) -> Optional[str]:
        """A cause that waiting longer cannot change: the credentials were refused, or TLS
        failed (None: nothing of the kind was reported, e.g. the host is only unreachable)."""
        seen = list(self.seen)
        for name, text in reversed(seen):
            if name == "_AUTHENTICATION":
                return f"the cluster refused the credentials ({self._clean(text)})"
        for name, text in reversed(seen):
            low = text.lower()
            if "certificate verify failed" in low:
                return ("TLS: the broker's certificate is not trusted (certificate verify "
                        "failed; ssl.ca.location / TIDELOG_KAFKA_CA names the CA)")
            if "alert certificate required" in low:
                return ("TLS: the broker requires a client certificate (ssl.certificate.location "
                        "and ssl.key.location / TIDELOG_KAFKA_CERT and TIDELOG_KAFKA_KEY)")
            if name == "_SSL" or "ssl handshake failed" in low or "ssl routines" in low:
                return f"TLS: {self._clean(text)}"
        return None

    def cause(self) -> Optional[str]:
        """Why the cluster could not be reached (None: nothing telling was reported)."""
        refused = self.refusal()
        if refused is not None:
            return refused
        for name, text in reversed(list(self.seen)):
            if name != "_ALL_BROKERS_DOWN":          # "1/1 brokers are down" tells nothing
                return self._clean(text)
        return None

    def explain(self, text: str) -> str:
        """The cause of a failed request when one was reported, else its error `text`."""
        return self.cause() or text


def _unreadable(a: Address, offset: int) -> BridgeError:
    """A message whose headers cannot be read: a header name that is not UTF-8 (bytes on the
    wire: librdkafka writes any). Its Message.headers() raises SystemError (a
    UnicodeDecodeError inside) and keeps a list holding a pair with no name, which a second
    call hands out (its name read: a segfault, confluent-kafka 2.16.1): call it once only."""
    return BridgeError(f"Kafka topic {a.name!r} partition {a.partition}: the message at offset "
                       f"{offset} has a header whose name is not UTF-8 text, which "
                       f"confluent-kafka cannot read: it cannot be ingested")


def _base_config(address: Address, opts: dict[str, str]) -> dict[str, Any]:
    # reconnect.backoff.ms (librdkafka: 100; RECONNECT_BACKOFF_MS here): a new client's first
    # connection to a broker waited about half of it - ~48 ms of a short ingest's first
    # watermark request in 7 of 16 tries on the mock cluster at 100, at most 23 ms at 50 (2 of
    # 16 over 10 ms), 13 at 30, 10 at 10. The other side (atk21): while no broker of a client
    # is up, librdkafka retries the bootstrap server about every half of it, not doubling, for
    # the whole outage (a --follow bridge): an ingest on a closed port, ~9 s until it gives up,
    # made 1162 connects at 10 ms, 875 at 30, 554 at 50, 290 at 100, and 0.97 CPU s at 10
    # against 0.59 at 100; 50 halves 10's retries and keeps most of its first-connection gain
    cfg: dict[str, Any] = {"bootstrap.servers": ",".join(address.servers), "logger": _quiet,
                           "socket.connection.setup.timeout.ms": int(CONNECT_TIMEOUT * 1000),
                           "reconnect.backoff.ms": RECONNECT_BACKOFF_MS,
                           "error_cb": _Errors(opts)}
    if address.tls:
        cfg["security.protocol"] = "SSL"
    if "sasl.mechanism" in opts or "sasl.username" in opts:
        cfg["security.protocol"] = "SASL_SSL" if address.tls else "SASL_PLAINTEXT"
    cfg.update(opts)
    return cfg


def _where(address: Address) -> str:
    return f"Kafka {','.join(address.servers)}"


def _consumer_config(base: dict[str, Any], group: str, reset: str = "earliest",
                     wait_ms: Optional[int] = None,
                     backoff_ms: Optional[int] = None) -> dict[str, Any]:
    """The settings of a consumer that never commits and never asks the cluster to create a
    topic; `reset`: what it does at a position the partition does not hold ("error": an event,
    no jump); `wait_ms`: how long the broker may hold a fetch that finds nothing new
    (librdkafka's fetch.wait.max.ms, 500 by default); `backoff_ms`: fetch.queue.backoff.ms
    unless the user's settings (in `base`) name it."""
    extra: dict[str, Any] = {} if wait_ms is None else {"fetch.wait.max.ms": wait_ms}
    if backoff_ms is not None and "fetch.queue.backoff.ms" not in base:
        extra["fetch.queue.backoff.ms"] = backoff_ms
    return dict(base, **{"group.id": group, "enable.auto.commit": False,
                         "enable.partition.eof": True, "allow.auto.create.topics": False,
                         "auto.offset.reset": reset}, **extra)


def _consumer(ck: Any, base: dict[str, Any], group: str, reset: str = "earliest",
              wait_ms: Optional[int] = None, backoff_ms: Optional[int] = None) -> Any:
    """A confluent-kafka consumer with _consumer_config's settings."""
    try:
        return ck.Consumer(_consumer_config(base, group, reset, wait_ms, backoff_ms))
    except ck.KafkaException as e:
        raise BridgeError(f"Kafka settings: {e.args[0].str()}") from None


def _create(ck: Any, address: Address, base: dict[str, Any], c: Any) -> Any:
    """Make the topic: CreateTopics (partition + 1 partitions), or, where a cluster does not
    answer it (librdkafka's mock cluster), a metadata request that allows auto-creation."""
    topic = address.name
    admin = require("confluent_kafka.admin")
    ac = admin.AdminClient(dict(base))        # kept alive until the answer
    fs = ac.create_topics(
        [admin.NewTopic(topic, address.partition + 1)],
        operation_timeout=CREATE_TIMEOUT, request_timeout=CREATE_TIMEOUT)
    try:
        fs[topic].result()
    except Exception as e:
        why = e.args[0] if e.args else e
        code = why.code() if hasattr(why, "code") else None
        if code not in (ck.KafkaError.TOPIC_ALREADY_EXISTS,
                        getattr(ck.KafkaError, "_TIMED_OUT")):
            raise BridgeError(f"{_where(address)}: cannot create topic {topic!r}: "
                              f"{why.str() if hasattr(why, 'str') else why}") from None
        p = ck.Producer(dict(base))
        try:
            p.list_topics(topic, timeout=CONNECT_TIMEOUT)
        except ck.KafkaException as e:         # (the cluster gone meanwhile)
            raise BridgeError(f"{_where(address)}: cannot create topic {topic!r}: "
                              f"{base['error_cb'].explain(e.args[0].str())}") from None
        finally:
            p.flush(0)
    try:
        return c.list_topics(topic, timeout=CONNECT_TIMEOUT).topics.get(topic)
    except ck.KafkaException as e:
        raise BridgeError(f"{_where(address)}: cannot create topic {topic!r}: "
                          f"{base['error_cb'].explain(e.args[0].str())}") from None


def _first_metadata(ck: Any, address: Address, base: dict[str, Any], c: Any) -> Any:
    """The cluster's metadata of the topic, asked in short slices for up to CONNECT_TIMEOUT:
    between two, poll(0) lets error_cb run (it runs only inside poll()), and a refusal it
    reported (credentials, TLS) ends the wait at once instead of after the whole timeout."""
    errors: _Errors = base["error_cb"]
    deadline = time.monotonic() + CONNECT_TIMEOUT
    while True:
        end = min(time.monotonic() + CONNECT_SLICE, deadline)
        try:
            return c.list_topics(address.name, timeout=max(end - time.monotonic(), 0.01))
        except ck.KafkaException as e:
            # a request failed before its time was up (e.g. the broker closed the connection):
            # librdkafka gave up on it, so do we; a slice that ran out: look why, go on
            if time.monotonic() >= end - 0.02:
                c.poll(0)
                if errors.refusal() is None and time.monotonic() < deadline:
                    continue
            for _ in range(10):        # error_cb runs only inside poll(): let it tell why
                if errors.cause() is not None:
                    break
                c.poll(0.05)
            raise BridgeError(f"cannot reach {_where(address)}: "
                              f"{errors.explain(e.args[0].str())}") from None


def _metadata(ck: Any, address: Address, create: bool, base: dict[str, Any],
              consumer: Any = None) -> None:
    """Check the topic and partition exist (making the topic when `create`). Asked by a
    consumer that does not allow auto-creation (`consumer`, or one made here): a metadata
    request by a producer or an admin client makes a missing topic on brokers that
    auto-create."""
    topic = address.name
    c = consumer if consumer is not None else _consumer(ck, base, "tidelog-metadata")
    try:
        md = _first_metadata(ck, address, base, c)
        t = md.topics.get(topic)
        missing = t is None or (t.error is not None and
                                t.error.code() == ck.KafkaError.UNKNOWN_TOPIC_OR_PART)
        if missing:
            if not create:
                raise BridgeError(f"Kafka topic {topic!r} does not exist (--create makes it)")
            t = _create(ck, address, base, c)
        elif t is not None and t.error is not None:
            raise BridgeError(f"{_where(address)}: topic {topic!r}: {t.error.str()}")
        if t is None or address.partition not in t.partitions:
            n = 0 if t is None else len(t.partitions)
            raise BridgeError(f"Kafka topic {topic!r} has no partition {address.partition} "
                              f"(it has {n})")
    finally:
        if consumer is None:
            c.close()


TUNABLE = ("linger.ms", "queue.buffering.max.messages", "queue.buffering.max.kbytes")


class KafkaTarget:
    """Where a mirror produces: one partition of a topic."""

    def __init__(self, address: Address, opts: dict[str, str], create: bool) -> None:
        self.ck = require("confluent_kafka")
        self.address = address
        base = _base_config(address, opts)
        self.errors: _Errors = base["error_cb"]
        self.failed: Optional[str] = None
        self.first: Optional[int] = None        # the first and last offset produced since
        self.last: Optional[int] = None         # the last flush
        # delivery reports of failures only, to one callback: a Python call per message (an
        # on_delivery per produce) was a third of a mirror's time per 100 B record. Up to
        # 500,000 records in flight (librdkafka's default 100,000 made a 100 B mirror wait
        # for room half its time; its 1 GB bound on their bytes stays)
        pcfg = dict(base, **{"enable.idempotence": True, "acks": "all", "linger.ms": 5,
                             "on_delivery": self._delivered,
                             "delivery.report.only.error": True,
                             "queue.buffering.max.messages": 500_000,
                             # a record the cluster refuses for good stops the producer (a
                             # fatal error) rather than letting later ones through: the
                             # partition keeps a prefix, never a gap
                             "enable.gapless.guarantee": True})
        # what only tunes speed stays the user's to set (--config); what exactly once rests on
        # (idempotence, acks, gapless, the delivery reports) does not
        for key in TUNABLE:
            if key in opts:
                pcfg[key] = opts[key]
        try:
            self.producer = self.ck.Producer(pcfg)
        except self.ck.KafkaException as e:
            raise BridgeError(f"Kafka settings: {e.args[0].str()}") from None
        self.base = base
        _metadata(self.ck, address, create, base)
        # a metadata request of the producer's own (every topic's: one naming the topic would
        # make a missing one on a cluster that auto-creates) brings its connection up now; an
        # idempotent producer left alone got its producer id only at its next 0.5 s timer
        # tick, 0.5-1.0 s into every mirror (Tansu)
        try:
            self.producer.list_topics(timeout=CONNECT_TIMEOUT)
        except self.ck.KafkaException as e:
            raise BridgeError(f"cannot reach {_where(address)}: "
                              f"{self.errors.explain(e.args[0].str())}") from None

    def last_offset(self) -> Optional[int]:
        """Read from the reported last offset to the end of the partition (the end a fetch
        reports, not only the watermark: a broker's ListOffsets answer may lag or be wrong)."""
        ck, a = self.ck, self.address
        # (the end shows as PARTITION_EOF after a fetch that found nothing: the broker holds
        # it fetch.wait.max.ms, which made every mirror start wait 0.5 s)
        c = _consumer(ck, self.base, "tidelog-mirror-check", wait_ms=10)
        try:
            lo, hi = c.get_watermark_offsets(ck.TopicPartition(a.name, a.partition),
                                             timeout=CONNECT_TIMEOUT)
            start = max(lo, hi - 1)
            c.assign([ck.TopicPartition(a.name, a.partition, start)])
            last = None
            deadline = time.monotonic() + ACK_TIMEOUT
            while time.monotonic() < deadline:
                m = c.poll(POLL)
                if m is None:
                    continue
                err = m.error()
                if err is None:
                    last = m
                    continue
                if err.code() != getattr(ck.KafkaError, PARTITION_EOF):
                    raise BridgeError(f"{_where(a)}: {err.str()}")
                end = m.offset()
                if last is None and end > start:
                    break                      # the end is past what we could read: unsure
                if last is None:
                    return None
                if last.offset() != end - 1:
                    break
                try:
                    hs = last.headers() or []
                except (SystemError, UnicodeDecodeError):
                    hs = []        # a header name that is not UTF-8 (_unreadable): foreign
                for k, v in reversed(hs):
                    if k == OFFSET_HEADER and v is not None and v.isdigit():
                        return int(v)
                raise BridgeError(f"the last message of Kafka topic {a.name!r} partition "
                                  f"{a.partition} (offset {end - 1}) has no {OFFSET_HEADER} "
                                  f"header: it was not written by a tidelog mirror, so where "
                                  f"to resume is unknown")
            raise BridgeError(f"{_where(a)}: could not read the last message of {a.name!r} "
                              f"partition {a.partition}")
        except ck.KafkaException as e:
            raise BridgeError(f"{_where(a)}: {e.args[0].str()}") from None
        finally:
            c.close()

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None and self.failed is None:
            self.failed = err.str()

    def send(self, batch: Batch) -> None:
        """Produce the batch's records in order, each with its tidelog-offset header, column
        by column, with no object per record but its headers list. Does not wait for the
        cluster's acks (flush() does, once the mirror caught up): a wait per batch of 1,000
        cost a quarter of the raw producer's speed at 100 B, and one every 50,000 stopped
        producing while the broker drained (half a run's time). librdkafka's queue bounds
        what is in flight (BufferError: _produce_when_room), its delivery reports of failures
        are polled here, and the idempotent producer keeps the records in order, so a run
        killed meanwhile leaves a prefix, as always."""
        p, topic, part = self.producer, self.address.name, self.address.partition
        produce = p.produce
        offsets = batch.positions
        if not offsets:
            return
        if self.first is None:
            self.first = offsets[0]
        for o, v, k, ts, h, oh in zip(offsets, batch.values, batch.keys, batch.timestamps,
                                      batch.headers, zip(repeat(OFFSET_HEADER),
                                                         map(b"%d".__mod__, offsets))):
            ms = ts // 1_000_000
            if ms > 0:
                hs = [*h, oh]
            else:                       # 0 would mean "now" to librdkafka: the header keeps it
                hs = [*h, (TIMESTAMP_HEADER, b"%d" % ts), oh]
                ms = 0
            try:
                produce(topic, v, k, part, timestamp=ms, headers=hs)
            except BufferError:
                self._produce_when_room(o, v, k, ms, hs)
            except self.ck.KafkaException as e:
                self._refused(o, v, e)
        self.last = offsets[-1]
        p.poll(0)                       # delivery reports (failures only) and errors
        if self.failed is not None:
            self.flush()

    def flush(self) -> None:
        """Wait for the cluster to acknowledge every record produced (BridgeError if not)."""
        left = self.producer.flush(ACK_TIMEOUT)
        if self.failed is not None or left:
            why = self.failed or self.errors.cause() or "no acknowledgement"
            raise BridgeError(f"{_where(self.address)}: producing offsets {self.first}.."
                              f"{self.last} failed: {why}; a restart resumes exactly once")
        self.first = None

    def _produce_when_room(self, o: int, v: bytes, k: Optional[bytes], ms: int,
                           hs: list[tuple[str, bytes]]) -> None:
        """produce() once the local queue has room (it was full: BufferError). A failure
        reported meanwhile, or no room for ACK_TIMEOUT (the cluster acknowledges nothing: it
        is gone), ends the run through flush() (BridgeError): waiting on would last until
        message.timeout.ms failed every queued record (5 minutes by default; the mirror deaf
        to a stop meanwhile), and producing on after a failure could put later records in the
        target after a gap once the cluster is back."""
        p = self.producer
        deadline = time.monotonic() + ACK_TIMEOUT
        while True:
            # (short: with delivery reports of failures only, a poll serves no event while the
            # cluster takes the queued records, and sits out its whole timeout)
            p.poll(0.005)
            if self.failed is not None or time.monotonic() > deadline:
                self.last = o - 1       # (the records before o: a log's offsets follow on)
                self.flush()            # raises unless every record was acknowledged
                self.first = o
                deadline = time.monotonic() + ACK_TIMEOUT
            try:
                p.produce(self.address.name, v, k, self.address.partition, timestamp=ms,
                          headers=hs)
                return
            except BufferError:
                continue
            except self.ck.KafkaException as e:
                self._refused(o, v, e)

    def _refused(self, o: int, v: bytes, e: Any) -> None:
        """A record refused locally (e.g. larger than message.max.bytes): nothing after it was
        produced; what was before it goes out, a prefix as always. Raises BridgeError."""
        err = e.args[0]
        big = err.code() == self.ck.KafkaError.MSG_SIZE_TOO_LARGE
        self.producer.flush(ACK_TIMEOUT)
        raise BridgeError(
            f"{_where(self.address)}: the record at offset {o} cannot be produced: "
            f"{err.str()}" +
            (f" ({len(v)} bytes; librdkafka's message.max.bytes, settable with --config, and "
             f"the topic's max.message.bytes bound it)" if big else "")) from None

    def close(self) -> None:
        self.producer.flush(5)


FAST_ENV = "TIDELOG_INGEST_KAFKA"   # "confluent": an ingest reads through confluent-kafka
                                    # even where _rdkc's C loop is available (tests, a doubt);
                                    # not TIDELOG_KAFKA_*: those are client settings
                                    # (security.py)


def fast_unavailable() -> Optional[str]:
    """Why an ingest reads through confluent-kafka's Messages rather than _rdkc's C loop on
    the same librdkafka (None: it does not, it reads in C)."""
    if os.environ.get(FAST_ENV, "") == "confluent":
        return f"{FAST_ENV}=confluent"
    if _rdkc is None:
        return "tidelog.bridge._rdkc is not built"
    why: Optional[str] = _rdkc.load()
    return why


def _setting(v: Any) -> str:
    """A setting as librdkafka's C API takes it (confluent-kafka's dict: also bool, int)."""
    if v is True or v is False:
        return "true" if v else "false"
    return str(v)


class _Unreadable(Exception):
    """A message's header name is not UTF-8 text: args (offset,)."""


_UNREADABLE: tuple[type[Exception], ...] = ((_Unreadable,) if _rdkc is None else
                                            (_Unreadable, _rdkc.UnreadableHeader))


class _ConfluentReader:
    """One partition read through a confluent-kafka Consumer: its Messages made into columns
    in Python (see _FastReader for what each method does)."""

    chunk = CONSUME                     # messages per take(), at most
    packed = False                      # values as a list of bytes (see _FastReader.packed)

    def __init__(self, ck: Any, consumer: Any, address: Address) -> None:
        self.ck, self.c, self.address = ck, consumer, address
        self.tp = ck.TopicPartition(address.name, address.partition)
        km = ck.Message
        self.fields = (km.error, km.offset, km.value, km.key, km.timestamp, km.headers)

    def watermarks(self, timeout: float) -> tuple[int, int]:
        try:
            lo, hi = self.c.get_watermark_offsets(self.tp, timeout=timeout)
        except self.ck.KafkaException as e:
            raise BridgeError(f"{_where(self.address)}: {e.args[0].str()}") from None
        return int(lo), int(hi)

    def cached_end(self) -> int:
        return int(self.c.get_watermark_offsets(self.tp, cached=True)[1])

    def assign(self, offset: int) -> None:
        a = self.address
        self.c.assign([self.ck.TopicPartition(a.name, a.partition, offset)])

    def take(self, n: int, timeout: float, whole: bool, offs: list[int], vals: list[bytes],
             keys: list[Optional[bytes]], tss: list[int],
             hs: list[Any]) -> tuple[int, int, bool, list[tuple[str, str, int]]]:
        c = self.c
        error, offset, value, key, stamp, headers = self.fields
        # consume(n, t) returns once it has n messages (or events) or t passed
        if whole:
            got = c.consume(n, timeout)
        else:
            first = c.poll(timeout)
            got = [] if first is None else [first] + c.consume(n - 1, 0)
        events: list[tuple[str, str, int]] = []
        # events among the messages (rare): a KafkaError is true, None false (test_kafka_
        # error_is_true; `is not None` per message in Python cost ~0.1 us a message, and
        # errs.count(None) compares a KafkaError with None, which raises)
        if got and any(map(error, got)):
            kept = []
            for m in got:
                err = m.error()
                if err is None:
                    kept.append(m)
                    continue
                events.append((err.name(), err.str(), m.offset()))
                if err.name() != PARTITION_EOF:
                    break                  # (nothing after it is taken)
            got = kept
        if not got:
            return 0, 0, False, events
        # column by column, with no object of ours per message (the per-message cost of an
        # ingest: keep it lean)
        o = list(map(offset, got))
        # (kind, ms) pairs: ms * 10**6, in C (map), unless a message has none (old brokers:
        # stamped now); a comprehension cost ~0.1 us a message more
        st = list(map(stamp, got))
        no_ts = self.ck.TIMESTAMP_NOT_AVAILABLE
        if no_ts in map(_kind_of, st):
            now = time.time_ns()
            t = [ms * 1_000_000 if kind != no_ts else now for kind, ms in st]
        else:
            t = list(map(mul, map(_ms_of, st), repeat(1_000_000)))
        # a message's own headers (a list of pairs, or None), mended first where they need it
        # (KafkaSource._fix_headers: null values too)
        h: list[Any] = []
        try:
            h.extend(map(headers, got))     # (extend: keeps those before a failure)
        except (SystemError, UnicodeDecodeError):
            raise _Unreadable(got[len(h)].offset()) from None
        KafkaSource._fix_headers(h, t)
        v = list(map(value, got))
        if not all(v):            # a null value is an empty record (b"" stays)
            v = [b"" if x is None else x for x in v]
        keys += map(key, got)
        offs += o
        tss += t
        hs += h
        vals += v
        return len(o), sum(map(len, v)), False, events

    def close(self) -> None:
        self.c.close()


class _FastReader:
    """One partition read through _rdkc's C loop (librdkafka's C API, no Message objects)."""

    # messages per take(), at most: they are no Python objects, so a whole batch per take
    # (fewer calls), where confluent-kafka's Messages are taken CONSUME at a time
    chunk = BATCH_MESSAGES
    # take() packs values into a bytearray (its `ends` argument): see Batch.value_offsets
    packed = True

    def __init__(self, base: dict[str, Any], address: Address) -> None:
        assert _rdkc is not None
        self.address = address
        settings = {k: _setting(v) for k, v in base.items() if k not in ("logger", "error_cb")}
        try:
            self.c = _rdkc.Consumer(settings, address.name, address.partition)
        except (ValueError, TypeError) as e:
            raise BridgeError(f"Kafka settings: {e}") from None
        # take(n, timeout, whole, offs, vals, keys, tss, hs, ends) -> (taken, value bytes,
        # marked, events): up to n messages appended to the columns (vals a bytearray the
        # values go into back to back, ends one of their ends, int64); `whole`: wait up to
        # timeout for all n, else for the first only; `marked`: a header is named
        # TIMESTAMP_HEADER; events (error name, text, offset) among them, nothing taken after
        # one but PARTITION_EOF
        self.take = self.c.take

    def watermarks(self, timeout: float) -> tuple[int, int]:
        """(first offset, end) as the cluster says now."""
        try:
            lo, hi = self.c.watermarks(timeout)
        except RuntimeError as e:
            raise BridgeError(f"{_where(self.address)}: {e}") from None
        return int(lo), int(hi)

    def cached_end(self) -> int:
        """The end the last fetch reported (-1: none yet)."""
        return int(self.c.cached_watermarks()[1])

    def assign(self, offset: int) -> None:
        """Read from `offset` on."""
        self.c.assign(offset)

    def close(self) -> None:
        self.c.close()


class KafkaSource:
    """Where an ingest reads: one partition of a topic. Its consumer never jumps: a position
    the partition no longer holds (retention deleted it, before the start or while reading) is
    an error, or with `skip_gap` a jump to the partition's first offset, never a silent reset.
    It reads through _rdkc's C loop where it can (fast_unavailable() says why not), else
    through confluent-kafka's Messages; the metadata, the topic's creation and the checks go
    through confluent-kafka either way."""

    def __init__(self, address: Address, opts: dict[str, str], create: bool,
                 skip_gap: bool = False) -> None:
        self.ck = require("confluent_kafka")
        self.address = address
        self.skip_gap = skip_gap
        base = _base_config(address, opts)
        wait = None if "fetch.wait.max.ms" in opts else FETCH_WAIT_MS
        # one consumer asks the metadata and reads (a second one cost a connection to every
        # broker again: 20-40 ms of an ingest's fixed cost on the mock cluster). The C loop's
        # consumer is a second one: made before the metadata is asked, so that its connections
        # come up meanwhile (made after it, the first batch came 50-700 ms later on the mock
        # cluster), and the first one closed once the metadata is known
        consumer = _consumer(self.ck, base, "tidelog-ingest", "error", wait, FETCH_BACKOFF_MS)
        self.reader: Any = None
        fast: Optional[_FastReader] = None
        try:
            if fast_unavailable() is None:
                fast = _FastReader(_consumer_config(base, "tidelog-ingest", "error", wait,
                                                    FETCH_BACKOFF_MS), address)
            _metadata(self.ck, address, create, base, consumer)
            if fast is not None:
                consumer.close()
                consumer = None
                self.reader = fast
            else:
                self.reader = _ConfluentReader(self.ck, consumer, address)
        except BaseException:
            if consumer is not None:
                consumer.close()
            if fast is not None:
                fast.close()
            raise

    def _gap(self, missing: int) -> int:
        """Where to go on when offset `missing` is no longer in the partition: its first
        offset if `skip_gap`, else BridgeError."""
        a = self.address
        lo, _ = self.reader.watermarks(CONNECT_TIMEOUT)
        if lo <= missing:
            raise BridgeError(f"Kafka topic {a.name!r} partition {a.partition} no longer holds "
                              f"offset {missing} but starts at {lo}: was it deleted and made "
                              f"again? Ingest into a log of its own")
        if not self.skip_gap:
            raise BridgeError(f"Kafka topic {a.name!r} partition {a.partition} starts at "
                              f"offset {lo}: offsets {missing}..{lo - 1} were deleted (retention) "
                              f"before they were ingested; --skip-gap ingests from {lo} on")
        return int(lo)

    def batches(self, after: Optional[int], follow: bool, stopping: Callable[[], bool],
                max_batch: int = BATCH_MESSAGES) -> Iterator[Batch]:
        a, r = self.address, self.reader
        lo, end = r.watermarks(CONNECT_TIMEOUT)
        start = lo if after is None else after + 1
        if start < lo:
            start = self._gap(start)
        r.assign(start)
        take, chunk = r.take, r.chunk
        pos = KAFKA_POSITION
        want = max_batch                   # messages per batch: BATCH_BYTES of the last ones
        # a batch's columns, filled CONSUME messages at a time (confluent-kafka: its messages
        # are dropped as soon as their columns are taken, see CONSUME)
        offs: list[int] = []
        # the C loop's values: one bytearray, back to back, and their ends (int64, after a 0:
        # append_batch's value_offsets); confluent-kafka's: a list of bytes
        packed = r.packed
        vals: Any = bytearray() if packed else []
        ends = bytearray(8)
        more: tuple[bytearray, ...] = (ends,) if packed else ()
        keys: list[Optional[bytes]] = []
        tss: list[int] = []
        hs: list[Any] = []
        nbytes = 0                         # their values' bytes
        quiet = time.monotonic()           # when the last message came
        while not stopping():
            ask = max(1, min(chunk, want - len(offs)))
            here = len(offs)
            try:
                if follow:
                    # between messages it would sit out the whole POLL: take what is here, and
                    # wait only for the first message of a batch (what has come goes on as
                    # soon as no more is here)
                    taken, size, marked, events = take(ask, 0, True, offs, vals, keys, tss, hs,
                                                       *more)
                    if not taken and not events and not offs:
                        taken, size, marked, events = take(ask, POLL, False, offs, vals, keys,
                                                           tss, hs, *more)
                else:
                    # catching up: wait for a full chunk, but ask for no more than the end the
                    # last fetch reported leaves (the watermark asked at the start, at first),
                    # or the last chunk would sit out POLL. Taking only what had arrived made
                    # batches of a few messages whenever the broker was slower than this loop
                    # (same speed within the noise once the GC is tuned, but fewer wake-ups).
                    # The end is asked again (the last fetch's, cached) only when the one known
                    # limits the chunk: a call per consume() cost ~0.07 us a message.
                    if end - start < ask:
                        end = max(end, r.cached_end())
                    taken, size, marked, events = take(max(1, min(ask, end - start)), POLL,
                                                       True, offs, vals, keys, tss, hs, *more)
            except _UNREADABLE as e:
                raise _unreadable(a, e.args[0]) from None
            short = taken + len(events) < ask
            done = False
            gap = None                     # where retention deleted what was next, if it did
            for name, text, _ in events:
                if name == PARTITION_EOF:
                    done = not follow
                elif name == OFFSET_RESET:
                    # the consumer's position is gone (retention): after what was taken, which
                    # goes to the log first with the rest of the batch (was: dropped when _gap
                    # refused, and its range not named)
                    gap = offs[-1] + 1 if taken else start
                    short = True
                else:
                    raise BridgeError(f"{_where(a)}: {text}")
            if taken:
                quiet = time.monotonic()
                if marked:                 # (the C loop: a TIMESTAMP_HEADER to take back)
                    h, t = hs[here:], tss[here:]
                    self._fix_headers(h, t)
                    hs[here:], tss[here:] = h, t
                nbytes += size
                last = offs[-1]
                start = last + 1
                if not follow and not done and last >= end - 1:
                    # the end the last fetch reported (what PARTITION_EOF is made of, but that
                    # event waits for one more, empty fetch: fetch.wait.max.ms, 0.5 s default),
                    # asked once the known one is reached (it only grows)
                    seen = r.cached_end()
                    end = max(end, seen)
                    done = seen >= 0 and last >= seen - 1
            elif not offs and not done and gap is None:
                # nothing came: a partition whose end (as a fetch reported it) is before the
                # position is not the one the log's positions are from (deleted and made
                # again?); a broker that does not answer OFFSET_OUT_OF_RANGE there (Tansu) made
                # this wait for ever. Catching up, STALL seconds of nothing: the cluster is
                # asked for the partition's ends, and one that does not answer within
                # CONNECT_TIMEOUT ends the ingest (was: a broker gone mid-run, a wait for ever)
                if not follow and time.monotonic() - quiet > STALL:
                    try:
                        r.watermarks(CONNECT_TIMEOUT)
                    except BridgeError as e:
                        raise BridgeError(f"{e} (nothing came for {STALL:g} s: the cluster "
                                          f"stopped answering)") from None
                    quiet = time.monotonic()
                seen = r.cached_end()
                if 0 <= seen < start:
                    raise self._ends_before(seen, start)
                continue
            while offs and (len(offs) >= want or short or done or nbytes > BATCH_BYTES):
                if packed:
                    b, vals, ends = self._packed_batch(offs, vals, ends, keys, tss, hs)
                    more = (ends,)
                    if len(b) == len(offs):
                        offs, keys, tss, hs = [], [], [], []
                    else:
                        del offs[:len(b)], keys[:len(b)], tss[:len(b)], hs[:len(b)]
                    size = b.value_bytes()
                elif nbytes <= BATCH_BYTES:
                    b = Batch(offs, vals, keys, tss, hs, pos)
                    offs, vals, keys, tss, hs = [], [], [], [], []
                    size = nbytes
                else:
                    # at most BATCH_BYTES of values per batch (or one larger message): `want`
                    # follows the last batch's mean size, but a first batch, or large messages
                    # after small ones, came CONSUME at a time whatever their size (1 MB
                    # messages: 500 MB in one append, past a segment: refused at every start)
                    cut = max(1, bisect_right(list(accumulate(map(len, vals))), BATCH_BYTES))
                    b = Batch(offs[:cut], vals[:cut], keys[:cut], tss[:cut], hs[:cut], pos)
                    del offs[:cut], vals[:cut], keys[:cut], tss[:cut], hs[:cut]
                    size = sum(map(len, b.values))
                nbytes -= size
                # (64: a message's own cost)
                want = max(2, min(max_batch, BATCH_BYTES // (size // len(b) + 64)))
                yield b
            if gap is not None:
                r.assign(self._gap(gap))
            if done:                           # the end a fetch saw (not the watermark)
                return

    def _ends_before(self, end: int, start: int) -> BridgeError:
        """The error for a partition that ends (at `end`) before `start`, where the log's
        positions go on."""
        a = self.address
        return BridgeError(f"Kafka topic {a.name!r} partition {a.partition} ends at offset "
                           f"{end}, before offset {start} where the log's positions go on: was "
                           f"it deleted and made again? Ingest into a log of its own")

    @staticmethod
    def _packed_batch(offs: list[int], vals: bytearray, ends: bytearray, keys: list[Any],
                      tss: list[int], hs: list[Any]) -> tuple[Batch, bytearray, bytearray]:
        """The next batch of packed columns (the C loop's: values back to back in `vals`,
        their ends in `ends`): all of them when their values are at most BATCH_BYTES, else the
        first ones within it (at least one); returns it and new vals and ends for the rest
        (the batch keeps the old ones; the caller drops its messages from the lists)."""
        eo = np.frombuffer(ends, dtype=np.int64)
        n = len(offs)
        if int(eo[n]) <= BATCH_BYTES:
            return (Batch(offs, vals, keys, tss, hs, KAFKA_POSITION, eo), bytearray(),
                    bytearray(8))
        cut = max(1, int(np.searchsorted(eo[1:], BATCH_BYTES, side="right")))
        vend = int(eo[cut])
        b = Batch(offs[:cut], vals[:vend], keys[:cut], tss[:cut], hs[:cut], KAFKA_POSITION,
                  eo[:cut + 1].copy())
        rest = bytearray((eo[cut:] - vend).tobytes())
        return b, vals[vend:], rest

    @staticmethod
    def _fix_headers(raw: list[Optional[list[tuple[str, Optional[bytes]]]]],
                    tss: list[int]) -> None:
        """In place, on the messages' own headers (`raw`: a list of pairs or None per
        message): a null header value becomes b"", and a mirrored timestamp below 1 ms
        (TIMESTAMP_HEADER) goes back into tss[i] and out of the record's headers. Checked for
        the whole batch at once, in C (_core.header_marks: passes over the pairs in Python
        cost ~0.25 us a message): most batches have neither."""
        if not _core.header_marks(raw, TIMESTAMP_HEADER):
            return
        for i, h in enumerate(raw):
            if not h:
                continue
            fixed: list[tuple[str, Optional[bytes]]] = [(k, b"" if v is None else v)
                                                       for k, v in h]
            for j, (k, v) in enumerate(fixed):
                if k == TIMESTAMP_HEADER:
                    ts = stamp_of(v)
                    if ts is not None:
                        tss[i] = ts
                        del fixed[j]
                        break
            raw[i] = fixed

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None
