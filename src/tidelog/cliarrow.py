"""The `tidelog export` (Parquet through Arrow) and `tidelog query` (DuckDB SQL) commands; cli.py
adds them to its group, whose `invoke` turns any error into one line on stderr and exit 2.
Holds no state. pyarrow and duckdb are imported only when these commands run (the `tidelog[arrow]`
and `tidelog[sql]` extras; the error names the extra to install otherwise).
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any, Optional

import click
import numpy as np
from rich.console import Console
from rich.table import Table

import tidelog
from tidelog import sql as sql_module
from tidelog.arrow import require
from tidelog.clishow import progress_bar, rate

__all__ = ["export", "query", "value_type_arg", "shown_cell"]

QUERY_ROWS = 1000     # rows `query` prints by default (--max-rows)
CELL_CHARS = 200      # characters of one value `query` shows, then "..."


def value_type_arg(text: Optional[str]) -> object:
    """--value-type: a numpy dtype ("f8", "<u4", "float64") or an Arrow type name ("int32",
    "timestamp[ns]"); None stays None (binary values)."""
    if text is None:
        return None
    try:
        dt = np.dtype(text)
    except TypeError:
        pass
    else:
        if dt.kind not in "OUMm" and dt.itemsize:      # (objects, str, dates: ambiguous)
            return dt
    pa = require("pyarrow", "arrow")
    try:
        return pa.type_for_alias(text)
    except (ValueError, KeyError):
        raise ValueError(f"--value-type: {text!r} is neither a numpy dtype nor an Arrow type "
                         f"name (try f8, <i4, float64, int32)") from None


def _range(log: Any, start: Optional[int], stop: Optional[int]) -> tuple[int, int]:
    first, end = log.start_offset, log.end_offset
    a = first if start is None else start
    b = end if stop is None else stop
    if not first <= a <= end:
        raise tidelog.OffsetOutOfRangeError(f"--from {a} is outside [{first}, {end}] of {log.path}")
    if not a <= b <= end:
        raise tidelog.OffsetOutOfRangeError(f"--to {b} is outside [{a}, {end}] of {log.path} "
                                            f"(--to is the first offset not exported)")
    return a, b


@click.command()
@click.argument("path")
@click.argument("out")
@click.option("--from", "start", type=click.IntRange(min=0), default=None,
              help="First offset to export (default: the log's start).")
@click.option("--to", "stop", type=click.IntRange(min=0), default=None,
              help="Offset to stop before (default: the end).")
@click.option("--value-type", "value_type", default=None,
              help="Export values as this fixed-width type (a numpy dtype such as f8 or <u4, "
                   "or an Arrow type name such as float64) instead of binary.")
@click.option("--headers/--no-headers", default=True, show_default=True,
              help="Include the records' headers (a list of (name, value) per record; empty "
                   "for a record without).")
def export(path: str, out: str, start: Optional[int], stop: Optional[int],
           value_type: Optional[str], headers: bool) -> None:
    """Write records to a Parquet file OUT: columns offset, timestamp, key, value, headers.

    Reads the log as Arrow batches (zero-copy for records written by append_batch); the file
    appears complete or not at all (written to a temporary file of its own beside OUT, then
    renamed)."""
    pq = require("pyarrow.parquet", "arrow")
    vt = value_type_arg(value_type)
    if os.path.isdir(out):
        raise IsADirectoryError(21, "is a directory", out)
    console = Console()
    t0 = time.perf_counter()
    with tidelog.open(path, readonly=True) as log:
        a, b = _range(log, start, stop)
        reader = log.scan_arrow(a, b, value_type=vt, headers=headers)
        # a name no other export (or file) has: two exports to one OUT never share it
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(out)),
                                   prefix=os.path.basename(out) + ".", suffix=".tidelog-tmp")
        os.close(fd)
        n = 0
        try:
            with pq.ParquetWriter(tmp, reader.schema) as writer, progress_bar(console) as prog:
                task = prog.add_task("export", total=b - a)
                for batch in reader:
                    writer.write_batch(batch)
                    n += batch.num_rows
                    prog.update(task, completed=n)
            os.replace(tmp, out)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    seconds = time.perf_counter() - t0
    click.echo(f"exported {n:,} records [{a}, {b}) to {out} ({os.path.getsize(out):,} bytes) "
               f"in {seconds:.2f} s ({rate(n, seconds):,.0f} records/s)")


def shown_cell(v: object) -> str:
    """A result value as one printable line: bytes as UTF-8 with escapes, long values cut."""
    if v is None:
        return "NULL"
    if isinstance(v, (bytes, bytearray, memoryview)):
        text = bytes(v).decode("utf-8", "backslashreplace")
    else:
        text = str(v)
    if not text.isprintable():
        text = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
    return text if len(text) <= CELL_CHARS else text[:CELL_CHARS] + "..."


@click.command()
@click.argument("path")
@click.argument("sql")
@click.option("--max-rows", type=click.IntRange(min=0), default=QUERY_ROWS, show_default=True,
              help="Print at most this many rows.")
def query(path: str, sql: str, max_rows: int) -> None:
    """Run SQL over the log with DuckDB: the log is the table `log` (columns offset, timestamp,
    key, value; keys and values are BLOBs: decode(value) gives text; OFFSET is an SQL keyword:
    write "offset").

    Example: tidelog query LOG "select decode(key) as user, count(*) as n from log group by
    key order by n desc limit 10" """
    require("duckdb", "sql")
    with tidelog.open(path, readonly=True) as log:
        columns, rows = sql_module.query(log, sql)
    if not columns:
        click.echo("ok")
        return
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 200))
    table = Table(*columns)
    for row in rows[:max_rows]:
        table.add_row(*(shown_cell(v) for v in row))
    console.print(table)
    more = f" (first {max_rows:,} shown: --max-rows)" if len(rows) > max_rows else ""
    click.echo(f"{len(rows):,} row{'s' if len(rows) != 1 else ''}{more}")
