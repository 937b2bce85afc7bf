"""The subscriber commands of the command line: `lag`, `positions` (list, set, delete), `info`'s
subscriber lines and `tail -f`, each with its error paths; in-process through click's CliRunner,
and against a writer in another process."""
import json
import os
import subprocess
import sys

import pytest

import tidelog
from tidelog import cli as cli_module
from tidelog.positions import PositionStore

from conftest import spawn_python



def size(off):
    return 1 + off % 7


def value(off):
    return b"v" * size(off)


@pytest.fixture
def subs_log(tmp_path):
    """1000 records of 1..7 value bytes over several segments; subscribers at 1000, 400, 400, 0."""
    path = tmp_path / "log"
    with tidelog.open(path, segment_bytes=1 << 14, durability="none") as log:
        for o in range(1000):           # single-form frames (40 B each): several segments
            log.append(value(o))
        log.sync()
        assert len(log.segments()) > 2
        log.set_position("indexer", 1000)
        log.set_position("mailer", 400)
        log.set_position("audit", 400)
        log.set_position("[red]archiver", 0)         # rich markup in a name is shown verbatim
    return path


def behind(pos, end=1000):
    return sum(size(o) for o in range(pos, end))


def table_rows(output):
    """{subscriber: cells} of a `lag` table."""
    rows = {}
    for line in output.splitlines():
        if line.startswith("│"):
            cells = [c.strip() for c in line.strip("│").split("│")]
            rows[cells[0]] = cells
    return rows


def assert_one_line_error(result, *words):
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tidelog: error: "), result.stderr
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], lines[0]


def human(n):
    return cli_module._size(n)


# ------------------------------------------------------------------------------ help

@pytest.mark.parametrize("args", [["lag"], ["positions"], ["positions", "PATH", "set"],
                                  ["positions", "PATH", "delete"], ["positions", "PATH", "list"]])
def test_help(run, args):
    result = run(*args, "--help")
    assert result.exit_code == 0 and "Usage:" in result.stdout


def test_positions_help_documents_the_forms(run):
    text = run("positions", "--help").stdout
    for form in ("positions PATH ", "set NAME OFFSET", "delete NAME", "earliest", "latest"):
        assert form in text


# ------------------------------------------------------------------------------ lag

def test_lag_table(run, subs_log):
    result = run("lag", subs_log)
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.splitlines()[0].endswith("records [0, 1000), durable below 1000")
    rows = table_rows(result.stdout)
    assert list(rows) == ["indexer", "audit", "mailer", "[red]archiver"]   # leader first
    assert rows["indexer"][1:4] == ["1000", "0", "0 B"] and rows["indexer"][-1] == "leads"
    for name in ("audit", "mailer"):
        assert rows[name][1:4] == ["400", "600", human(behind(400))] and rows[name][-1] == ""
    assert rows["[red]archiver"][1:4] == ["0", "1000", human(behind(0))]
    assert all("ago (" in cells[4] for cells in rows.values())


def test_lag_ties_share_the_lead(run, subs_log):
    with tidelog.open(subs_log, readonly=True) as log:
        log.delete_position("indexer")
    rows = table_rows(run("lag", subs_log).stdout)
    assert [name for name, cells in rows.items() if cells[-1] == "leads"] == ["audit", "mailer"]


def test_lag_bytes_exact_and_extrapolated(run, tmp_path, monkeypatch):
    path = tmp_path / "log"
    with tidelog.open(path, segment_bytes=1 << 14, durability="none") as log:
        for _ in range(10):
            log.append_batch([b"12345678"] * 100)   # 8 bytes each: extrapolation is exact here
        log.sync()
        log.set_position("far", 0)
        log.set_position("near", 950)
        log.set_position("gone", 1000)
    monkeypatch.setattr(cli_module, "LAG_SAMPLE", 10)
    monkeypatch.setattr(cli_module, "LAG_SCAN_RECORDS", 100)    # read only [900, 1000)
    rows = table_rows(run("lag", path).stdout)
    assert rows["far"][3] == "~" + human(8000)
    assert rows["near"][3] == "400 B"
    assert rows["gone"][3] == "0 B"
    rows = table_rows(run("lag", path, "--exact").stdout)
    assert rows["far"][3] == human(8000) and rows["near"][3] == "400 B"
    monkeypatch.setattr(cli_module, "LAG_SCAN_RECORDS", 10**9)
    monkeypatch.setattr(cli_module, "LAG_SCAN_BYTES", 8 * 200)  # the byte budget: [800, 1000)
    rows = table_rows(run("lag", path).stdout)
    assert rows["far"][3] == "~" + human(8000) and rows["near"][3] == "400 B"


