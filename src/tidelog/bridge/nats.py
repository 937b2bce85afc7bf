"""The NATS JetStream side of the bridges: NatsTarget (mirror publishes) and NatsSource (ingest
reads), over nats-py (the `tidelog[nats]` extra, imported only here and only when used).

Owns one nats-py connection per object and the asyncio event loop it runs on (a private loop,
driven from the calling thread: no thread of its own). The connection never reconnects: a
connection lost mid-run is a BridgeError (exit 2), and the next start resumes exactly once from
what the server holds. That is the point: a client that resends buffered messages after a
reconnect could store a message twice.

How a record travels (NATS messages have no key, no timestamp and only text headers):
    tidelog-offset     the record's offset, decimal
    tidelog-timestamp  its timestamp in nanoseconds, decimal
    tidelog-key        its key, standard base64 (absent when the record has no key)
    tidelog-headers    its headers, when it has any: base64 of a JSON list [[name, base64 value],
                       ...] in order (names may repeat; values are any bytes)
An ingest of a message without these headers takes its timestamp from JetStream (the stored
time, ns), no key, and its text headers as the record's headers (utf-8), in order.

An ingest reads an ephemeral pull consumer (AckPolicy none) created at the resume point, with pull
requests of its own (_Pull: nats-py's fetch() costs ~4x the CPU per message), and checks the
consumer sequence of every message (1, 2, 3, ...): a message lost or repeated on the way is an
error before anything after it is appended. Messages the stream deleted before they were read
(retention, a purge) the consumer skips by itself, its sequences showing nothing: the stream
sequences do (NatsSource._check_subject_gaps), checked before a batch with a jump
is appended, and at the start against the log's last one.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import json
import ssl
from collections.abc import Callable, Iterator
from typing import Any, Optional

from tidelog.bridge.address import Address
from tidelog.bridge.base import (NATS_POSITION, OFFSET_HEADER, TIMESTAMP_HEADER, Batch,
                                 BridgeError, Message, require, stamp_of)

__all__ = ["NatsTarget", "NatsSource", "encode_headers", "decode_message"]

CONNECT_TIMEOUT = 8.0     # seconds: give up on an unreachable server within ~10 s
ACK_TIMEOUT = 10.0        # seconds to wait for JetStream's acks of a batch
FETCH_WAIT = 0.5          # seconds a pull request waits for messages
PULL_GRACE = 1.0          # seconds past FETCH_WAIT without an answer: the requests are gone
PULL_AHEAD = 2            # pull requests outstanding while a batch is appended
PULL_BYTES = 2 << 20      # bytes a pull request asks for at most: what the server sends ahead
                          # stays far below its max_pending per client (64 MiB by default; it
                          # drops a client it cannot write that much to as a slow consumer)
_PULL_ENDS = ("Message Size Exceeds MaxBytes", "Leadership Change", "Server Shutdown")  # 409s
API_PREFIX = "$JS.API"    # JetStream's API subjects (no domain: _Conn asks for none)
TS_HEADER, KEY_HEADER, HDRS_HEADER = TIMESTAMP_HEADER, "tidelog-key", "tidelog-headers"
EXPECT_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"


def encode_headers(msg: Message) -> dict[str, str]:
    h = {OFFSET_HEADER: str(msg.position), TS_HEADER: str(msg.timestamp)}
    if msg.key is not None:
        h[KEY_HEADER] = base64.b64encode(msg.key).decode()
    if msg.headers:
        pairs = [[k, base64.b64encode(v).decode()] for k, v in msg.headers]
        h[HDRS_HEADER] = base64.b64encode(json.dumps(pairs).encode()).decode()
    return h


def decode_message(seq: int, data: bytes, headers: Optional[dict[str, str]],
                   timestamp_ns: int) -> Message:
    """A stream message as a record. Its tidelog-* headers (a mirror's, or anyone's who wrote
    them) are checked: a malformed one is a BridgeError naming the message, never a raw
    binascii/JSON/ValueError, and never a record with a made-up key or time."""
    if not headers:
        return Message(seq, data, None, timestamp_ns, [(NATS_POSITION, str(seq).encode())])
    key, ts, out = _decode_headers(seq, headers, timestamp_ns)
    return Message(seq, data, key, ts, out)


def _decode_headers(seq: int, h: dict[str, str], timestamp_ns: int
                    ) -> tuple[Optional[bytes], int, list[tuple[str, bytes]]]:
    """(key, timestamp, headers) of the record a message with headers `h` makes: see
    decode_message. The headers end with the message's NATS_POSITION."""
    try:
        key = base64.b64decode(h[KEY_HEADER], validate=True) if KEY_HEADER in h else None
        ts = timestamp_ns
        if TS_HEADER in h:
            text = h[TS_HEADER]
            stamp = stamp_of(text)
            if stamp is None:
                raise ValueError(f"{TS_HEADER} {text[:40]!r} is not a timestamp in ns")
            ts = stamp
        if HDRS_HEADER in h:
            pairs = json.loads(base64.b64decode(h[HDRS_HEADER], validate=True))
            if not (isinstance(pairs, list) and all(
                    isinstance(p, list) and len(p) == 2 and isinstance(p[0], str)
                    and isinstance(p[1], str) for p in pairs)):
                raise ValueError(f"{HDRS_HEADER} is not a list of [name, base64 value] pairs")
            out = [(k, base64.b64decode(v, validate=True)) for k, v in pairs]
        else:
            out = [(k, v.encode()) for k, v in h.items()
                   if k not in _OWN and not k.startswith("Nats-")]
    except (ValueError, TypeError) as exc:      # binascii.Error and JSONDecodeError are these
        raise BridgeError(f"stream message {seq}: malformed tidelog header ({exc}); it was not "
                          f"written by tidelog mirror, or was damaged") from None
    if OFFSET_HEADER in h:
        out.append((OFFSET_HEADER, h[OFFSET_HEADER].encode()))
    out.append((NATS_POSITION, str(seq).encode()))
    return key, ts, out


