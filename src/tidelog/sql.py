"""SQL over a log: DuckDB reads `Log.scan_arrow` as the table `log` (`tidelog query`, the demo's
SQL question). Owns no state: each call makes its own in-memory DuckDB connection. duckdb is
imported on first use (the `tidelog[sql]` extra).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from tidelog.arrow import require

if TYPE_CHECKING:
    from tidelog.log import Log

__all__ = ["query", "TABLE"]

TABLE = "log"       # the name the log has in a query


def query(log: Log, sql: str, *, start: object = "earliest", stop: Optional[int] = None,
          value_type: object = None) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run `sql` with the records [start, stop) of `log` as the table ``log`` (columns offset,
    timestamp, key, value; see Log.scan_arrow): (column names, rows).

    DuckDB streams the log (one frame at a time, zero-copy where the log is columnar); a query
    that reads ``log`` more than once (a self-join) gets it as one table instead (still
    zero-copy for frames written by append_batch). OFFSET is an SQL keyword: write the column
    as "offset". A failing query raises ValueError with DuckDB's message."""
    duckdb = require("duckdb", "sql")
    if not isinstance(sql, str):
        raise TypeError(f"sql: expected a str, not {type(sql).__name__}")
    reader = log.scan_arrow(start, stop, value_type=value_type)      # type: ignore[arg-type]
    try:
        try:
            return _run(duckdb, reader, sql)
        except duckdb.InvalidInputException as exc:
            if "already been consumed" not in str(exc):
                raise
        table = log.scan_arrow(start, stop,                          # type: ignore[arg-type]
                               value_type=value_type).read_all()
        return _run(duckdb, table, sql)
    except duckdb.Error as exc:
        # DuckDB's message, its first line ("Parser Error: syntax error at or near ...")
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        raise ValueError(f"sql: {lines[0]}") from exc


def _run(duckdb: Any, source: Any, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    con = duckdb.connect()
    try:
        con.register(TABLE, source)
        rel = con.sql(sql)
        if rel is None:                 # a statement without a result (SET, CREATE ...)
            return [], []
        return list(rel.columns), rel.fetchall()
    finally:
        con.close()