def test_lag_without_subscribers_creates_nothing(run, tmp_path):
    path = tmp_path / "log"
    with tidelog.open(path) as log:
        log.append(b"x")
    result = run("lag", path)
    assert result.exit_code == 0 and "no subscribers" in result.stdout
    assert not (path / "positions").exists()        # inspecting a log leaves it as it was
    assert run("info", path).exit_code == 0
    assert run("positions", path).exit_code == 0
    assert not (path / "positions").exists()
    with tidelog.open(path, readonly=True) as log:  # a store whose last subscriber is gone
        log.set_position("a", 1)
        log.delete_position("a")
    result = run("lag", path)
    assert result.exit_code == 0 and "no subscribers" in result.stdout


def test_lag_empty_log(run, tmp_path):
    path = tmp_path / "log"
    tidelog.open(path).close()
    assert "no subscribers" in run("lag", path).stdout
    with tidelog.open(path, readonly=True) as log:
        log.set_position("early", 0)
    rows = table_rows(run("lag", path).stdout)
    assert rows["early"][1:4] == ["0", "0", "0 B"] and rows["early"][-1] == "leads"


def test_lag_position_beyond_the_end(run, subs_log):
    store = PositionStore(str(subs_log))
    store.put("ahead", 5000)            # as a repair that cut the log would leave it
    store.close()
    result = run("lag", subs_log)
    assert result.exit_code == 0
    rows = table_rows(result.stdout)
    assert rows["ahead"][1:4] == ["5000", "-4000", "-"] and rows["ahead"][-1] == "beyond end"
    assert rows["indexer"][-1] == "leads"
    assert "positions" in result.stderr and "set NAME OFFSET" in result.stderr


def test_lag_position_below_start(run, subs_log):
    with tidelog.open(subs_log, segment_bytes=1 << 14) as log:
        log.truncate_before(600)
        start = log.start_offset
    assert 0 < start <= 600
    rows = table_rows(run("lag", subs_log).stdout)
    assert rows["[red]archiver"][1:4] == ["0", "1000", human(behind(start))]
    assert rows["[red]archiver"][-1] == "below start"
    assert rows["audit"][-1] == ("below start" if start > 400 else "")


def test_lag_on_a_damaged_log_still_lists(run, tmp_path):
    path = tmp_path / "log"
    with tidelog.open(path, segment_bytes=1 << 16, durability="none") as log:
        for i in range(100):
            log.append(b"v%04d" % i)                # 40-byte frames: record i at 64 + 40 i
        log.sync()
        log.set_position("a", 10)
        log.set_position("b", 90)
    with open(os.path.join(path, "%020d.seg" % 0), "r+b") as f:
        f.seek(64 + 40 * 50 + 33)                   # a value byte of record 50
        f.write(b"\xff")
    result = run("lag", path)
    assert result.exit_code == 0
    rows = table_rows(result.stdout)
    assert rows["a"][1:4] == ["10", "90", "?"] and rows["b"][1:4] == ["90", "10", "?"]
    assert result.stderr.startswith("tidelog: lag in bytes unknown: ")
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", [["lag"], ["positions"], ["positions", "list"],
                                     ["positions", "set", "a", "0"], ["positions", "delete", "a"],
                                     ["info"]])
def test_missing_or_bad_log_exits_2(run, tmp_path, command):
    cmd, *rest = command
    assert_one_line_error(run(cmd, tmp_path / "missing", *rest), "missing")
    assert not (tmp_path / "missing").exists()
    (tmp_path / "notes.txt").write_text("hello")
    assert_one_line_error(run(cmd, tmp_path, *rest))          # a directory of other files
    assert_one_line_error(run(cmd, tmp_path / "notes.txt", *rest))
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]      # nothing created


# ------------------------------------------------------------------------------ positions

def test_positions_list(run, subs_log):
    for args in ([], ["list"]):
        result = run("positions", subs_log, *args)
        assert result.exit_code == 0 and result.stderr == ""
        lines = [line.split("\t") for line in result.stdout.splitlines()]
        assert [cells[:3] for cells in lines] == [
            ["[red]archiver", "0", "1000"], ["audit", "400", "600"], ["indexer", "1000", "0"],
            ["mailer", "400", "600"]]
        assert all(cells[3].endswith("Z") and cells[4:] == ["cursor"] for cells in lines)


def test_positions_list_empty(run, tmp_path):
    path = tmp_path / "log"
    tidelog.open(path).close()
    result = run("positions", path)
    assert result.exit_code == 0 and result.stdout == ""
    assert "no subscribers" in result.stderr


