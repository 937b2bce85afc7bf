"""The `tidelog` command line: click parses, rich draws progress bars and tables.

Every command that fails, on the log itself (missing, not a log, locked, damaged, unreadable), on
a bad argument, or in a replay machine's code, prints one line `tidelog: error: <message>` to
stderr and exits 2: one place, `_Group.invoke`, turns any exception into that line (set
TIDELOG_TRACEBACK=1 to get the traceback instead). `verify` exits 1 on damage, `replay` 1 when a
replica diverged or a machine is not deterministic. Names of subscribers are printed with
backslash escapes for backslashes and unprintable characters (`_shown`).

Types: click's own (click.Context, click.Parameter); a replay machine and its factory, named by
--machine, are the user's objects (Any: any class with the methods of the contract).
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Optional, Union

import click
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn,
                           TimeElapsedColumn)
from rich.table import Table
from rich.text import Text

import tidelog
from tidelog import _args, cliarrow, lagbytes, quickbench
from tidelog import demo as demo_story
from tidelog.clishow import progress_bar, rate, result_table
from tidelog.positions import POSITIONS_DIR
from tidelog.replay import machine_call

if TYPE_CHECKING:
    from tidelog.cursor import Cursor, Record
    from tidelog.log import Log
    from tidelog.replay import Replayer

__all__ = ["main", "cli"]

BATCH = 65536         # records per read_batch
CHUNK = 10_000        # records per append_batch in `append`
INFO_SUBSCRIBERS = 20 # subscribers `info` lists one per line (`lag` shows them all)
DEMO_MAX = 100_000_000 # most events `demo` ingests (and records `bench` appends): ~10 GB
LAG_SCAN_RECORDS = lagbytes.SCAN_RECORDS  # `lag` reads at most this many records to count
LAG_SCAN_BYTES = lagbytes.SCAN_BYTES      # bytes behind, and about this many value bytes
LAG_SAMPLE = lagbytes.SAMPLE              # records near the end that estimate the record size


class CliError(Exception):
    """A failure worth one line on stderr and exit status 2."""


# exceptions whose message says it all; any other kind is named in the line too
_PLAIN = (tidelog.TidelogError, OSError, CliError, TypeError, ValueError)


def _describe(exc: BaseException) -> str:
    """One line for any exception: the message, the machine method and record offset when a
    replay machine raised it, the exception's type when that is not obvious."""
    if isinstance(exc, OSError) and exc.strerror:
        msg = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    else:
        try:
            msg = str(exc) or type(exc).__name__
        except Exception:               # a machine's exception whose __str__ raises
            msg = f"{type(exc).__name__} (its message cannot be shown: str() raised)"
    call = machine_call(exc)
    if call is not None:
        msg = f"machine {call}: {type(exc).__name__}: {msg}"
    elif not isinstance(exc, _PLAIN):
        msg = f"{type(exc).__name__}: {msg}"
    return _shown(msg, backslash=False)


