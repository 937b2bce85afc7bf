"""The `tidelog mirror` and `tidelog ingest` commands (tidelog.bridge at the command line).

Owns only the click commands and their signal handling: SIGINT/SIGTERM in --follow set an
event the bridge checks between batches, so it stops cleanly (exit 0) with every acknowledged
record accounted for. Errors reach cli.py's group, which prints one line and exits 2. Secrets
never come as arguments: environment variables or the --config file (tidelog.bridge.security).
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Optional

import click

__all__ = ["add_commands"]

SECRETS_HELP = ("Credentials come from environment variables (TIDELOG_NATS_TOKEN, "
                "TIDELOG_NATS_USER/TIDELOG_NATS_PASSWORD, TIDELOG_NATS_CREDS, TIDELOG_NATS_CA/"
                "CERT/KEY; TIDELOG_KAFKA_SASL_USERNAME/PASSWORD/MECHANISM, TIDELOG_KAFKA_CA/"
                "CERT/KEY) or the --config file, never from the command line.")


GC_YOUNG = 100_000   # allocations between young collections while a bridge runs (default 700)


def _quiet_logs() -> None:
    """The command's stderr is for its one line: asyncio's warnings (e.g. about a TLS
    connection the server closed on refused credentials) go nowhere.

    The process is ours, so also the cyclic GC, tuned for batches: what is alive once the
    command is set up (modules, client libraries) is left out of full collections
    (gc.freeze), and young collections come every GC_YOUNG allocations. A batch of 10,000
    messages keeps ~50,000 objects alive while it is built; with the defaults every one was
    traversed by a young collection and again by older ones, half the ingest's CPU time per
    message (measured: 6.5-9.1 us per 100 B message in the consuming thread, 4.0-4.6 with
    this; the reference counts free all a bridge makes, the GC only finds cycles)."""
    logging.getLogger("asyncio").addHandler(logging.NullHandler())
    gc.freeze()
    gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])


@contextmanager
def _stop_on_signals(follow: bool) -> Iterator[threading.Event]:
    stop = threading.Event()
    if not follow:
        yield stop
        return
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: Any) -> None:
        stop.set()
    for s in old:
        signal.signal(s, handler)
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _common(f: Any) -> Any:
    f = click.option("--no-resume", "no_resume", is_flag=True, hidden=True,
                     help="Tests only: skip the resume check (duplicates!).")(f)
    f = click.option("--config", type=click.Path(dir_okay=False), default=None,
                     help="File of key=value client settings (librdkafka's for Kafka; token, "
                          "user, password, creds, ca, cert, key for NATS).")(f)
    f = click.option("--create", is_flag=True,
                     help="Make a missing topic or stream (else it is an error).")(f)
    f = click.option("--follow", "-f", is_flag=True,
                     help="Keep going as new records arrive; SIGINT/SIGTERM stop it (exit 0).")(f)
    return f


def add_commands(group: click.Group) -> None:
    """Add `mirror` and `ingest` to the `tidelog` command group."""

    @group.command(epilog=SECRETS_HELP)
    @click.argument("path")
    @click.argument("target")
    @click.option("--name", default="mirror", show_default=True,
                  help="Mirror name: one running mirror per name and log.")
    @click.option("--skip-gap", "skip_gap", is_flag=True,
                  help="Ship from the log's start when retention deleted records the target "
                       "never got (else an error).")
    @_common
    def mirror(path: str, target: str, name: str, skip_gap: bool, follow: bool, create: bool,
               config: Optional[str], no_resume: bool) -> None:
        """Ship PATH's durable records to TARGET exactly once, in log order.

        TARGET: kafka://HOST:PORT[,HOST:PORT...]/TOPIC[?partition=N] (kafkas:// for SSL) or
        nats://HOST:PORT/STREAM[?subject=SUBJECT] (tls:// for TLS)."""
        from tidelog import bridge
        _quiet_logs()
        with _stop_on_signals(follow) as stop:
            n = bridge.mirror(path, target, name=name, follow=follow, create=create,
                              config=config, skip_gap=skip_gap, resume=not no_resume, stop=stop)
        click.echo(f"mirrored {n} records")

    @group.command(epilog=SECRETS_HELP)
    @click.argument("source")
    @click.argument("path")
    @click.option("--name", default="ingest", show_default=True,
                  help="Ingester name: one running ingester per name and log.")
    @click.option("--skip-gap", "skip_gap", is_flag=True,
                  help="Go on from the source's first message when its retention deleted "
                       "messages the log never got (else an error).")
    @_common
    def ingest(source: str, path: str, name: str, skip_gap: bool, follow: bool, create: bool,
               config: Optional[str], no_resume: bool) -> None:
        """Append SOURCE's messages to PATH (created if missing) exactly once, in order.

        SOURCE: kafka://HOST:PORT[,...]/TOPIC[?partition=N] or
        nats://HOST:PORT/STREAM[?subject=SUBJECT]."""
        from tidelog import bridge
        _quiet_logs()
        with _stop_on_signals(follow) as stop:
            n = bridge.ingest(source, path, name=name, follow=follow, create=create,
                              config=config, skip_gap=skip_gap, resume=not no_resume, stop=stop)
        click.echo(f"ingested {n} records")