def test_positions_set(run, subs_log):
    result = run("positions", subs_log, "set", "mailer", 100)
    assert result.exit_code == 0 and result.stdout == "mailer: position 100 (was 400)\n"
    result = run("positions", subs_log, "set", "newcomer", "latest")
    assert result.exit_code == 0 and "position 1000 (new subscriber)" in result.stdout
    assert run("positions", subs_log, "set", "audit", "earliest").exit_code == 0
    assert run("positions", subs_log, "set", "indexer", "1_000").exit_code == 0
    with tidelog.open(subs_log, readonly=True) as log:
        assert log.positions() == {"[red]archiver": 0, "audit": 0, "indexer": 1000,
                                   "mailer": 100, "newcomer": 1000}
        cur = log.cursor(name="mailer")                 # the consumer resumes there
        assert cur.position == 100 and next(cur).offset == 100


@pytest.mark.parametrize("offset, words", [
    ("1001", ["offset", "1001", "durable_offset"]), ("abc", ["offset", "'abc'"]),
    ("1.5", ["offset"]), ("", ["offset"]), ("-1", ["offset", "-1"])])
def test_positions_set_bad_offset(run, subs_log, offset, words):
    args = ["positions", subs_log, "set", "mailer"] + (["--"] if offset.startswith("-") else [])
    assert_one_line_error(run(*args, offset), *words)
    with tidelog.open(subs_log, readonly=True) as log:
        assert log.positions()["mailer"] == 400          # unchanged


def test_positions_set_beyond_the_durable_end(run, tmp_path):
    path = tmp_path / "log"
    with tidelog.open(path, durability="none") as log:
        log.append_batch([b"a"] * 10)
        log.sync()
        log.append_batch([b"b"] * 5)                    # 10..14 not durable
        assert_one_line_error(run("positions", path, "set", "x", 12), "12", "durable_offset")
        result = run("positions", path, "set", "x", "latest")
        assert result.exit_code == 0 and "position 10 " in result.stdout
        assert log.positions() == {"x": 10}             # seen by the writer at once


@pytest.mark.parametrize("name, word", [("", "empty"), ("x" * 401, "400")])
def test_positions_set_bad_name(run, subs_log, name, word):
    assert_one_line_error(run("positions", subs_log, "set", name, 1), "name", word)


def test_positions_delete(run, subs_log):
    result = run("positions", subs_log, "delete", "audit")
    assert result.exit_code == 0 and result.stdout == "audit: deleted (was at 400)\n"
    assert_one_line_error(run("positions", subs_log, "delete", "audit"), "no subscriber",
                          "'audit'")
    assert_one_line_error(run("positions", subs_log, "delete", ""), "no subscriber")
    with tidelog.open(subs_log, readonly=True) as log:
        assert "audit" not in log.positions()
        assert log.cursor(name="audit").position == 0


class Counter:
    def __init__(self):
        self.n = 0

    def apply(self, record):
        self.n += 1

    def snapshot(self):
        return b"%d" % self.n

    def restore(self, snapshot):
        self.n = int(snapshot)


def test_replayers_are_listed_and_guarded(run, subs_log):
    with tidelog.open(subs_log, readonly=True) as log:
        assert tidelog.Replayer(log, Counter(), name="counter", checkpoint_every=100).run(
            until=600) == 600
    rows = table_rows(run("lag", subs_log).stdout)
    assert rows["counter"][1:3] == ["600", "400"] and rows["counter"][-1] == "replayer"
    kinds = dict(line.split("\t")[::4] for line in run("positions", subs_log).stdout.splitlines())
    assert kinds == {"[red]archiver": "cursor", "audit": "cursor", "counter": "replayer",
                     "indexer": "cursor", "mailer": "cursor"}
    # its position moves only with its state: setting it would leave a replayer that refuses
    # to start
    assert_one_line_error(run("positions", subs_log, "set", "counter", 100), "replayer",
                          "delete counter")
    result = run("positions", subs_log, "delete", "counter")
    assert result.exit_code == 0 and "checkpoint" in result.stdout
    with tidelog.open(subs_log, readonly=True) as log:
        assert "counter" not in log.positions()
        machine = Counter()
        rep = tidelog.Replayer(log, machine, name="counter")
        assert rep.position == 0 and machine.n == 0          # starts over from nothing
        assert rep.run() == 1000 and machine.n == 1000