def _shown(text: str, backslash: bool = True) -> str:
    """`text` safe to print on one line: unprintable characters (controls, line separators,
    bidi overrides) as escapes, \\t, \\n, \\x1b, \\u202e; with `backslash`, backslashes doubled
    so that the escapes are unambiguous (names in tab-separated output)."""
    if text.isprintable() and not (backslash and "\\" in text):
        return text
    out = []
    for ch in text:
        if ch == "\\" and backslash:
            out.append("\\\\")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(repr(ch)[1:-1])
    return "".join(out)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:      # Any: click.Group.invoke's
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort,
                BrokenPipeError):
            raise                       # click's own exits; a closed stdout: click exits 1
        except (KeyboardInterrupt, SystemExit):
            raise                       # Ctrl-C (click: "Aborted!"), an explicit exit status
        except BaseException as exc:    # also a machine's BaseException subclass, GeneratorExit
            if os.environ.get("TIDELOG_TRACEBACK"):
                raise
            click.echo(f"tidelog: error: {_describe(exc)}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(tidelog.__version__, prog_name="tidelog")
def cli() -> None:
    """tidelog: an embedded, append-only log. Inspect, append to, verify and benchmark logs."""


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console-script entry point (`tidelog`, `python -m tidelog`)."""
    cli.main(args=argv, prog_name="tidelog")


# ------------------------------------------------------------------------------- helpers

def _open_ro(path: str) -> Log:
    return tidelog.open(path, readonly=True)


def _iso(ns: int) -> str:
    """Nanoseconds since the epoch as ISO 8601 UTC, or the plain number if out of range."""
    try:
        sec, frac = divmod(int(ns), 1_000_000_000)
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"
    except (OverflowError, ValueError, OSError):
        return str(ns)


def _text(b: bytes) -> str:
    """Bytes for people on one line: UTF-8, other bytes as \\xNN, unprintable characters (tab,
    newline, escape sequences) escaped: a field never breaks the line or drives the terminal."""
    return _shown(b.decode("utf-8", "backslashreplace"), backslash=False)


def _json_field(b: bytes) -> tuple[str, str]:
    """(str, encoding): utf-8 text when decodable, else base64."""
    try:
        return b.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(b).decode("ascii"), "base64"


def _formatter(fmt: str) -> Callable[[Record], str]:
    """A function Record -> one output line for --format text|hex|json."""
    if fmt == "json":
        def line(rec: Record) -> str:
            key = rec.key
            d: dict[str, Union[int, str, None]] = {
                "offset": rec.offset, "timestamp": rec.timestamp, "key": None, "key_encoding": None}
            if key is not None:
                d["key"], d["key_encoding"] = _json_field(key)
            d["value"], d["value_encoding"] = _json_field(bytes(rec))
            hs = rec.headers
            if hs:                  # only records with headers get the field
                out: dict[str, object] = dict(d)
                out["headers"] = [[n, *_json_field(v)] for n, v in hs]
                return json.dumps(out, ensure_ascii=False)
            return json.dumps(d, ensure_ascii=False)
        return line
    conv: Callable[[bytes], str] = _text if fmt == "text" else bytes.hex
    # header names: escaped as keys and values are in text (for people: '=' and ';' in a name
    # stay as they are), hex in hex (every field parses back)
    nconv: Callable[[str], str] = (lambda n: _shown(n, backslash=False)) if fmt == "text" else (
        lambda n: n.encode("utf-8", "surrogatepass").hex())

    def line(rec: Record) -> str:  # type: ignore[no-redef]  # the other branch's returned
        key = rec.key
        hs = rec.headers        # only records with headers get a fifth column: name=value;...
        more = ("\t" + ";".join(f"{nconv(n)}={conv(v)}" for n, v in hs)) if hs else ""
        return (f"{rec.offset}\t{_iso(rec.timestamp)}\t{'-' if key is None else conv(key)}\t"
                f"{conv(bytes(rec))}{more}")
    return line


def _print_batches(cur: Cursor, count: int, line: Callable[[Record], str]) -> None:
    """Print up to `count` records from cursor `cur`, one line each."""
    while count > 0:
        batch = cur.read_batch(min(count, BATCH))
        if not len(batch):
            return
        count -= len(batch)
        click.echo("\n".join(line(rec) for rec in batch))


def _replayers(log: Log) -> set[str]:
    """Names of the subscribers that are replayers: they have a checkpoint, and their position
    moves only with their checkpointed state (reading this creates nothing)."""
    from tidelog import replay
    return set(replay.replayers(log))


def _ago(ns: int, now_ns: int) -> str:
    """A commit time as its age, '42s ago', '5m ago', '3h ago', '2d ago'."""
    s = (now_ns - ns) / 1e9
    if s < 0:
        return "in the future"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{int(s // size)}{unit} ago"
    return f"{int(s)}s ago"


def _size(n: float) -> str:  # type: ignore[return]  # the loop returns (at TiB at last)
    """Bytes for people: 512 B, 12.0 KiB, 3.4 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _wide_console() -> Console:
    """A console for tables: the terminal's width, or a wide one when the output is piped (a
    table cut to 80 columns would wrap subscriber names and times)."""
    console = Console()
    return console if console.is_terminal else Console(width=max(console.width, 200))


_FORMAT = click.option("--format", "fmt", type=click.Choice(["text", "hex", "json"]),
                       default="text", show_default=True,
                       help="text: value as utf-8 (backslash escapes); hex; json: one object "
                            "per line, value utf-8 or base64 (see value_encoding).")


# ------------------------------------------------------------------------------- commands

@cli.command()
@click.argument("path")
def info(path: str) -> None:
    """Offsets, record count, segments and their size on disk, compression, subscribers."""
    with _open_ro(path) as log:
        start, end, durable = log.start_offset, log.end_offset, log.durable_offset
        codec = log.compression
        segs = log.segments()
        try:
            subs, subs_problem = log.position_info(), None
        except (tidelog.TidelogError, OSError) as exc:     # show the rest of what is known
            subs, subs_problem = {}, exc
    seg_bytes = sum(os.stat(p).st_size for _, p in segs)
    all_bytes = sum(e.stat().st_blocks * 512 for e in os.scandir(log.path) if e.is_file())
    store = os.path.join(log.path, POSITIONS_DIR)
    try:
        if os.path.isdir(store):
            all_bytes += sum(e.stat().st_blocks * 512 for e in os.scandir(store) if e.is_file())
    except OSError:
        pass                            # an unreadable store: its bytes are not counted
    rows = [("path", log.path), ("start_offset", start), ("end_offset", end),
            ("durable_offset", durable), ("records", end - start),
            ("segments", f"{len(segs)} ({seg_bytes:,} bytes)"),
            ("disk usage", f"{all_bytes:,} bytes (segments, indexes, control, positions)"),
            ("compression", codec or "none"),
            ("subscribers", len(subs) if subs_problem is None
             else f"unknown ({_describe(subs_problem)})")]
    for name, value in rows:
        click.echo(f"{name + ':':<16}{value}")
    for name, (pos, _) in list(subs.items())[:INFO_SUBSCRIBERS]:
        click.echo(f"  {_shown(name) + ':':<13} position {pos}, lag {end - pos}")
    if len(subs) > INFO_SUBSCRIBERS:
        click.echo(f"  ... and {len(subs) - INFO_SUBSCRIBERS} more (`tidelog lag {path}` lists "
                   f"them all)")


@cli.command()
@click.argument("path")
@click.option("--from", "start", type=click.IntRange(min=0), default=None,
              help="First offset to print (default: the log's start).")
@click.option("--count", type=click.IntRange(min=0), default=None,
              help="At most this many records (default: to the end).")
@_FORMAT
def dump(path: str, start: Optional[int], count: Optional[int], fmt: str) -> None:
    """Print records: offset, timestamp, key, value."""
    with _open_ro(path) as log:
        end = log.end_offset
        cur = log.cursor("earliest" if start is None else start)
        left = end - cur.position
        _print_batches(cur, left if count is None else min(count, left), _formatter(fmt))


def _timeout_arg(ctx: click.Context, param: click.Parameter,
                 value: Optional[float]) -> Optional[float]:
    try:
        return _args.timeout(value, "--timeout")
    except ValueError as exc:
        raise click.BadParameter(str(exc).split(": ", 1)[-1]) from None


@cli.command()
@click.argument("path")
@click.option("-n", "--lines", "n", type=click.IntRange(min=0), default=10, show_default=True,
              help="How many of the last records to print.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing records as they are appended "
                                                     "(Ctrl-C to stop).")
@click.option("--timeout", type=float, default=None, callback=_timeout_arg,
              help="With -f: stop after this many seconds without a new record.")
@_FORMAT
def tail(path: str, n: int, follow: bool, timeout: Optional[float], fmt: str) -> None:
    """Print the last records; -f follows the log."""
    line = _formatter(fmt)
    with _open_ro(path) as log:
        end = log.end_offset
        cur = log.cursor(max(log.start_offset, end - n))
        _print_batches(cur, end - cur.position, line)
        if follow:
            try:
                for rec in cur.follow(timeout):
                    click.echo(line(rec))
            except KeyboardInterrupt:
                pass


@cli.command()
@click.argument("path")
@click.argument("files", nargs=-1)
@click.option("--key", default=None, help="Key (utf-8) for every appended record.")
def append(path: str, files: tuple[str, ...], key: Optional[str]) -> None:
    """Append one record per stdin line (newline stripped), or one per FILE's whole content."""
    chunks: Iterable[list[bytes]]
    if files:
        values = []
        for name in files:           # read them all first: a missing file appends nothing
            with open(name, "rb") as f:
                values.append(f.read())
        chunks = [values]
    else:
        chunks = _line_chunks(sys.stdin.buffer)
    key_b = None if key is None else os.fsencode(key)      # (typed: bytes, not the str given)
    first, n = None, 0
    with tidelog.open(path, create=True) as log:
        for chunk in chunks:
            keys = None if key_b is None else [key_b] * len(chunk)
            try:
                off = log.append_batch(chunk, keys=keys, atomic=False)
            except ValueError as exc:        # a record larger than a segment
                raise CliError(str(exc)) from None
            first = off if first is None else first
            n += len(chunk)
        if first is None:
            first = log.end_offset
    click.echo(f"appended {n} records, first offset {first}")


def _line_chunks(stream: Iterable[bytes]) -> Iterator[list[bytes]]:
    chunk = []
    for raw in stream:
        chunk.append(raw[:-1] if raw.endswith(b"\n") else raw)
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@cli.command()
@click.argument("path")
@click.pass_context
def verify(ctx: click.Context, path: str) -> None:
    """Read every record from start to end, checking each frame's CRC.

    Exit 0 when clean, 1 on damage (one line: file, byte position, offset)."""
    console = Console(stderr=True)
    with progress_bar(console) as prog:
        task: list[TaskID] = []

        def progress(done: int, total: int) -> None:
            if not task:
                task.append(prog.add_task("verify", total=total))
            prog.update(task[0], completed=done)
        report = tidelog.verify(path, progress=progress)
    damage = report.damage
    if damage is not None:
        if damage.file is None:
            click.echo(f"DAMAGED: {damage.reason}")
        else:
            click.echo(f"DAMAGED file={damage.file} position={damage.position} "
                       f"offset={damage.offset}: {damage.reason}")
        ctx.exit(1)
    for name, bad in report.indexes:
        # indexes are hints: lookups still work (slower); `tidelog repair` rewrites them
        click.echo(f"index {name}: {bad} entries wrong or missing (rebuilt by `tidelog repair`)")
    click.echo(f"ok: {report.records} records [{report.start}, {report.end}) verified"
               + (f"; {len(report.indexes)} index file(s) to rebuild" if report.indexes else ""))


@cli.command()
@click.argument("path", type=click.Path())
@click.option("--truncate", is_flag=True,
              help="Cut the log at the first damaged record, deleting it and everything after it "
                   "(acknowledged or not). Without it, only indexes are rebuilt.")
@click.option("--salvage-to", "salvage_to", type=click.Path(), default=None,
              help="Leave the log as it is and copy every CRC-valid record, skipping damage, into "
                   "a new log at this path (offsets there are renumbered; keys and timestamps "
                   "kept).")
@click.pass_context
def repair(ctx: click.Context, path: str, truncate: bool, salvage_to: Optional[str]) -> None:
    """Repair a log: rebuild damaged index files; with --truncate, also cut the log at the first
    damaged record; with --salvage-to OUT, copy what is readable around damage into a new log.
    Check first with `tidelog verify`. Needs the writer lock (not for --salvage-to)."""
    if salvage_to is not None:
        if truncate:
            raise CliError("--truncate and --salvage-to exclude each other")
        if os.path.exists(salvage_to) and os.listdir(salvage_to):
            raise CliError(f"{salvage_to}: exists and is not empty")
        salvaged = tidelog.salvage(path, salvage_to)      # (typed: not the RepairReport below)
        click.echo(f"salvaged {salvaged.records} records into {salvage_to}")
        for a, b in salvaged.lost:
            click.echo(f"lost offsets [{a}, {b})")
        return
    report = tidelog.repair(path, truncate=truncate)
    if report.truncated:
        where, pos, off, why = report.truncated
        click.echo(f"truncated at offset {off} ({where}, byte {pos}: {why}); "
                   f"the log now holds [{report.start}, {report.end})")
    elif truncate:
        click.echo(f"no damaged record: the log holds [{report.start}, {report.end})")
    click.echo(f"rebuilt the index files of {report.indexes_rebuilt} segment(s)")


@cli.command()
@click.argument("path")
@click.option("--exact", is_flag=True,
              help="Count the bytes of every record behind every subscriber, however far back "
                   "(reads them all).")
def lag(path: str, exact: bool) -> None:
    """Named subscribers: position, lag in records and in bytes, last commit, and who leads.

    Lag counts to the log's end offset (everything appended, durable or not). Lag in bytes is
    the value bytes (keys and framing not counted) of the records from a subscriber's position
    to the end, counted in one read pass shared by all subscribers. Without --exact the pass
    reads at most ~5M records / ~1 GiB before the end, and bytes further back are extrapolated
    from the mean value size of what it read (shown with ~). Safe while a writer appends: the
    log is opened read-only."""
    with _open_ro(path) as log:
        subs = log.position_info()
        if not subs:
            click.echo(f"no subscribers: no named positions are stored in {log.path}")
            return
        start, end, durable = log.start_offset, log.end_offset, log.durable_offset
        behind, problem = lagbytes.bytes_behind(log, [pos for pos, _ in subs.values()], end, exact,
                                                 sample=LAG_SAMPLE, scan_records=LAG_SCAN_RECORDS,
                                                 scan_bytes=LAG_SCAN_BYTES)
        replayers = _replayers(log)
    now = time.time_ns()
    lead = max((pos for pos, _ in subs.values() if pos <= end), default=None)
    table = Table()
    table.add_column("subscriber")
    for column in ("position", "lag (records)", "lag (bytes)"):
        table.add_column(column, justify="right")
    table.add_column("last commit")
    table.add_column("")
    for name, (pos, committed) in sorted(subs.items(), key=lambda kv: (-kv[1][0], kv[0])):
        nbytes, approx = behind.get(pos, (None, False))
        if pos > end:
            shown = "-"
        else:
            shown = "?" if nbytes is None else ("~" if approx else "") + _size(nbytes)
        notes = [note for note, yes in (("leads", pos == lead),
                                        ("below start", pos < start),
                                        ("beyond end", pos > end),
                                        ("replayer", name in replayers)) if yes]
        table.add_row(Text(_shown(name)), str(pos), str(end - pos), shown,
                      f"{_ago(committed, now)} ({_iso(committed)[:19]}Z)", ", ".join(notes))
    click.echo(f"{log.path}: records [{start}, {end}), durable below {durable}")
    _wide_console().print(table)
    if problem:
        click.echo(f"tidelog: lag in bytes unknown: {_describe(problem)}", err=True)
    if any(pos > end for pos, _ in subs.values()):
        click.echo("beyond end: records that subscriber had read are gone (a repair cut the log); "
                   f"rewind it with `tidelog positions {path} set NAME OFFSET`", err=True)


@cli.group(invoke_without_command=True, subcommand_metavar="[list | set NAME OFFSET | delete NAME]")
@click.argument("path")
@click.pass_context
def positions(ctx: click.Context, path: str) -> None:
    """List, set or delete named subscribers' positions.

    \b
    tidelog positions PATH                  list: name, position, lag, last commit, kind (tabs)
    tidelog positions PATH set NAME OFFSET  store OFFSET as NAME's position
    tidelog positions PATH delete NAME      forget subscriber NAME

    OFFSET is an offset in [start_offset, durable_offset], `earliest` (start_offset) or `latest`
    (durable_offset); `set` creates NAME if it has no position yet, and refuses a replayer (its
    position moves only with its state). Works while a writer holds the log (the log is opened
    read-only; positions are writable from any process). Stop the subscriber first: a running
    one overwrites its position on its next commit."""
    ctx.obj = path
    if ctx.invoked_subcommand is None:
        _list_positions(path)


@positions.command("list", short_help="List subscribers (the default).")
@click.pass_obj
def positions_list(path: str) -> None:
    """Name, position, lag in records, last commit time (ISO 8601 UTC) and kind (cursor or
    replayer), tab-separated. A name is printed with backslash escapes for backslashes and
    unprintable characters (a name stored by an older tidelog may hold a tab or a newline)."""
    _list_positions(path)


def _list_positions(path: str) -> None:
    with _open_ro(path) as log:
        subs = log.position_info()
        end = log.end_offset
        replayers = _replayers(log) if subs else set()
    if not subs:
        click.echo(f"no subscribers: no named positions are stored in {log.path}", err=True)
    for name, (pos, committed) in subs.items():
        kind = "replayer" if name in replayers else "cursor"
        click.echo(f"{_shown(name)}\t{pos}\t{end - pos}\t{_iso(committed)}\t{kind}")


def _offset_arg(log: Log, text: str) -> int:
    """OFFSET of `positions set`: an int, 'earliest' or 'latest'."""
    if text == "earliest":
        return log.start_offset
    if text == "latest":
        return log.durable_offset
    try:
        return int(text)
    except ValueError:
        raise CliError(f"offset: expected an integer, 'earliest' or 'latest', "
                       f"not {text!r}") from None


@positions.command("set", short_help="Store NAME's position.")
@click.argument("name")
@click.argument("offset")
@click.pass_obj
def positions_set(path: str, name: str, offset: str) -> None:
    """Store OFFSET (an offset in [start_offset, durable_offset], `earliest` or `latest`) as
    subscriber NAME's position, creating NAME if needed. A replayer's position moves only with
    its checkpointed state: this refuses it (delete the replayer to start it over)."""
    with _open_ro(path) as log:
        old = log.position_info().get(name)
        if old is not None and name in _replayers(log):
            raise CliError(f"subscriber {name!r} is a replayer: its position moves only with its "
                           f"checkpointed state (at {old[0]}); start it over with `tidelog "
                           f"positions {path} delete {name}`")
        off = _offset_arg(log, offset)          # (typed: an int, not the str given)
        try:
            log.set_position(name, off)
        except (TypeError, ValueError) as exc:
            raise CliError(f"subscriber {name!r}: {exc}") from None
    was = "new subscriber" if old is None else f"was {old[0]}"
    click.echo(f"{_shown(name)}: position {off} ({was})")


@positions.command("delete", short_help="Forget subscriber NAME.")
@click.argument("name")
@click.pass_obj
def positions_delete(path: str, name: str) -> None:
    """Forget subscriber NAME: its next `cursor(name=...)` starts afresh. A replayer loses its
    checkpoint, digests and view too (stop it first), and its next run starts over."""
    with _open_ro(path) as log:
        old = log.position_info().get(name)
        if old is None:
            raise CliError(f"no subscriber named {name!r} in {log.path}")
        replayer = name in _replayers(log)
        try:
            if replayer:
                from tidelog.replay import delete_replayer
                delete_replayer(log, name)
            else:
                log.delete_position(name)
        except KeyError:                 # deleted meanwhile by someone else
            raise CliError(f"no subscriber named {name!r} in {log.path}") from None
    extra = "; a replayer: its checkpoint, digests and view are gone too" if replayer else ""
    click.echo(f"{_shown(name)}: deleted (was at {old[0]}{extra})")


# ------------------------------------------------------------------------------- demo, bench

@cli.command()
@click.argument("path", required=False)
@click.option("--events", type=click.IntRange(min=1, max=DEMO_MAX), default=1_000_000,
              show_default=True, help=f"Events to ingest with append_batch (at most "
                                      f"{DEMO_MAX:,}: ~{DEMO_MAX // 10**7} GB).")
@click.option("--singles", type=click.IntRange(min=0, max=DEMO_MAX), default=200_000,
              show_default=True, help="Records for the single-call append phase.")
@click.pass_context
def demo(ctx: click.Context, path: Optional[str], events: int, singles: int) -> None:
    """The main job: ingest -> tail -> replay, on a synthetic click stream.

    Ingest events, read them back and verify them (throughput); two named subscribers, one
    following live while a second wave arrives, one slow, and their lag; a replayer building
    per-user counts in another process, killed with SIGKILL mid-replay and resumed exactly; a
    determinism check of the counting machine, and of one that breaks the rules.

    PATH defaults to a temporary directory, removed at the end; a given PATH is kept (and may
    already hold a log: the demo appends to it)."""
    console = Console()
    tmp = None
    if path is None:
        tmp = path = tempfile.mkdtemp(prefix="tidelog-demo-")
    try:
        ok = demo_story.run(console, path, events, singles)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if tmp is not None:
        click.echo(f"log: {path} (temporary, removed)")
    else:
        click.echo(f"log: {path} (kept): inspect it with `tidelog info {shlex.quote(path)}`")
    if not ok:
        ctx.exit(1)


@cli.command()
@click.option("--records", type=click.IntRange(min=quickbench.CHUNK, max=DEMO_MAX),
              default=2_000_000,
              show_default=True,
              help="Records per append phase (the scan reads both).")
@click.option("--size", type=click.IntRange(min=0), default=100, show_default=True,
              help="Value size in bytes.")
def bench(records: int, size: int) -> None:
    """A quick benchmark (a few seconds) in a temporary directory: append, append_batch, scan."""
    rows = quickbench.run(records, size)
    Console().print(result_table(f"tidelog bench: {size} B values, durability=batch", rows))

# ------------------------------------------------------------------------------- replay

def _load_factory(spec: str) -> Callable[[], Any]:
    """The callable named by --machine MODULE:FACTORY (FACTORY may be dotted: mod:Class.make).
    The current directory is importable, as with `python -m`."""
    import importlib
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise CliError(f"--machine: expected MODULE:FACTORY (e.g. mypkg.machines:Counter), "
                       f"not {spec!r}")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj = importlib.import_module(module)
    except Exception as exc:           # ImportError, or whatever the module raises on import
        raise CliError(f"--machine: cannot import {module!r}: {type(exc).__name__}: "
                       f"{exc}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CliError(f"--machine: {module!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise CliError(f"--machine: {spec} is a {type(obj).__name__}, not a callable that "
                       f"returns a machine")
    return obj


def _make_machine(factory: Callable[[], Any], spec: str) -> Any:
    try:
        return factory()
    except Exception as exc:
        raise CliError(f"--machine: {spec}() raised {type(exc).__name__}: {exc}") from None


def _replay_progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]:>16}"), TextColumn("lag {task.fields[lag]}"),
                    TimeElapsedColumn(), console=console, disable=not console.is_terminal)


