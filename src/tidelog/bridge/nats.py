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
An ingest of a message without these headers takes its timestamp from JetStream (microseconds),
no key, and its text headers as the record's headers (utf-8), in order.
"""

from __future__ import annotations

import asyncio
import base64
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
    h = dict(headers or {})
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
                   if k not in (TS_HEADER, KEY_HEADER, OFFSET_HEADER) and not k.startswith("Nats-")]
    except (ValueError, TypeError) as exc:      # binascii.Error and JSONDecodeError are these
        raise BridgeError(f"stream message {seq}: malformed tidelog header ({exc}); it was not "
                          f"written by tidelog mirror, or was damaged") from None
    if OFFSET_HEADER in h:
        out.append((OFFSET_HEADER, h[OFFSET_HEADER].encode()))
    out.append((NATS_POSITION, str(seq).encode()))
    return Message(seq, data, key, ts, out)


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
    p, s = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


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
        if value is None or not value.isdigit():
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


class NatsSource:
    """Where an ingest reads: a JetStream stream (all of it, or one subject)."""

    def __init__(self, address: Address, opts: dict[str, str], create: bool,
                 skip_gap: bool = False) -> None:
        self.conn = _Conn(address, opts)
        self.subject = address.subject
        self.skip_gap = skip_gap
        try:
            self.info = self.conn.stream(create, address.subject or address.name)
        except BaseException:
            self.conn.close()
            raise

    def batches(self, after: Optional[int], follow: bool, stopping: Callable[[], bool],
                max_batch: int = 1000) -> Iterator[Batch]:
        """Messages after stream sequence `after` (None: from the first), in batches; without
        `follow`, until the stream's end as of the start."""
        c = self.conn
        api = c.nats.js.api
        cfg = api.ConsumerConfig(ack_policy=api.AckPolicy.NONE, inactive_threshold=60.0,
                                 filter_subject=self.subject, max_ack_pending=-1)
        first = self.info.state.first_seq
        if after is not None and after + 1 < first:
            if not self.skip_gap:
                raise BridgeError(f"NATS stream {c.address.name!r} starts at sequence {first}: "
                                  f"sequences {after + 1}..{first - 1} were deleted before "
                                  f"they were ingested; --skip-gap ingests from {first} on")
            after = first - 1
        if after:
            cfg.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
            cfg.opt_start_seq = after + 1
        else:
            cfg.deliver_policy = api.DeliverPolicy.ALL
        try:
            info = c.run(c.jsm.add_consumer(c.address.name, cfg), ACK_TIMEOUT)
            psub = c.run(c.js.pull_subscribe_bind(consumer=info.name, stream=c.address.name))
        except Exception as e:
            raise c.check(e, "creating a reader") from None
        pending = info.num_pending
        if not follow and pending == 0:
            return
        TimeoutError_ = c.nats.errors.TimeoutError
        while not stopping():
            if c.nc.is_closed:
                raise BridgeError(f"NATS {','.join(c.address.servers)}: connection lost; a "
                                  f"restart resumes exactly once")
            try:
                msgs = c.run(psub.fetch(max_batch, timeout=FETCH_WAIT), FETCH_WAIT + ACK_TIMEOUT)
            except (TimeoutError_, asyncio.TimeoutError):
                msgs = []
            except Exception as e:
                raise c.check(e, "reading") from None
            out = []
            for m in msgs:
                md = m.metadata
                ts = int(md.timestamp.timestamp()) * 10**9 + md.timestamp.microsecond * 1000
                out.append(decode_message(md.sequence.stream, m.data, m.headers, ts))
            if out:
                yield Batch.of(out)
                if not follow and msgs[-1].metadata.num_pending == 0:
                    return

    def close(self) -> None:
        self.conn.close()