_OWN = frozenset((TS_HEADER, KEY_HEADER, OFFSET_HEADER))


def _describe(exc: BaseException) -> str:
    """A one-line cause of a connection failure (nats-py's messages, minus anything secret)."""
    text = str(exc)
    low = text.lower()
    if isinstance(exc, ssl.SSLCertVerificationError) or "certificate verify failed" in low:
        return "TLS: the server's certificate is not trusted (certificate verify failed)"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or type(exc).__name__}"
    if "authorization violation" in low or "authentication" in low:
        return "the server refused the credentials (authorization violation)"
    return f"{type(exc).__name__}" + (f": {text}" if text and len(text) < 200 else "")


def _tls_hint(exc: BaseException, why: str, has_cert: bool) -> str:
    """`why` with what a TLS failure says about the client certificate: a server that
    verifies client certificates refuses one its CA did not sign (an alert the client hears),
    and with TLS 1.3 closes the connection to a client that sent none (all the client hears is
    the connection lost). With TLS 1.3 the refusal of a certificate comes after the client's
    side of the handshake, when the client has sent its first request: the server hangs up on
    that unread request (a reset), and the alert before it is lost when the reset comes first.
    So a connection lost with a certificate sent may be that refusal too."""
    low = str(exc).lower()
    if "unknown_ca" in low or "unknown ca" in low or "bad_certificate" in low:
        return f"TLS: the server does not trust the client certificate ({why})"
    lost = isinstance(exc, ConnectionError) or "connection lost" in low
    if "certificate_required" in low or "certificate required" in low or (
            not has_cert and lost):
        return (f"{why}; the server may require a client certificate (TIDELOG_NATS_CERT and "
                f"TIDELOG_NATS_KEY, or cert= and key= in --config)")
    if has_cert and lost:
        return (f"{why}; the server may not trust the client certificate (signed by a CA it "
                f"does not know?)")
    return why


