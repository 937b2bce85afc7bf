"""The log in other systems (issue 14, item 2): DuckDB over Log.scan_arrow equals the records,
`tidelog export` writes a Parquet file equal to them, `tidelog query` prints DuckDB's answer,
both with one-line errors (exit 2); the demo's SQL question, and what it says without duckdb."""
import os
import sys

import numpy as np
import pytest

import tidelog

pa = pytest.importorskip("pyarrow")
duckdb = pytest.importorskip("duckdb")
pq = pytest.importorskip("pyarrow.parquet")
from tidelog import sql  # noqa: E402

from test_cli_hardening import assert_one_line_error  # noqa: E402


def fill(log):
    log.append_batch([b"v%d" % i * (i % 4 + 1) for i in range(300)],
                     keys=[[None, b"", b"u%d" % (i % 5)][i % 3] for i in range(300)])
    for i in range(20):
        log.append(b"single%d" % i, key=b"u%d" % (i % 5) if i % 2 else None)
    log.append_batch(np.arange(40, dtype=np.float64), keys=[b"f"] * 40)
    log.sync()
    return list(log.cursor())


def test_duckdb_over_scan_arrow_equals_the_records(log):
    recs = fill(log)
    reader = log.scan_arrow(batch_records=50)
    rows = duckdb.sql('select "offset", epoch_ns(timestamp), key, value from reader '
                      'order by "offset"').fetchall()
    assert rows == [(r.offset, r.timestamp, r.key, bytes(r.value)) for r in recs]
    reader = log.scan_arrow()
    (n, total), = duckdb.sql("select count(*), sum(octet_length(value)) from reader").fetchall()
    assert (n, total) == (len(recs), sum(len(r.value) for r in recs))
    counts = {}
    for r in recs:
        counts[r.key] = counts.get(r.key, 0) + 1
    reader = log.scan_arrow()
    got = dict(duckdb.sql("select key, count(*) from reader group by key").fetchall())
    assert got == counts


def test_sql_query_names_the_table_log_and_reads_it_twice(log):
    recs = fill(log)
    cols, rows = sql.query(log, 'select count(*) as n, max("offset") as last from log')
    assert cols == ["n", "last"] and rows == [(len(recs), recs[-1].offset)]
    cols, rows = sql.query(log, 'select count(*) from log a join log b using ("offset")')
    assert rows == [(len(recs),)]              # a self-join: the log as one table
    cols, rows = sql.query(log, "select sum(value) from log", start=320, value_type=np.float64)
    assert rows == [(float(sum(range(40))),)]
    with pytest.raises(ValueError, match="sql: Parser Error"):
        sql.query(log, "selec 1")
    with pytest.raises(TypeError, match="sql"):
        sql.query(log, b"select 1")


def test_export_writes_the_records(run, log, log_path, tmp_path):
    recs = fill(log)
    out = tmp_path / "out.parquet"
    result = run("export", log_path, out)
    assert result.exit_code == 0, result.stderr
    assert f"exported {len(recs):,} records [0, {len(recs)})" in result.stdout
    t = pq.read_table(out)
    assert t.column("offset").to_pylist() == [r.offset for r in recs]
    assert t.column("timestamp").cast(pa.int64()).to_pylist() == [r.timestamp for r in recs]
    assert t.column("key").to_pylist() == [r.key for r in recs]
    assert t.column("value").to_pylist() == [bytes(r.value) for r in recs]
    assert t.schema.field("timestamp").type == pa.timestamp("ns", "UTC")
    # a range, and typed values
    result = run("export", log_path, out, "--from", 320, "--to", 330, "--value-type", "f8")
    assert result.exit_code == 0, result.stderr
    t = pq.read_table(out)
    assert t.column("offset").to_pylist() == list(range(320, 330))
    assert t.column("value").to_pylist() == [float(i) for i in range(10)]
    result = run("export", log_path, out, "--from", 320, "--value-type", "float64")
    assert pq.read_table(out).column("value").to_pylist() == [float(i) for i in range(40)]
    assert sorted(os.listdir(tmp_path)) == ["log", "out.parquet"]


