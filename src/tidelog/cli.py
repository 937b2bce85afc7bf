"""The `tidelog` command line: click parses, rich draws progress bars and tables.

Every command that fails on the log itself (missing, not a log, locked, damaged, unreadable)
prints one line `tidelog: error: <message>` to stderr and exits 2; `verify` exits 1 on damage.
"""

import base64
import json
import os
import shutil
import sys
import tempfile
import time
import zlib

import click
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import tidelog

__all__ = ["main", "cli"]

BATCH = 65536         # records per read_batch
CHUNK = 10_000        # records per append_batch in demo, bench and append


class CliError(Exception):
    """A failure worth one line on stderr and exit status 2."""


def _describe(exc):
    if isinstance(exc, OSError) and exc.strerror:
        msg = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    else:
        msg = str(exc) or type(exc).__name__
    return msg.replace("\n", "\\n")


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise                       # click quiets stdout and exits 1
        except (tidelog.TidelogError, OSError, CliError) as exc:
            click.echo(f"tidelog: error: {_describe(exc)}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(tidelog.__version__, prog_name="tidelog")
def cli():
    """tidelog: an embedded, append-only log. Inspect, append to, verify and benchmark logs."""


def main(argv=None):
    """Console-script entry point (`tidelog`, `python -m tidelog`)."""
    cli.main(args=argv, prog_name="tidelog")


# ------------------------------------------------------------------------------- helpers

def _open_ro(path):
    return tidelog.open(path, readonly=True)


def _iso(ns):
    """Nanoseconds since the epoch as ISO 8601 UTC, or the plain number if out of range."""
    try:
        sec, frac = divmod(int(ns), 1_000_000_000)
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"
    except (OverflowError, ValueError, OSError):
        return str(ns)


def _text(b):
    return b.decode("utf-8", "backslashreplace")


def _json_field(b):
    """(str, encoding): utf-8 text when decodable, else base64."""
    try:
        return b.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(b).decode("ascii"), "base64"


def _formatter(fmt):
    """A function Record -> one output line for --format text|hex|json."""
    if fmt == "json":
        def line(rec):
            key = rec.key
            d = {"offset": rec.offset, "timestamp": rec.timestamp, "key": None, "key_encoding": None}
            if key is not None:
                d["key"], d["key_encoding"] = _json_field(key)
            d["value"], d["value_encoding"] = _json_field(bytes(rec))
            return json.dumps(d, ensure_ascii=False)
        return line
    conv = _text if fmt == "text" else bytes.hex

    def line(rec):
        key = rec.key
        return (f"{rec.offset}\t{_iso(rec.timestamp)}\t{'-' if key is None else conv(key)}\t"
                f"{conv(bytes(rec))}")
    return line


def _print_batches(cur, count, line):
    """Print up to `count` records from cursor `cur`, one line each."""
    while count > 0:
        batch = cur.read_batch(min(count, BATCH))
        if not len(batch):
            return
        count -= len(batch)
        click.echo("\n".join(line(rec) for rec in batch))


def _progress(console):
    return Progress(TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, disable=not console.is_terminal)


def _subscribers(log):
    """{name: position}, or None when this tidelog has no named subscriber positions."""
    positions = getattr(log, "positions", None)
    if positions is None:
        return None
    try:
        return dict(positions())
    except NotImplementedError:
        return None


def _rate(n, seconds):
    return n / seconds if seconds > 0 else float("inf")


_FORMAT = click.option("--format", "fmt", type=click.Choice(["text", "hex", "json"]),
                       default="text", show_default=True,
                       help="text: value as utf-8 (backslash escapes); hex; json: one object "
                            "per line, value utf-8 or base64 (see value_encoding).")


# ------------------------------------------------------------------------------- commands

@cli.command()
@click.argument("path")
def info(path):
    """Offsets, record count, segments and their size on disk, subscribers."""
    with _open_ro(path) as log:
        start, end, durable = log.start_offset, log.end_offset, log.durable_offset
        segs = log.segments()
        subs = _subscribers(log)
    seg_bytes = sum(os.stat(p).st_size for _, p in segs)
    all_bytes = sum(e.stat().st_blocks * 512 for e in os.scandir(log.path) if e.is_file())
    rows = [("path", log.path), ("start_offset", start), ("end_offset", end),
            ("durable_offset", durable), ("records", end - start),
            ("segments", f"{len(segs)} ({seg_bytes:,} bytes)"),
            ("disk usage", f"{all_bytes:,} bytes (segments, indexes, control)"),
            ("subscribers", "not supported by this version" if subs is None else len(subs))]
    for name, value in rows:
        click.echo(f"{name + ':':<16}{value}")


@cli.command()
@click.argument("path")
@click.option("--from", "start", type=click.IntRange(min=0), default=None,
              help="First offset to print (default: the log's start).")
@click.option("--count", type=click.IntRange(min=0), default=None,
              help="At most this many records (default: to the end).")
@_FORMAT
def dump(path, start, count, fmt):
    """Print records: offset, timestamp, key, value."""
    with _open_ro(path) as log:
        end = log.end_offset
        cur = log.cursor("earliest" if start is None else start)
        left = end - cur.position
        _print_batches(cur, left if count is None else min(count, left), _formatter(fmt))


@cli.command()
@click.argument("path")
@click.option("-n", "--lines", "n", type=click.IntRange(min=0), default=10, show_default=True,
              help="How many of the last records to print.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing records as they are appended "
                                                     "(Ctrl-C to stop).")
@click.option("--timeout", type=click.FloatRange(min=0), default=None,
              help="With -f: stop after this many seconds without a new record.")
@_FORMAT
def tail(path, n, follow, timeout, fmt):
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
def append(path, files, key):
    """Append one record per stdin line (newline stripped), or one per FILE's whole content."""
    if files:
        values = []
        for name in files:           # read them all first: a missing file appends nothing
            with open(name, "rb") as f:
                values.append(f.read())
        chunks = [values]
    else:
        chunks = _line_chunks(sys.stdin.buffer)
    key = None if key is None else os.fsencode(key)
    first, n = None, 0
    with tidelog.open(path, create=True) as log:
        for chunk in chunks:
            keys = None if key is None else [key] * len(chunk)
            try:
                off = log.append_batch(chunk, keys=keys, atomic=False)
            except ValueError as exc:        # a record larger than a segment
                raise CliError(str(exc)) from None
            first = off if first is None else first
            n += len(chunk)
        if first is None:
            first = log.end_offset
    click.echo(f"appended {n} records, first offset {first}")


def _line_chunks(stream):
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
def verify(ctx, path):
    """Read every record from start to end, checking each frame's CRC.

    Exit 0 when clean, 1 on damage (one line: file, byte position, offset)."""
    console = Console(stderr=True)
    with _open_ro(path) as log:
        start, end = log.start_offset, log.end_offset
        cur = log.cursor(start)
        n = 0
        try:
            with _progress(console) as prog:
                task = prog.add_task("verify", total=end - start)
                while cur.position < end:
                    batch = cur.read_batch(min(BATCH, end - cur.position))
                    if not len(batch):
                        break
                    n += len(batch)
                    prog.advance(task, len(batch))
        except tidelog.CorruptLogError as exc:
            reason = str(exc).split("; run `tidelog verify")[0]
            click.echo(f"DAMAGED file={exc.path} position={exc.position} offset={exc.offset}: "
                       f"{reason}")
            ctx.exit(1)
        except tidelog.OffsetOutOfRangeError as exc:     # a segment file is missing
            click.echo(f"DAMAGED file={log.path} position=None offset={cur.position}: {exc}")
            ctx.exit(1)
        if n != end - start:
            click.echo(f"DAMAGED: read {n} records, the log claims {end - start} "
                       f"([{start}, {end}))")
            ctx.exit(1)
        indexes = log._index_problems()
    for name, bad in indexes:
        # indexes are hints: lookups still work (slower); `tidelog repair` rewrites them
        click.echo(f"index {name}: {bad} entries wrong or missing (rebuilt by `tidelog repair`)")
    click.echo(f"ok: {n} records [{start}, {end}) verified"
               + (f"; {len(indexes)} index file(s) to rebuild" if indexes else ""))


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
def repair(ctx, path, truncate, salvage_to):
    """Repair a log: rebuild damaged index files; with --truncate, also cut the log at the first
    damaged record; with --salvage-to OUT, copy what is readable around damage into a new log.
    Check first with `tidelog verify`. Needs the writer lock (not for --salvage-to)."""
    if salvage_to is not None:
        if truncate:
            raise CliError("--truncate and --salvage-to exclude each other")
        if os.path.exists(salvage_to) and os.listdir(salvage_to):
            raise CliError(f"{salvage_to}: exists and is not empty")
        kept = 0
        gaps = []
        expect = None
        with tidelog.open(path, readonly=True) as src, \
                tidelog.open(salvage_to, durability="none") as dst:
            for rec in src._salvage():
                if expect is not None and rec.offset != expect:
                    gaps.append((expect, rec.offset))
                dst.append(bytes(rec.value), key=rec.key, timestamp=rec.timestamp)
                expect = rec.offset + 1
                kept += 1
            end = src.end_offset
        if expect is not None and expect < end:
            gaps.append((expect, end))
        click.echo(f"salvaged {kept} records into {salvage_to}")
        for a, b in gaps:
            click.echo(f"lost offsets [{a}, {b})")
        return
    log = tidelog.open(path, create=False, durability="none",
                       repair="truncate" if truncate else None)
    try:
        if log.repaired:
            where, pos, off, why = log.repaired
            click.echo(f"truncated at offset {off} ({where}, byte {pos}: {why}); "
                       f"the log now holds [{log.start_offset}, {log.end_offset})")
        elif truncate:
            click.echo(f"no damaged record: the log holds [{log.start_offset}, {log.end_offset})")
        n = log._rebuild_indexes()
        click.echo(f"rebuilt the index files of {n} segment(s)")
    finally:
        log.close()


@cli.command()
@click.argument("path")
def lag(path):
    """Named subscribers: their positions, their lag, and who leads."""
    with _open_ro(path) as log:
        end = log.end_offset
        subs = _subscribers(log)
    if not subs:
        why = " (this version of tidelog has no named subscriber positions)" if subs is None else ""
        click.echo(f"no subscribers{why}")
        return
    lead = max(subs.values())
    table = Table("subscriber", "position", "lag", "")
    for name, pos in sorted(subs.items(), key=lambda kv: -kv[1]):
        table.add_row(name, str(pos), str(end - pos), "leads" if pos == lead else "")
    Console().print(table)


# ------------------------------------------------------------------------------- demo, bench

_TYPES = (b"click", b"view", b"scroll", b"add_to_cart", b"purchase")
_PAGES = (b"home", b"search", b"product", b"cart", b"checkout")
_EVENT = b'{"seq":%d,"ts":%d,"user":"u%06d","type":"%s","page":"/%s/%d","x":%d,"y":%d}'


def _events(rng, seq, n):
    """n synthetic click events (~100 bytes of JSON each) and their keys (the user)."""
    users = rng.integers(0, 100_000, n).tolist()
    kinds = rng.integers(0, len(_TYPES), n).tolist()
    pages = rng.integers(0, len(_PAGES), n).tolist()
    items = rng.integers(0, 10_000, n).tolist()
    xy = rng.integers(0, 2048, (2, n)).tolist()
    ts = 1_700_000_000_000 + seq
    values = [_EVENT % (seq + i, ts + i, u, _TYPES[k], _PAGES[p], it, x, y)
              for i, (u, k, p, it, x, y) in enumerate(zip(users, kinds, pages, items, *xy))]
    return values, [b"u%06d" % u for u in users]


def _result_table(title, rows):
    table = Table("phase", "records", "seconds", "records/s", "MB/s", title=title)
    for name, n, nbytes, seconds in rows:
        table.add_row(name, f"{n:,}", f"{seconds:.3f}", f"{_rate(n, seconds):,.0f}",
                      "" if nbytes is None else f"{_rate(nbytes, seconds) / 1e6:,.1f}")
    return table


@cli.command()
@click.argument("path", required=False)
@click.option("--events", type=click.IntRange(min=1), default=1_000_000, show_default=True,
              help="Events to ingest with append_batch.")
@click.option("--singles", type=click.IntRange(min=0), default=200_000, show_default=True,
              help="Records for the single-call append phase.")
@click.pass_context
def demo(ctx, path, events, singles):
    """Ingest a synthetic click stream, read it back, verify it, report throughput.

    PATH defaults to a temporary directory, removed at the end; a given PATH is kept (and may
    already hold a log: the demo appends to it)."""
    console = Console()
    tmp = None
    if path is None:
        tmp = path = tempfile.mkdtemp(prefix="tidelog-demo-")
    try:
        ok = _demo(console, path, events, singles)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    where = "temporary, removed" if tmp is not None else "kept"
    click.echo(f"log: {path} ({where})")
    if not ok:
        ctx.exit(1)


def _demo(console, path, events, singles):
    rng = np.random.default_rng(2024)
    wcrc = kcrc = 0
    nbytes = 0
    t_gen = t_append = 0.0
    with tidelog.open(path) as log:
        first = log.end_offset
        click.echo(f"demo: {events:,} click events (~100 B, keyed by user) into {log.path}")
        with _progress(console) as prog:
            task = prog.add_task("ingest", total=events)
            for lo in range(0, events, CHUNK):
                t0 = time.perf_counter()
                values, keys = _events(rng, lo, min(CHUNK, events - lo))
                t1 = time.perf_counter()
                log.append_batch(values, keys=keys)
                t_append += time.perf_counter() - t1
                t_gen += t1 - t0
                wv, wk = b"".join(values), b"".join(keys)
                wcrc, kcrc = zlib.crc32(wv, wcrc), zlib.crc32(wk, kcrc)
                nbytes += len(wv) + len(wk)
                prog.advance(task, len(values))
        t0 = time.perf_counter()
        log.sync()
        t_sync = time.perf_counter() - t0

        rcrc = rkcrc = 0
        n = 0
        contiguous = True
        crc32 = zlib.crc32
        cur = log.cursor(first)
        t_batches = 0.0
        t0 = time.perf_counter()
        with _progress(console) as prog:
            task = prog.add_task("read + verify", total=events)
            while n < events:
                t1 = time.perf_counter()
                batch = cur.read_batch(min(BATCH, events - n))
                t_batches += time.perf_counter() - t1
                if not len(batch):
                    break
                contiguous &= bool(batch.offsets[0] == first + n)
                for v in batch.values:       # one view at a time: no garbage-collector churn
                    rcrc = crc32(v, rcrc)
                rkcrc = crc32(b"".join(k or b"" for k in batch.keys), rkcrc)
                n += len(batch)
                prog.advance(task, len(batch))
        t_read = time.perf_counter() - t0

        values, keys = _events(rng, events, singles)
        append1 = log.append
        t0 = time.perf_counter()
        for v, k in zip(values, keys):
            append1(v, key=k)
        t_single = time.perf_counter() - t0
        single_bytes = sum(map(len, values)) + sum(map(len, keys))
        t0 = time.perf_counter()
        log.sync()
        t_single_sync = time.perf_counter() - t0

    ok = n == events and contiguous and rcrc == wcrc and rkcrc == kcrc
    rows = [("append_batch + sync", events, nbytes, t_append + t_sync),
            ("read_batch (CRC-checked)", n, nbytes, t_batches),
            ("read_batch + Python crc32", n, nbytes, t_read)]
    if singles:
        rows.append(("append (1 per call) + sync", singles, single_bytes,
                     t_single + t_single_sync))
    console.print(_result_table("throughput (MB/s: key + value bytes)", rows))
    click.echo(f"(generating the events took {t_gen:.2f} s, not counted above)")
    if ok:
        click.echo(f"verified: {n:,} records read back, offsets contiguous, "
                      f"crc32 values {rcrc:08x} keys {rkcrc:08x} match what was written")
    else:
        click.echo(f"tidelog: demo: MISMATCH: wrote {events} records (crc32 {wcrc:08x}/{kcrc:08x}), "
                   f"read {n} (crc32 {rcrc:08x}/{rkcrc:08x}, contiguous={contiguous})", err=True)
    return ok


@cli.command()
@click.option("--records", type=click.IntRange(min=CHUNK), default=2_000_000, show_default=True,
              help="Records per append phase (the scan reads both).")
@click.option("--size", type=click.IntRange(min=0), default=100, show_default=True,
              help="Value size in bytes.")
def bench(records, size):
    """A quick benchmark (a few seconds) in a temporary directory: append, append_batch, scan."""
    console = Console()
    rng = np.random.default_rng(1)
    chunk = [bytes(v) for v in rng.integers(0, 256, (CHUNK, size), dtype=np.uint8)]
    tmp = tempfile.mkdtemp(prefix="tidelog-bench-")
    try:
        with tidelog.open(tmp) as log:
            append1 = log.append
            t0 = time.perf_counter()
            for i in range(records):
                append1(chunk[i % CHUNK])
            log.sync()
            t_single = time.perf_counter() - t0

            t0 = time.perf_counter()
            for _ in range(records // CHUNK):
                log.append_batch(chunk)
            log.sync()
            t_batch = time.perf_counter() - t0
            n_batch = records // CHUNK * CHUNK

            cur = log.cursor("earliest")
            scanned = scanned_bytes = 0
            t0 = time.perf_counter()
            while True:
                batch = cur.read_batch()
                if not len(batch):
                    break
                scanned += len(batch)
                scanned_bytes += batch.nbytes
            t_scan = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    console.print(_result_table(f"tidelog bench: {size} B values, durability=batch", [
        ("append (1 per call) + sync", records, records * size, t_single),
        (f"append_batch ({CHUNK:,}) + sync", n_batch, n_batch * size, t_batch),
        ("scan via read_batch", scanned, scanned_bytes, t_scan)]))


if __name__ == "__main__":
    main(sys.argv[1:])