class _Conn:
    """A connection and its private event loop."""

    def __init__(self, address: Address, opts: dict[str, str]) -> None:
        self.nats = require("nats")
        self.address = address
        self.loop = asyncio.new_event_loop()
        self.errors: list[BaseException] = []
        self.nc: Any = None
        try:
            self.nc = self.run(self._connect(opts), CONNECT_TIMEOUT + 1)
        except asyncio.TimeoutError:
            self.loop.close()
            cause = f": {_describe(self.errors[-1])}" if self.errors else ""
            raise BridgeError(f"cannot connect to NATS at {','.join(address.servers)}: no "
                              f"connection within {CONNECT_TIMEOUT + 1:.0f} s{cause}") from None
        except BaseException:
            self.loop.close()
            raise
        self.js = self.nc.jetstream(timeout=ACK_TIMEOUT)
        self.jsm = self.nc.jsm()

    def run(self, coro: Any, timeout: Optional[float] = None) -> Any:
        if timeout is not None:
            coro = asyncio.wait_for(coro, timeout)
        return self.loop.run_until_complete(coro)

    async def _connect(self, opts: dict[str, str]) -> Any:
        async def on_error(e: BaseException) -> None:     # nats-py would log it: keep it
            self.errors.append(e)

        async def quiet(*_: Any) -> None:
            pass

        kw: dict[str, Any] = dict(connect_timeout=CONNECT_TIMEOUT, allow_reconnect=False,
                                  max_reconnect_attempts=0, error_cb=on_error,
                                  disconnected_cb=quiet, closed_cb=quiet, reconnected_cb=quiet)
        if "token" in opts:
            kw["token"] = opts["token"]
        if "user" in opts:
            kw["user"] = opts["user"]
            kw["password"] = opts.get("password", "")
        if "creds" in opts:
            require("nkeys")          # nats-py imports it only inside connect(): name the extra
            kw["user_credentials"] = opts["creds"]
        scheme = "tls" if self.address.tls or "ca" in opts else "nats"
        if scheme == "tls":
            ctx = ssl.create_default_context(cafile=opts.get("ca"))
            if "cert" in opts:
                ctx.load_cert_chain(opts["cert"], opts.get("key"))
            kw["tls"] = ctx
            kw["tls_hostname"] = self.address.servers[0].rsplit(":", 1)[0].strip("[]")
        servers = [f"{scheme}://{s}" for s in self.address.servers]
        where = ",".join(self.address.servers)
        try:
            return await self.nats.connect(servers, **kw)
        except Exception as e:
            cause = self.errors[-1] if self.errors else e
            if "NoServers" in type(e).__name__ and self.errors:
                cause = self.errors[-1]
            why = _describe(cause)
            if scheme == "tls":
                why = _tls_hint(cause, why, "cert" in opts)
            raise BridgeError(f"cannot connect to NATS at {where}: {why}") from None

    def check(self, exc: BaseException, doing: str) -> BridgeError:
        return BridgeError(f"NATS {','.join(self.address.servers)}: {doing}: "
                           f"{_describe(exc)}")

    def stream(self, create: bool, subject: str) -> Any:
        NotFound = self.nats.js.errors.NotFoundError
        name = self.address.name
        try:
            return self.run(self.jsm.stream_info(name), ACK_TIMEOUT)
        except NotFound:
            pass
        except Exception as e:
            raise self.check(e, f"stream {name!r}") from None
        if not create:
            raise BridgeError(f"NATS stream {name!r} does not exist (--create makes it, "
                              f"capturing subject {subject!r})")
        api = self.nats.js.api
        try:
            return self.run(self.jsm.add_stream(api.StreamConfig(name=name, subjects=[subject])),
                            ACK_TIMEOUT)
        except Exception as e:
            raise self.check(e, f"creating stream {name!r}") from None

    def close(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            try:
                self.run(self.nc.close(), 5)
            except Exception:
                pass
        self.loop.close()


def _covers(pattern: str, subject: str) -> bool:
    """Whether every subject that `subject` names (itself, or what its wildcards match) matches
    `pattern`."""
    p, s = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or s[i] == ">" or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


def _holds(seqs: list[int], seq: int) -> bool:
    """Whether sorted `seqs` holds `seq`."""
    i = bisect.bisect_left(seqs, seq)
    return i < len(seqs) and seqs[i] == seq


class NatsTarget:
    """Where a mirror publishes: the subject of a JetStream stream."""

    def __init__(self, address: Address, opts: dict[str, str], create: bool) -> None:
        self.subject = address.subject or address.name
        self.conn = _Conn(address, opts)
        try:
            info = self.conn.stream(create, self.subject)
            if not any(_covers(p, self.subject) for p in (info.config.subjects or [])):
                raise BridgeError(f"NATS stream {address.name!r} does not capture subject "
                                  f"{self.subject!r} (its subjects: {info.config.subjects})")
        except BaseException:
            self.conn.close()
            raise
        self.last_seq: Optional[int] = None
        self.stream_max = info.config.max_msg_size or -1    # -1: no limit of the stream's
        self.inbox = self.conn.nc.new_inbox()
        self.acks: dict[int, Any] = {}
        self.sub = self.conn.run(self.conn.nc.subscribe(self.inbox + ".*", cb=self._on_ack))

    async def _on_ack(self, msg: Any) -> None:
        self.acks[int(msg.subject.rsplit(".", 1)[1])] = msg.data

    def last_offset(self) -> Optional[int]:
        """The tidelog-offset of the last message on the subject (None: no message)."""
        c = self.conn
        try:
            m = c.run(c.jsm.get_last_msg(c.address.name, self.subject), ACK_TIMEOUT)
        except c.nats.js.errors.NotFoundError:
            self._check_never_written()
            self.last_seq = 0
            return None
        except Exception as e:
            raise c.check(e, f"reading the last message on {self.subject!r}") from None
        self.last_seq = m.seq
        value = (m.headers or {}).get(OFFSET_HEADER)
        # (nats-py gives a value with bytes beyond ASCII as an email.header.Header, not a str;
        # and str.isdigit takes digits of any script, which int() refuses ('²') or reads)
        if not isinstance(value, str) or not (value.isascii() and value.isdigit()):
            raise BridgeError(f"the last message on NATS subject {self.subject!r} (stream "
                              f"sequence {m.seq}) has no {OFFSET_HEADER} header: it was not "
                              f"written by a tidelog mirror, so where to resume is unknown")
        return int(value)

    def _check_never_written(self) -> None:
        """The subject holds no message: refuse when the stream shows that messages were
        stored and are gone (retention such as max_age, or a purge) and they may have been
        ours: a stream holding nothing at all, or capturing our subject only. Starting from
        offset 0 there would ship again what readers already got."""
        c = self.conn
        try:
            info = c.run(c.jsm.stream_info(c.address.name), ACK_TIMEOUT)
        except Exception as e:
            raise c.check(e, f"stream {c.address.name!r}") from None
        st, subjects = info.state, info.config.subjects or []
        if st.last_seq and (st.messages == 0 or subjects == [self.subject]):
            raise BridgeError(f"NATS subject {self.subject!r} holds no message, but stream "
                              f"{c.address.name!r} stored {st.last_seq} and they were deleted "
                              f"(retention or a purge): what the mirror wrote is gone, so where "
                              f"to resume is unknown; mirror into a new stream (or delete and "
                              f"recreate this one to ship everything again)")

    def send(self, batch: Batch) -> None:
        """Publish in order and wait until JetStream stored every one (BridgeError if not).
        The first message after a resume carries the expected last subject sequence: had
        anyone written to the subject since last_offset() read it, JetStream refuses it."""
        self.conn.run(self._send(batch.messages()))

    def flush(self) -> None:
        """Nothing to wait for: send() returns once JetStream stored every message."""

    async def _send(self, msgs: list[Message]) -> None:
        start = 0
        if self.last_seq is not None:            # the first send of this session: alone
            h = encode_headers(msgs[0])
            h[EXPECT_SUBJECT_SEQ] = str(self.last_seq)
            await self._publish_and_wait([(msgs[0], h)])
            self.last_seq = None
            start = 1
        if start < len(msgs):
            await self._publish_and_wait([(m, encode_headers(m)) for m in msgs[start:]])

    def _too_large(self, m: Message, h: dict[str, str]) -> Optional[str]:
        """Why JetStream would refuse `m` for its size (None: it would not)."""
        size = len(m.value) + len("NATS/1.0\r\n\r\n") + sum(len(k) + len(v) + 4
                                                          for k, v in h.items())
        nc = self.conn.nc
        if self.stream_max >= 0 and size > self.stream_max:
            return (f"{size} bytes with its headers; stream {self.conn.address.name!r} takes at "
                    f"most {self.stream_max} (max_msg_size)")
        if size > nc.max_payload:
            return f"{size} bytes with its headers; the server takes at most {nc.max_payload}"
        return None

    async def _publish_and_wait(self, items: list[tuple[Message, dict[str, str]]]) -> None:
        """Publish `items` in order and wait for every ack. Exactly once needs the subject to
        hold a prefix of what was sent: a message JetStream would refuse for its size is found
        before anything after it is published, and a message it refuses for another reason
        has the messages stored after it deleted again (else the next run would resume after
        them and leave the refused one out for good)."""
        for i, (m, h) in enumerate(items):
            why = self._too_large(m, h)
            if why is not None:
                if i:
                    await self._publish_and_wait(items[:i])
                raise BridgeError(f"record at offset {m.position} is too large for NATS ({why}); "
                                  f"nothing after it was published")
        nc = self.conn.nc
        self.acks.clear()
        try:
            for m, h in items:
                await nc.publish(self.subject, m.value, reply=f"{self.inbox}.{m.position}",
                                 headers=h)
            await nc.flush(timeout=ACK_TIMEOUT)
        except Exception as e:
            raise self.conn.check(e, "publishing") from None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ACK_TIMEOUT
        while len(self.acks) < len(items):
            if nc.is_closed or loop.time() > deadline:
                why = "connection lost" if nc.is_closed else "no acknowledgement in time"
                raise BridgeError(f"NATS {','.join(self.conn.address.servers)}: {why} while "
                                  f"publishing offsets {items[0][0].position}.."
                                  f"{items[-1][0].position}; a restart resumes exactly once")
            await asyncio.sleep(0.001)
        replies = [json.loads(self.acks[m.position]) for m, _ in items]
        for i, ((m, _), reply) in enumerate(zip(items, replies)):
            if "error" in reply:
                err = reply["error"]
                undone = await self._undo([r.get("seq") for r in replies[i + 1:]
                                           if "error" not in r])
                raise BridgeError(f"JetStream refused offset {m.position} on subject "
                                  f"{self.subject!r}: {err.get('description', err)}"
                                  + (" (someone else wrote to the subject: a restart resumes "
                                     "after its last message)"
                                     if err.get("err_code") == 10071 else "") + undone)

    async def _undo(self, seqs: list[Any]) -> str:
        """Delete the messages stored after a refused one (see _publish_and_wait); '' when
        done, else a warning for the error line."""
        try:
            for seq in seqs:
                await self.conn.jsm.delete_msg(self.conn.address.name, int(seq))
        except Exception as e:
            return (f"; deleting the {len(seqs)} messages stored after it failed "
                    f"({_describe(e)}): the subject now has a gap at that offset")
        return ""

    def close(self) -> None:
        self.conn.close()


class _Pull:
    """A pull consumer read by hand, on the connection's loop: pull requests published to the
    consumer's MSG.NEXT subject, the replies collected by an inbox subscription's callback.
    (nats-py's fetch() waits for every message with a task, a timer and a uuid of its own:
    ~70 us of CPU per message, four times what this costs.)

    Each request asks for `batch` messages and at most max_bytes, with no_wait and an expiry:
    the server sends what the consumer holds at once and ends the request with status 404 (or
    409 once max_bytes are sent), or, holding nothing, waits up to FETCH_WAIT for a first
    message (408 when none came); a request it filled ends with 409 Batch Completed, and a
    no_wait request that finds earlier ones waiting for more than the consumer holds is
    refused on arrival (408 Requests Pending). Two waiting requests are served by turns.
    PULL_AHEAD requests stay outstanding, so the server sends the next batch while the last one
    is appended; max_bytes (PULL_BYTES) bounds what it sends ahead. A message larger than that
    (409 Message Size Exceeds MaxBytes before the request got any) is asked for alone: one
    request of one message with room for the largest one the server takes, and nothing else
    outstanding (a server's max_pending may be no larger than its max_payload: asking for more
    ahead got the ingester dropped as a slow consumer).
    Order and completeness are checked on the messages themselves (NatsSource._batch: consumer
    sequences 1, 2, 3, ...), not on this accounting."""

    def __init__(self, conn: _Conn, consumer: str, batch: int) -> None:
        self.conn = conn
        self.subject = f"{API_PREFIX}.CONSUMER.MSG.NEXT.{conn.address.name}.{consumer}"
        self.request = json.dumps({"batch": batch, "max_bytes": PULL_BYTES,
                                   "expires": int(FETCH_WAIT * 1e9), "no_wait": True}).encode()
        # room for the largest message the server takes (max_payload counts its headers; the
        # server's size adds the subject and reply subject, far below 64 KiB)
        self.big_bytes = conn.nc.max_payload + 65536
        self.big_request = json.dumps({"batch": 1, "max_bytes": self.big_bytes,
                                       "expires": int(FETCH_WAIT * 1e9),
                                       "no_wait": True}).encode()
        self.big = False                    # the next message is larger than PULL_BYTES
        self.batch = batch
        self.msgs: list[Any] = []
        # The requests outstanding and the messages they may still send, as far as one can
        # tell: the server may send to two waiting requests by turns, so which request a
        # message answers is not known; a status that ends one says how many it still owed.
        self.open = 0
        self.credit = 0
        self.ended = False                  # a request ended early (no more, or max_bytes)
        self.error: Optional[str] = None
        self.waiter: Optional[asyncio.Future[None]] = None
        self.inbox = conn.nc.new_inbox()
        # no pending limits: a message nats-py dropped as a slow consumer's would be a gap
        conn.run(conn.nc.subscribe(self.inbox, cb=self._on_msg, pending_msgs_limit=0,
                                   pending_bytes_limit=0), ACK_TIMEOUT)

    async def _on_msg(self, m: Any) -> None:
        if m.reply:                                   # a stream message ($JS.ACK.... reply)
            self.msgs.append(m)
            self.credit -= 1
            if self.credit <= 0:                      # every request filled
                self.open = self.credit = 0
            elif len(self.msgs) < self.batch:
                return
        else:                                         # a status of the server
            h = m.headers or {}
            status, what = h.get("Status"), h.get("Description")
            if status == "100":                       # a heartbeat (not asked for)
                return
            owed = h.get("Nats-Pending-Messages")
            owed = int(owed) if owed is not None and owed.isdigit() else self.batch
            if status == "408" and what == "Requests Pending":
                self._close_one(self.batch)           # refused on arrival: it got nothing
                return
            if status == "409" and what == "Batch Completed":
                self._close_one(owed)                 # filled (with max_bytes, a status says so)
                return
            if status == "409" and what == "Message Size Exceeds MaxBytes" and owed >= self.batch:
                if self.big_bytes <= PULL_BYTES:
                    self.error = "a message larger than a pull request's max_bytes"
                else:                                 # the next message alone, next time
                    self._close_one(owed)
                    self.big = self.ended = True
            elif status in ("404", "408") or (status == "409" and what in _PULL_ENDS):
                self._close_one(owed)
                self.ended = True
            elif status:
                why = f"{status} {what or ''}".strip()
                self.error = f"the stream's reader was refused ({why})"
            else:
                self.error = ("a message without JetStream metadata (no reply subject) in the "
                              "reader's inbox")
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _close_one(self, owed: int) -> None:
        """A request ended owing `owed` messages."""
        self.open = max(self.open - 1, 0)
        self.credit = min(max(self.credit - owed, 0), self.open * self.batch)

    async def next(self) -> list[Any]:
        """Up to `batch` messages: once `batch` are here, or a request ended early, or (no
        answer) FETCH_WAIT + PULL_GRACE passed; [] when none came."""
        nc = self.conn.nc
        if self.big:
            if self.open == 0:                        # alone: see the class's comment
                await nc.publish(self.subject, self.big_request, reply=self.inbox)
                self.open, self.credit, self.big = 1, 1, False
        else:
            while self.open < PULL_AHEAD:
                await nc.publish(self.subject, self.request, reply=self.inbox)
                self.open += 1
                self.credit += self.batch
        if len(self.msgs) < self.batch and not self.ended and self.error is None:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self.waiter, FETCH_WAIT + PULL_GRACE)
            except asyncio.TimeoutError:
                self.open = self.credit = 0     # every request expired at the server by now
            self.waiter = None
        if self.error is not None:
            raise BridgeError(f"NATS {','.join(self.conn.address.servers)}: {self.error}; a "
                              f"restart resumes exactly once")
        self.ended = False
        out = self.msgs[:self.batch]
        del self.msgs[:self.batch]
        return out