@cli.command()
@click.argument("path")
@click.option("--machine", "spec", required=True, metavar="MODULE:FACTORY",
              help="What to replay into: FACTORY() returns a machine (apply/snapshot/restore, or "
                   "a tidelog.LmdbView). The current directory is importable.")
@click.option("--name", default=None,
              help="Replayer name: its checkpoint and position (default: the --machine value).")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=100_000,
              show_default=True, help="Checkpoint at every multiple of this offset.")
@click.option("--checkpoint-interval", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Also checkpoint after this many seconds.")
@click.option("--until", type=click.IntRange(min=0, max=_args.INT64_MAX), default=None,
              help="Stop before this offset (default: the durable end).")
@click.option("-f", "--follow", is_flag=True,
              help="Keep applying records as they are appended, until Ctrl-C or SIGTERM "
                   "(checkpoints, exits 0).")
@click.option("--replica-of", default=None, metavar="NAME",
              help="Compare digests with replayer NAME at every common checkpoint.")
@click.option("--verify-determinism", "determinism", is_flag=True,
              help="Store nothing: replay into two fresh machines side by side and report the "
                   "first checkpoint (and record) where their states differ.")
@click.pass_context
def replay(ctx: click.Context, path: str, spec: str, name: Optional[str], checkpoint_every: int,
           checkpoint_interval: Optional[float], until: Optional[int], follow: bool,
           replica_of: Optional[str], determinism: bool) -> None:
    """Replay the log's durable records into a state machine, resuming from its last checkpoint.

    Exit 0 when done (or stopped by Ctrl-C / SIGTERM after a checkpoint); 1 when a replica
    diverged (--replica-of) or the machine is not deterministic (--verify-determinism); 2 on a
    missing or unreadable log, a bad --machine, or an exception raised by the machine (one line
    naming the method and the record offset; the state stays at the last checkpoint)."""
    factory = _load_factory(spec)
    with _open_ro(path) as log:
        if determinism:
            if follow or replica_of is not None:
                raise CliError("--verify-determinism excludes --follow and --replica-of")
            try:
                report = tidelog.verify_determinism(log, lambda: _make_machine(factory, spec),
                                                    until=until,
                                                    checkpoint_every=checkpoint_every,
                                                    raise_on_divergence=False)
            except (TypeError, ValueError) as exc:
                raise CliError(str(exc)) from None
            click.echo(str(report))
            ctx.exit(0 if report else 1)
        machine = _make_machine(factory, spec)
        try:
            rep = tidelog.Replayer(log, machine, name=spec if name is None else name,
                                   checkpoint_every=checkpoint_every,
                                   checkpoint_interval=checkpoint_interval,
                                   replica_of=replica_of)
            if until is not None and until < rep.position:
                raise ValueError(f"--until: {until} is below the replayer's position "
                                 f"{rep.position}")
        except (TypeError, ValueError) as exc:
            raise CliError(str(exc)) from None
        first = rep.position
        console = Console(stderr=True)
        t0 = time.perf_counter()
        try:
            with _replay_progress(console) as prog:
                task = prog.add_task("replay", total=None, rate="", lag="")
                seen = [time.monotonic(), first]

                def progress(r: Replayer, final: bool = False) -> None:
                    now = time.monotonic()
                    if now - seen[0] < 0.1 and not final:
                        return
                    pos, end = r.position, log.end_offset
                    rate = (pos - seen[1]) / max(now - seen[0], 1e-9)
                    seen[:] = [now, pos]
                    target = end if until is None else min(until, max(end, pos))
                    prog.update(task, completed=pos - first, total=max(target - first, 0),
                                rate=f"{rate:,.0f} rec/s", lag=f"{end - pos:,}")

                progress(rep, True)
                # Ctrl-C / SIGTERM: checkpoint and exit 0, also without --follow
                pos = rep.run(until=until, follow=follow, progress=progress, signals=True)
                progress(rep, True)
        except tidelog.ReplicaDivergedError as exc:
            click.echo(f"tidelog: error: {_describe(exc)}", err=True)
            ctx.exit(1)
        seconds = time.perf_counter() - t0
        lag = log.end_offset - pos
    rep.close()
    why = ""
    if rep.stopped_by is not None:
        import signal
        why = f" (stopped by {signal.Signals(rep.stopped_by).name})"
    click.echo(f"replayed {pos - first:,} records [{first}, {pos}) in {seconds:.2f} s "
               f"({rate(pos - first, seconds):,.0f} records/s){why}; replayer {rep.name!r} "
               f"checkpointed at {pos}, lag {lag:,}")


# `export` and `query` (Parquet, DuckDB) live in cliarrow.py
cli.add_command(cliarrow.export)
cli.add_command(cliarrow.query)

# the bridges (tidelog mirror / ingest): clibridge.py
from tidelog.clibridge import add_commands as _add_bridge_commands  # noqa: E402

_add_bridge_commands(cli)


if __name__ == "__main__":
    main(sys.argv[1:])
