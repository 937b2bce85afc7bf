"""tidelog.bridge: exactly-once bridges between a log and Kafka / NATS JetStream.

    mirror(log, target, *, name="mirror", follow=False, create=False, ...)  log -> broker
    ingest(source, log, *, name="ingest", follow=False, create=False, ...)  broker -> log

Owns only the composition: parse the address (address.py), read settings (security.py), make
the broker object (kafka.py, nats.py: their client libraries are imported there, when used),
and hand it to the loop of the direction (mirror.py, ingest.py). Why it is exactly once: the
README's "Beyond one machine" and the docstrings of mirror.py and ingest.py.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Optional, Union

import tidelog
from tidelog.bridge.address import Address, parse_address
from tidelog.bridge.base import KAFKA_POSITION, NATS_POSITION, BridgeError, Source, Target
from tidelog.bridge.ingest import run_ingest
from tidelog.bridge.lock import BridgeLockedError, check_bridge_name
from tidelog.bridge.mirror import run_mirror
from tidelog.bridge.security import kafka_options, nats_options, read_config

__all__ = ["mirror", "ingest", "parse_address", "Address", "BridgeError", "BridgeLockedError"]

LogArg = Union[str, os.PathLike[str], tidelog.Log]


def _stopping(stop: Optional[threading.Event]) -> Callable[[], bool]:
    return stop.is_set if stop is not None else (lambda: False)


def _target(addr: Address, config: Optional[str], create: bool) -> Target:
    settings = read_config(config)
    if addr.system == "nats":
        from tidelog.bridge import nats as bnats
        return bnats.NatsTarget(addr, nats_options(settings), create)
    from tidelog.bridge import kafka as bkafka
    return bkafka.KafkaTarget(addr, kafka_options(settings), create)


def _source(addr: Address, config: Optional[str], create: bool, skip_gap: bool) -> Source:
    settings = read_config(config)
    if addr.system == "nats":
        from tidelog.bridge import nats as bnats
        return bnats.NatsSource(addr, nats_options(settings), create, skip_gap)
    from tidelog.bridge import kafka as bkafka
    return bkafka.KafkaSource(addr, kafka_options(settings), create, skip_gap)


def mirror(log: LogArg, target: str, *, name: str = "mirror", follow: bool = False,
           create: bool = False, config: Optional[str] = None, skip_gap: bool = False,
           resume: bool = True, stop: Optional[threading.Event] = None,
           progress: Optional[Callable[[int], None]] = None) -> int:
    """Ship every durable record of `log` to `target` exactly once, in log order, with its key,
    value, timestamp and headers plus a header `tidelog-offset`; return how many were shipped.

    `target`: kafka://HOST:PORT[,...]/TOPIC[?partition=N] or nats://HOST:PORT/STREAM[?subject=S]
    (kafkas:// and tls:// over TLS). `follow`: keep shipping new durable records until `stop`
    is set. `create`: make a missing topic or stream. `config`: a file of key=value settings.
    `skip_gap`: ship from the log's start when retention deleted records the target never got.
    `resume=False` skips the resume check (ships from the log's start): for tests only, it
    duplicates what the target already holds.
    """
    check_bridge_name(name)
    addr = parse_address(target, argument="target")
    if addr.subject is not None and {"*", ">"} & set(addr.subject.split(".")):
        raise ValueError(f"target {target!r}: subject {addr.subject!r} holds a wildcard: a "
                         f"mirror publishes to one subject (wildcards are for ingest)")
    out = _target(addr, config, create)
    try:
        return run_mirror(log, out, name=name, follow=follow, skip_gap=skip_gap, resume=resume,
                          stopping=_stopping(stop), progress=progress, target_id=_target_id(addr))
    finally:
        out.close()


def ingest(source: str, log: LogArg, *, name: str = "ingest", follow: bool = False,
           create: bool = False, config: Optional[str] = None, skip_gap: bool = False,
           resume: bool = True, stop: Optional[threading.Event] = None,
           progress: Optional[Callable[[int], None]] = None) -> int:
    """Append every message of `source` to `log` (created if missing) exactly once, in source
    order, with key, value, timestamp and headers plus the source position in a header
    (`kafka-offset` or `nats-sequence`); return how many were appended. Arguments as mirror()'s,
    but `skip_gap`: go on from the source's first position when its retention deleted messages
    after the log's last ingested one (else BridgeError), at the start or while reading.
    """
    check_bridge_name(name)
    addr = parse_address(source, argument="source")
    src = _source(addr, config, create, skip_gap)
    try:
        return run_ingest(src, log, name=name, follow=follow, resume=resume,
                          header=KAFKA_POSITION if addr.system == "kafka" else NATS_POSITION,
                          stopping=_stopping(stop), progress=progress, origin=_origin(addr))
    finally:
        src.close()


def _target_id(addr: Address) -> str:
    """What identifies a mirror's target on this machine: servers (sorted), topic and
    partition, or stream and subject."""
    servers = ",".join(sorted(addr.servers))
    if addr.system == "kafka":
        return f"Kafka {servers} topic {addr.name!r} partition {addr.partition}"
    return f"NATS {servers} stream {addr.name!r} subject {addr.subject or addr.name!r}"


def _origin(addr: Address) -> str:
    """What identifies a source whose positions a log holds (not its servers: one cluster has
    many bootstrap lists)."""
    if addr.system == "kafka":
        return f"Kafka topic {addr.name!r} partition {addr.partition}"
    return (f"NATS stream {addr.name!r}" +
            (f" subject {addr.subject!r}" if addr.subject is not None else " (all subjects)"))