def test_export_keeps_headers_and_a_file_named_like_its_temporary(run, log, log_path, tmp_path):
    """Headers go into the Parquet file (they were dropped: a round trip lost them), unless
    --no-headers; the temporary file is the export's own (a fixed name beside OUT was unlinked
    or overwritten whoever owned it)."""
    hs = [[("h", b"%d" % i), ("h", b"\xff")] if i % 2 else [] for i in range(30)]
    log.append_batch([b"v%d" % i for i in range(30)], headers=hs)
    log.append(b"single", headers={"only": b"one"})
    log.sync()
    out = tmp_path / "out.parquet"
    squatter = tmp_path / "out.parquet.tidelog-tmp"
    squatter.write_bytes(b"someone else's")
    result = run("export", log_path, out)
    assert result.exit_code == 0, result.stderr
    got = pq.read_table(out).column("headers").to_pylist()
    assert [[(p["name"], p["value"]) for p in h] for h in got] == hs + [[("only", b"one")]]
    assert squatter.read_bytes() == b"someone else's"
    result = run("export", log_path, out, "--no-headers")
    assert result.exit_code == 0, result.stderr
    assert pq.read_table(out).column_names == ["offset", "timestamp", "key", "value"]
    assert sorted(os.listdir(tmp_path)) == ["log", "out.parquet", "out.parquet.tidelog-tmp"]


def test_export_errors_are_one_line(run, log, log_path, tmp_path):
    fill(log)
    out = tmp_path / "out.parquet"
    assert_one_line_error(run("export", tmp_path / "missing", out), "missing")
    assert_one_line_error(run("export", log_path, out, "--from", 10, "--to", 5), "--to 5")
    assert_one_line_error(run("export", log_path, out, "--to", 10**6), "--to 1000000")
    assert_one_line_error(run("export", log_path, out, "--from", 10**6), "--from 1000000")
    assert_one_line_error(run("export", log_path, out, "--value-type", "nonsense"),
                          "--value-type")
    assert_one_line_error(run("export", log_path, out, "--value-type", "u2"),
                          "every value must be 2 bytes")
    assert_one_line_error(run("export", log_path, tmp_path), "is a directory")
    assert sorted(os.listdir(tmp_path)) == ["log"]        # nothing half-written left


def test_query_prints_a_table(run, log, log_path):
    fill(log)
    result = run("query", log_path, "select decode(key) as user, count(*) as n from log "
                 "where key is not null and octet_length(key) > 0 and key != 'f' "
                 "group by key order by n desc, user limit 3")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "user" in out and "┃" in out and out.strip().endswith("3 rows")
    assert "u1" in out
    result = run("query", log_path, 'select value from log where "offset" = 1')
    assert "v1v1" in result.stdout and "1 row" in result.stdout
    result = run("query", log_path, 'select value from log', "--max-rows", 2)
    assert "(first 2 shown: --max-rows)" in result.stdout


def test_query_errors_are_one_line(run, log, log_path, tmp_path, monkeypatch):
    fill(log)
    assert_one_line_error(run("query", log_path, "selec 1"), "sql: Parser Error")
    assert_one_line_error(run("query", log_path, "select nope from log"), "nope")
    assert_one_line_error(run("query", tmp_path / "missing", "select 1"), "missing")
    monkeypatch.setitem(sys.modules, "duckdb", None)
    assert_one_line_error(run("query", log_path, "select 1"), "pip install 'tidelog[sql]'")


def test_demo_answers_an_sql_question(run, tmp_path):
    result = run("demo", tmp_path / "demo", "--events", 3000, "--singles", 100)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    out = result.stdout
    assert "sql: DuckDB over the log as the table `log`" in out
    assert "purchases" in out
    assert "sql: the top count" in out and "is the replayer's" in out


def test_demo_without_duckdb_says_what_to_install(run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "duckdb", None)
    result = run("demo", tmp_path / "demo", "--events", 300, "--singles", 0)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert "pip install 'tidelog[sql]'" in result.stdout