def test_positions_delete_without_a_store_creates_nothing(run, tmp_path):
    path = tmp_path / "log"
    tidelog.open(path).close()
    assert_one_line_error(run("positions", path, "delete", "x"), "no subscriber")
    assert not (path / "positions").exists()


def test_positions_no_such_subcommand(run, subs_log):
    result = run("positions", subs_log, "rename", "a", "b")
    assert result.exit_code == 2 and "No such command" in result.stderr


# ------------------------------------------------------------------------------ info

def test_info_lists_subscribers(run, subs_log):
    lines = run("info", subs_log).stdout.splitlines()
    at = lines.index("subscribers:    4")
    assert lines[at + 1:] == ["  [red]archiver: position 0, lag 1000",
                              "  audit:        position 400, lag 600",
                              "  indexer:      position 1000, lag 0",
                              "  mailer:       position 400, lag 600"]
    fields = dict(line.split(":", 1) for line in lines)     # still `name: value` lines
    assert fields["records"].strip() == "1000"


def test_info_caps_the_subscriber_list(run, subs_log):
    with tidelog.open(subs_log, readonly=True) as log:
        for i in range(30):
            log.set_position(f"s{i:02d}", i)
    lines = run("info", subs_log).stdout.splitlines()
    assert "subscribers:    34" in lines
    assert lines[-1] == f"  ... and 14 more (`tidelog lag {subs_log}` lists them all)"
    assert sum(line.startswith("  ") for line in lines) == 21


# ------------------------------------------------------------------------------ tail -f

def test_tail_follow_formats_like_dump(run, subs_log):
    with tidelog.open(subs_log) as log:
        log.append(b"\xffbin", key=b"k", timestamp=123)
        log.sync()
        for fmt in ("text", "hex", "json"):
            tail = run("tail", subs_log, "-n", 3, "-f", "--timeout", 0.2, "--format", fmt)
            dump = run("dump", subs_log, "--from", 998, "--format", fmt)
            assert tail.exit_code == 0 and tail.stdout == dump.stdout != ""
        assert json.loads(tail.stdout.splitlines()[-1])["value_encoding"] == "base64"


def test_tail_follow_errors(run, tmp_path):
    assert_one_line_error(run("tail", tmp_path / "missing", "-f"), "missing")
    result = run("tail", tmp_path, "-f", "--timeout", -1)
    assert result.exit_code == 2 and "timeout" in result.stderr.lower()


# ------------------------------------------------------------------------------ a live writer

WRITER = """
import sys, time, tidelog
log = tidelog.open(sys.argv[1], segment_bytes=1 << 16, sync_interval=0.001)
log.append_batch([b"%d" % i for i in range(1000)])
log.sync()
print("ready", flush=True)
while True:
    log.append(b"more")
    time.sleep(0.0005)
"""


def tidelog_cmd(*args):
    return [sys.executable, "-m", "tidelog", *map(str, args)]


def test_commands_while_a_writer_in_another_process_appends(run, tmp_path):
    path = tmp_path / "log"
    writer = spawn_python(WRITER, path)
    try:
        assert writer.stdout.readline() == "ready\n", writer.stderr.read()
        result = run("positions", path, "set", "ops", 500)
        assert result.exit_code == 0, result.stderr
        rows = table_rows(run("lag", path).stdout)
        assert rows["ops"][1] == "500" and int(rows["ops"][2]) >= 500
        r = subprocess.run(tidelog_cmd("positions", path, "set", "ops", 700), capture_output=True,
                           timeout=60)
        assert r.returncode == 0 and r.stdout == b"ops: position 700 (was 500)\n", r.stderr
        r = subprocess.run(tidelog_cmd("positions", path, "set", "ops", 10**9),
                           capture_output=True, timeout=60)
        assert r.returncode == 2 and r.stdout == b""
        assert r.stderr.count(b"\n") == 1 and r.stderr.startswith(b"tidelog: error: ")
        r = subprocess.run(tidelog_cmd("lag", path), capture_output=True, timeout=60)
        assert r.returncode == 0 and b"ops" in r.stdout and b"700" in r.stdout
        r = subprocess.run(tidelog_cmd("positions", path, "delete", "ops"), capture_output=True,
                           timeout=60)
        assert r.returncode == 0 and r.stdout == b"ops: deleted (was at 700)\n"
        r = subprocess.run(tidelog_cmd("positions", path, "delete", "ops"), capture_output=True,
                           timeout=60)
        assert r.returncode == 2 and b"no subscriber named 'ops'" in r.stderr
        assert writer.poll() is None, writer.stderr.read()
    finally:
        writer.kill()
        writer.communicate()
