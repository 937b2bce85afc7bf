"""Bridge addresses: parsing `kafka://` and `nats://` / `tls://` addresses into `Address`.

Owns nothing but the parsing: an address names where records go or come from, never a secret.
A password or token written into an address is refused (it would show in process listings):
secrets come from environment variables or files (see tidelog.bridge.security).

    kafka://HOST:PORT[,HOST:PORT...]/TOPIC[?partition=N]       (default partition 0)
    kafkas://...                                               the same over SSL
    nats://HOST:PORT[,HOST:PORT...]/STREAM[?subject=SUBJECT]
    tls://HOST:PORT/STREAM[?subject=SUBJECT]                   NATS over TLS
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional
from urllib.parse import parse_qsl, unquote

__all__ = ["Address", "parse_address"]

KAFKA_SCHEMES = ("kafka", "kafkas")
NATS_SCHEMES = ("nats", "tls")
# Kafka topic names: at most 249 of [a-zA-Z0-9._-] (Kafka's own rule)
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
# JetStream stream names: no whitespace, control characters, '.', '*', '>', path separators
_STREAM = re.compile(r"[^\s\x00-\x1f\x7f.*>/\\]{1,255}")
# NATS subjects: tokens of printable non-space characters split by '.', no empty token; '>'
# only as the last token
_SUBJECT = re.compile(r"[^\s\x00-\x1f\x7f.]+(\.[^\s\x00-\x1f\x7f.]+)*")
_PARTITION = re.compile(r"[0-9]{1,10}")
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):([0-9]{1,5})")


@dataclass(frozen=True)
class Address:
    """A parsed bridge address. `system` is "kafka" or "nats"; `servers` the "host:port" list;
    `name` the topic (Kafka) or stream (NATS); `partition` (Kafka) and `subject` (NATS, None
    when not given); `tls` when the scheme asks for an encrypted connection."""
    system: str
    servers: tuple[str, ...]
    name: str
    partition: int = 0
    subject: Optional[str] = None
    tls: bool = False

    def __str__(self) -> str:
        scheme = {("kafka", False): "kafka", ("kafka", True): "kafkas",
                  ("nats", False): "nats", ("nats", True): "tls"}[(self.system, self.tls)]
        query = (f"?partition={self.partition}" if self.system == "kafka"
                 else f"?subject={self.subject}" if self.subject else "")
        return f"{scheme}://{','.join(self.servers)}/{self.name}{query}"


def _bad(text: str, why: str) -> ValueError:
    return ValueError(f"address {text!r}: {why}")


def parse_address(text: object, *, argument: str = "address") -> Address:
    """Parse a bridge address; ValueError naming what is wrong (never echoing a secret)."""
    if not isinstance(text, str):
        raise TypeError(f"{argument} must be a str like kafka://HOST:PORT/TOPIC or "
                        f"nats://HOST:PORT/STREAM, not {type(text).__name__}")
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise _bad(text, "expected kafka://HOST:PORT/TOPIC or nats://HOST:PORT/STREAM")
    scheme = scheme.lower()
    if scheme not in KAFKA_SCHEMES + NATS_SCHEMES:
        raise _bad(text, f"unknown scheme {scheme!r} (kafka, kafkas, nats or tls)")
    netloc, slash, tail = rest.partition("/")
    if "@" in netloc:
        # never echo the address: it holds credentials
        raise ValueError(f"{argument}: credentials in the address are refused (they would show "
                         f"in process listings); give them through environment variables or "
                         f"files (see `tidelog mirror --help`)")
    servers = tuple(s for s in netloc.split(","))
    if not netloc or any(not _HOST_PORT.fullmatch(s) for s in servers):
        raise _bad(text, "expected HOST:PORT[,HOST:PORT...] after the scheme")
    for s in servers:
        if not 0 < int(s.rsplit(":", 1)[1]) < 65536:
            raise _bad(text, f"port out of range in {s!r}")
    path, _, query = tail.partition("?")
    name = unquote(path)
    pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=False) if query else []
    params = dict(pairs)
    if len(params) < len(pairs):
        twice = next(k for i, (k, _) in enumerate(pairs) if k in dict(pairs[:i]))
        raise _bad(text, f"parameter {twice!r} given twice")
    if scheme in KAFKA_SCHEMES:
        if not slash or not _TOPIC.fullmatch(name):
            raise _bad(text, "expected a topic name ([A-Za-z0-9._-], at most 249) after the "
                             "servers")
        unknown = set(params) - {"partition"}
        if unknown:
            raise _bad(text, f"unknown parameter {sorted(unknown)[0]!r} (partition)")
        part = params.get("partition", "0")
        if not _PARTITION.fullmatch(part) or int(part) > (1 << 31) - 1:
            raise _bad(text, f"partition must be a non-negative integer, not {part!r}")
        return Address("kafka", servers, name, partition=int(part), tls=scheme == "kafkas")
    if not slash or not _STREAM.fullmatch(name):
        raise _bad(text, "expected a stream name (no whitespace, '.', '*', '>', '/') after the "
                         "servers")
    unknown = set(params) - {"subject"}
    if unknown:
        raise _bad(text, f"unknown parameter {sorted(unknown)[0]!r} (subject)")
    subject = params.get("subject")
    if subject is not None and (not _SUBJECT.fullmatch(subject) or
                                ">" in subject.split(".")[:-1]):
        raise _bad(text, f"subject {subject!r} is not a NATS subject")
    return Address("nats", servers, name, subject=subject, tls=scheme == "tls")