class NatsSource:
    """Where an ingest reads: a JetStream stream (all of it, or one subject)."""

    def __init__(self, address: Address, opts: dict[str, str], create: bool,
                 skip_gap: bool = False) -> None:
        self.conn = _Conn(address, opts)
        self.subject = address.subject
        self.skip_gap = skip_gap
        self.cseq = 0          # the consumer sequence of the last message read
        self.pending = -1      # messages the consumer held after the last one read
        # the stream's interior deleted sequences as last fetched: (first_seq, num_deleted,
        # sorted sequences); see _deleted_seqs
        self.dels: tuple[int, int, list[int]] = (0, 0, [])
        # on a new ingest, the stream's interior sequences deleted before it began (sorted):
        # never due, like those below its first sequence then; see batches
        self.gone: list[int] = []
        self.can_get = True    # STREAM.MSG.GET answered (see _none_of_ours_after)
        try:
            self.info = self.conn.stream(create, address.subject or address.name)
        except BaseException:
            self.conn.close()
            raise
        cfg = self.info.config
        # Whether every message the stream can hold is the subject's: then every deleted
        # sequence was one of ours (a stream with sources, a mirror or a subject transform
        # may hold others than its subjects say)
        self.only_ours = bool(
            self.subject is not None and cfg.subjects and not cfg.sources and not cfg.mirror
            and not getattr(cfg, "subject_transform", None)
            and all(_covers(self.subject, p) for p in cfg.subjects))

    def batches(self, after: Optional[int], follow: bool, stopping: Callable[[], bool],
                max_batch: int = 1000) -> Iterator[Batch]:
        """Messages after stream sequence `after` (None: from the first), in batches; without
        `follow`, until the stream's end as of the start."""
        c = self.conn
        api = c.nats.js.api
        cfg = api.ConsumerConfig(ack_policy=api.AckPolicy.NONE, inactive_threshold=60.0,
                                 filter_subject=self.subject, max_ack_pending=-1)
        first = self.info.state.first_seq
        if self.subject is not None:
            if after is not None and after < self.info.state.last_seq:
                self._check_subject_gaps(after, [], self.info.state.last_seq)
        elif after is not None and after + 1 < first:
            if not self.skip_gap:
                raise self._deleted(first, after + 1, first - 1)
            after = first - 1
        elif after is not None and after < self.info.state.last_seq:
            # interior deletes after the log's last one (a purge of one subject of the
            # stream, max_msgs_per_subject, a message deleted): every sequence is ours here
            self._check_subject_gaps(after, [], self.info.state.last_seq)
        if after:
            cfg.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
            cfg.opt_start_seq = after + 1
        else:
            cfg.deliver_policy = api.DeliverPolicy.ALL
        try:
            info = c.run(c.jsm.add_consumer(c.address.name, cfg), ACK_TIMEOUT)
        except Exception as e:
            raise c.check(e, "creating a reader") from None
        if not follow and info.num_pending == 0:
            return
        try:
            pull = _Pull(c, info.name, max_batch)
        except Exception as e:
            raise c.check(e, "creating a reader") from None
        self.cseq = 0
        prev = after if after is not None else max(first - 1, 0)  # last stream sequence read
        fresh = after is None and self.subject is not None
        if after is None and (self.info.state.num_deleted or 0) and not self.skip_gap:
            # a new ingest starts from what the stream holds: its interior deletes as of now
            # (a KV bucket's old values: max_msgs_per_subject) were never due (they were
            # refused as a gap at the first batch: a new ingest of a KV stream failed)
            self.gone = sorted(self._stream_state(True).get("deleted") or [])
        while not stopping():
            if c.nc.is_closed:
                raise BridgeError(f"NATS {','.join(c.address.servers)}: connection lost; a "
                                  f"restart resumes exactly once")
            try:
                msgs = c.run(pull.next())
            except BridgeError:
                raise
            except Exception as e:
                raise c.check(e, "reading") from None
            if msgs:
                b = self._batch(msgs)
                if fresh:          # a new ingest of a subject: what was deleted before its
                    prev, fresh = b.positions[0] - 1, False   # first message was never due
                if b.positions[-1] - prev != len(b):          # the stream sequences jump
                    self._check_subject_gaps(prev, b.positions)
                prev = b.positions[-1]
                yield b
                if not follow and self.pending == 0:
                    return
            elif not follow:
                if self._drained(info.name):
                    return
            elif self.subject is not None and not fresh:
                prev = self._none_of_ours_after(prev)

    def _check_subject_gaps(self, prev: int, positions: list[int],
                            end: Optional[int] = None) -> None:
        """A BridgeError (unless skip_gap) when a stream sequence after
        `prev` up to `end` (by default the last of `positions`) that is not one of `positions`
        (ascending: the messages read) was deleted. Checked once the reader went past such a
        sequence, so a message of ours it skipped was deleted by then; at the start, with no
        positions, every sequence after the log's last one up to the stream's last.

        Without a subject filter every sequence is the ingest's: a skipped one was deleted (the
        head of the stream: retention, a purge; or inside it: a purge of one subject,
        max_msgs_per_subject, a message deleted), and is refused as a loss; the error names no
        subject. (Only the stream's first sequence was compared before: interior deletes were
        a silent gap.) With a subject filter, what JetStream tells, and what it does not: a
        sequence skipped that the stream still
        holds is another subject's message (the common jump: subjects interleaved), never a
        gap. A deleted one (below the stream's first sequence, or an interior delete: a purge
        of a subject, max_msgs_per_subject, a message deleted) may have been ours or another
        subject's: JetStream keeps no subject for a deleted sequence. So it is refused as a
        possible loss, named by the first and last such sequence and their number; the message
        says 'perhaps' unless the stream holds nothing but the subject's messages. Messages of
        another subject deleted between two of ours are thus an alarm too, which nothing the
        server keeps tells from a loss (--skip-gap goes on); following, while nothing comes,
        _none_of_ours_after moves `prev` past those the stream still holds, so that retention
        trimming them later is no alarm. Not seen: on a new ingest, a
        message of ours deleted before the first one it read, or inside the stream before it
        began (self.gone) (the ingest starts from what the stream holds: deleted before it
        began, or in the moment after); with or without a subject.

        Cost: one STREAM.INFO per batch whose sequences jump (with subjects interleaved, every
        batch), and the deleted sequences' list only while the stream has any and they changed
        (see _deleted_seqs); no work per message unless the stream holds deleted sequences
        after the last one read."""
        if self.skip_gap:
            return
        end = positions[-1] if end is None else end
        st = self._stream_state(False)
        first, nd = st.get("first_seq", 0), st.get("num_deleted") or 0
        if first <= prev + 1 and not nd:           # nothing deleted after our last one
            return
        dels: list[int] = []
        if nd:
            first, dels = self._deleted_seqs(first, nd)
        gone = self.gone
        if gone and gone[0] <= prev:               # behind the reader: no longer asked about
            del gone[:bisect.bisect_right(gone, prev)]
        have = set(positions)
        lost = [d for d in dels[bisect.bisect_right(dels, max(prev, first - 1)):
                                bisect.bisect_right(dels, end)]
                if d not in have and not _holds(gone, d)]
        top = min(first - 1, end)                  # sequences up to top are all deleted
        k = bisect.bisect_right(positions, top)
        n = top - prev - k - bisect.bisect_right(gone, top)   # ... those of them not read
        if n > 0:                                  # (nor deleted before a new ingest began)
            lo = next(q for q in range(prev + 1, top + 1) if q not in have and not _holds(gone, q))
            hi = next(q for q in range(top, prev, -1) if q not in have and not _holds(gone, q))
            raise self._subject_deleted(lo, lost[-1] if lost else hi, n + len(lost))
        if lost:
            raise self._subject_deleted(lost[0], lost[-1], len(lost))

    def _none_of_ours_after(self, prev: int) -> int:
        """With a subject, following and nothing come: the last stream sequence up to which
        the subject has no message left to read (`prev`, or the stream's last one as of now).
        A sequence the stream holds then that is not the subject's is another subject's for
        good: its removal later (retention trimming a busy stream past a quiet subject's last
        message) is no gap, and moving `prev` past it keeps _check_subject_gaps from taking it
        for one. In this order: the stream's last sequence; then no message of the subject
        stored after `prev` (STREAM.MSG.GET next_by_subj, from the store itself: a consumer's
        pending count may lag a message just stored); then nothing after `prev` up to that
        last one deleted (_check_subject_gaps, which raises what the next message of the
        subject would: a deletion is for good). A user not allowed STREAM.MSG.GET (no answer)
        does without: `prev` stays, as before."""
        c = self.conn
        if not self.can_get:
            return prev
        last = int(self._stream_state(False).get("last_seq", 0))
        if last <= prev:
            return prev
        req = json.dumps({"seq": prev + 1, "next_by_subj": self.subject}).encode()
        try:
            r = c.run(c.nc.request(f"{API_PREFIX}.STREAM.MSG.GET.{c.address.name}", req,
                                   timeout=ACK_TIMEOUT))
            resp = json.loads(r.data)
        except Exception:
            self.can_get = False
            return prev
        err = resp.get("error") if isinstance(resp, dict) else None
        if not isinstance(err, dict) or err.get("err_code") != 10037:    # 10037: no message
            return prev                  # one of ours is there (or no answer): read it first
        self._check_subject_gaps(prev, [], last)
        return last

    def _stream_state(self, details: bool) -> dict[str, Any]:
        """The stream's state as STREAM.INFO tells it (with its interior deleted sequences
        when `details`): nats-py's stream_info() asks for no deleted details."""
        c = self.conn
        try:
            r = c.run(c.nc.request(f"{API_PREFIX}.STREAM.INFO.{c.address.name}",
                                   b'{"deleted_details":true}' if details else b"",
                                   timeout=ACK_TIMEOUT))
            resp = json.loads(r.data)
        except Exception as e:
            raise c.check(e, "reading the stream's state") from None
        if not isinstance(resp, dict) or "error" in resp or "state" not in resp:
            err = resp.get("error") if isinstance(resp, dict) else None
            raise BridgeError(f"NATS stream {c.address.name!r}: reading its state: "
                              f"{(err or {}).get('description', 'no state in the answer')}")
        state: dict[str, Any] = resp["state"]
        return state

    def _deleted_seqs(self, first: int, nd: int) -> tuple[int, list[int]]:
        """(first sequence, its interior deleted sequences sorted) of the stream, `first` and
        `nd` being its first sequence and number of deleted ones as just read. Fetched again
        only when these changed: with the first sequence unchanged, a deletion adds one to
        num_deleted (last - first + 1 - messages) and nothing takes one away, so equal counts
        mean the same deleted set. (The state fetched may be newer than first and nd: its own
        first sequence goes with its list.)"""
        if self.dels[:2] != (first, nd):
            st = self._stream_state(True)
            self.dels = (st.get("first_seq", 0), st.get("num_deleted") or 0,
                         sorted(st.get("deleted") or []))
        return self.dels[0], self.dels[2]

    def _subject_deleted(self, lo: int, hi: int, n: int) -> BridgeError:
        """The error for `n` deleted sequences in lo..hi (see _check_subject_gaps)."""
        name = self.conn.address.name
        what = (f"sequence {lo} was" if lo == hi else f"sequences {lo}..{hi} were"
                if n == hi - lo + 1 else f"{n} of sequences {lo}..{hi} were")
        what_of = "a message" if lo == hi else "messages"
        whose = ("" if self.subject is None else
                 f", {what_of} of subject {self.subject!r}" if self.only_ours else
                 f", perhaps {what_of} of subject {self.subject!r} (JetStream keeps no "
                 f"subject for a deleted message)")
        return BridgeError(f"NATS stream {name!r}: {what} deleted before "
                           f"{'it was' if lo == hi else 'they were'} ingested{whose}; "
                           f"--skip-gap ingests on past {'it' if lo == hi else 'them'}")

    def _deleted(self, first: int, lo: int, hi: int) -> BridgeError:
        """The error for stream sequences lo..hi deleted (retention, a purge) before they were
        ingested, the stream now starting at `first`: at the start and under a running ingest."""
        return BridgeError(f"NATS stream {self.conn.address.name!r} starts at sequence {first}: "
                           f"sequences {lo}..{hi} were deleted before they were ingested; "
                           f"--skip-gap ingests from {first} on")

    def _drained(self, consumer: str) -> bool:
        """Whether the reader holds nothing more and everything it sent was read: the end of
        an ingest without follow when no message said so (the stream's last messages were
        deleted after the reader was made, before they were sent)."""
        c = self.conn
        try:
            ci = c.run(c.jsm.consumer_info(c.address.name, consumer), ACK_TIMEOUT)
        except Exception as e:
            raise c.check(e, "reading") from None
        return bool(ci.num_pending == 0 and ci.delivered.consumer_seq <= self.cseq)

    def _batch(self, msgs: list[Any]) -> Batch:
        """The records of consecutive messages of the consumer (a BridgeError for a message
        out of sequence: nothing of the batch is appended, a restart resumes before it)."""
        positions: list[int] = []
        values: list[bytes] = []
        keys: list[Optional[bytes]] = []
        stamps: list[int] = []
        headers: list[list[tuple[str, bytes]]] = []
        cseq = self.cseq
        t: list[str] = []
        i = 0
        for m in msgs:
            # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ns>.<pending>
            # or (v2) $JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>...[.<token>]
            t = m.reply.split(".")
            i = 4 if len(t) == 9 else 6
            try:
                if t[0] != "$JS" or t[1] != "ACK" or (len(t) != 9 and len(t) < 11):
                    raise ValueError
                seq, cs, ts = int(t[i + 1]), int(t[i + 2]), int(t[i + 3])
            except ValueError:
                raise BridgeError(f"NATS stream {self.conn.address.name!r}: a message without "
                                  f"JetStream metadata (reply subject {m.reply[:80]!r})") from None
            if cs != cseq + 1:
                raise BridgeError(f"NATS stream {self.conn.address.name!r}: the reader's message "
                                  f"{cs} came after {cseq} (a message lost or repeated on the "
                                  f"way); a restart resumes exactly once")
            cseq = cs
            h = m.headers
            if h:
                key, ts, hs = _decode_headers(seq, h, ts)
            else:
                key, hs = None, [(NATS_POSITION, str(seq).encode())]
            positions.append(seq)
            values.append(m.data)
            keys.append(key)
            stamps.append(ts)
            headers.append(hs)
        self.cseq = cseq
        self.pending = int(t[i + 4]) if t[i + 4].isdigit() else -1
        return Batch(positions, values, keys, stamps, headers)

    def close(self) -> None:
        self.conn.close()
