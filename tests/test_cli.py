"""The command line: every subcommand in-process (click's CliRunner), the module entry point and
Ctrl-C handling in a real subprocess."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner

import tidelog
from tidelog.cli import cli

COMMANDS = ["info", "dump", "tail", "append", "verify", "lag", "positions", "replay", "demo",
            "bench"]
READERS = ["info", "dump", "tail", "verify", "lag"]



@pytest.fixture
def filled_log(tmp_path):
    """A log holding 5 records: three lines, a keyed record and one that is not utf-8."""
    path = tmp_path / "log"
    with tidelog.open(path) as log:
        log.append_batch([b"alpha", b"beta", b"gamma"])
        log.append(b"delta", key=b"k", timestamp=1_000_000_000_123_456_789)
        log.append(b"\xff\xfebin")
    return path


def assert_one_line_error(result, code=2):
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tidelog: error: ")
    assert "Traceback" not in result.output


def test_version(run):
    result = run("--version")
    assert result.exit_code == 0
    assert tidelog.__version__ in result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_help(run, command):
    result = run(command, "--help")
    assert result.exit_code == 0
    assert "Usage:" in result.output


@pytest.mark.parametrize("command", READERS + ["demo"])
def test_not_a_log_exits_2(run, tmp_path, command):
    (tmp_path / "notes.txt").write_text("hello")
    assert_one_line_error(run(command, tmp_path))            # a directory of other files
    assert_one_line_error(run(command, tmp_path / "notes.txt"))   # a file
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]      # nothing created or modified


@pytest.mark.parametrize("command", READERS)
def test_missing_log_exits_2(run, tmp_path, command):
    result = run(command, tmp_path / "missing")
    assert_one_line_error(result)
    assert "missing" in result.stderr
    assert not (tmp_path / "missing").exists()                # readers never create


def test_info(run, filled_log):
    result = run("info", filled_log)
    assert result.exit_code == 0
    fields = dict(line.split(":", 1) for line in result.output.splitlines())
    assert fields["start_offset"].strip() == "0"
    assert fields["end_offset"].strip() == "5"
    assert fields["durable_offset"].strip() == "5"
    assert fields["records"].strip() == "5"
    assert fields["segments"].strip().startswith("1 (")


def test_dump_text(run, filled_log):
    result = run("dump", filled_log)
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["0", "1", "2", "3", "4"]
    assert lines[0].endswith("\t-\talpha")
    assert lines[3].split("\t")[1:] == ["2001-09-09T01:46:40.123456789Z", "k", "delta"]
    assert lines[4].endswith("\t\\xff\\xfebin")


def test_dump_range_and_hex(run, filled_log):
    result = run("dump", filled_log, "--from", 1, "--count", 2, "--format", "hex")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert [line.split("\t")[3] for line in lines] == [b"beta".hex(), b"gamma".hex()]
    assert run("dump", filled_log, "--from", 5).output == ""
    assert_one_line_error(run("dump", filled_log, "--from", 6))


def test_dump_json(run, filled_log):
    result = run("dump", filled_log, "--format", "json", "--from", 3)
    assert result.exit_code == 0
    a, b = [json.loads(line) for line in result.output.splitlines()]
    assert a == {"offset": 3, "timestamp": 1_000_000_000_123_456_789, "key": "k",
                 "key_encoding": "utf-8", "value": "delta", "value_encoding": "utf-8"}
    assert b["key"] is None and b["value_encoding"] == "base64"
    assert b["value"] == "//5iaW4="           # base64 of b"\xff\xfebin"


def test_tail(run, filled_log):
    result = run("tail", filled_log, "-n", 2)
    assert result.exit_code == 0
    assert [line.split("\t")[0] for line in result.output.splitlines()] == ["3", "4"]
    assert len(run("tail", filled_log).output.splitlines()) == 5
    assert run("tail", filled_log, "-n", 0).output == ""


def test_tail_follow_sees_appends(run, filled_log):
    with tidelog.open(filled_log) as log:
        later = threading.Timer(0.2, lambda: log.append(b"late"))
        later.start()
        result = run("tail", filled_log, "-n", 1, "-f", "--timeout", 1)
        later.join()
    assert result.exit_code == 0
    assert [line.split("\t")[-1] for line in result.output.splitlines()] == ["\\xff\\xfebin", "late"]


def test_append_stdin(run, tmp_path):
    path = tmp_path / "new"
    result = run("append", path, input=b"one\ntwo\r\n\nlast-without-newline")
    assert result.exit_code == 0
    assert "4 records" in result.output and "first offset 0" in result.output
    with tidelog.open(path, readonly=True) as log:
        assert [bytes(r) for r in log.cursor()] == [b"one", b"two\r", b"", b"last-without-newline"]
    result = run("append", path, "--key", "user1", input=b"five\n")
    assert "1 records" in result.output and "first offset 4" in result.output
    with tidelog.open(path, readonly=True) as log:
        assert log.read(4).key == b"user1"


def test_append_files(run, tmp_path, filled_log):
    (tmp_path / "a.bin").write_bytes(b"line1\nline2\n")
    (tmp_path / "b.bin").write_bytes(b"")
    result = run("append", filled_log, tmp_path / "a.bin", tmp_path / "b.bin")
    assert result.exit_code == 0
    assert "2 records" in result.output and "first offset 5" in result.output
    with tidelog.open(filled_log, readonly=True) as log:
        assert bytes(log.read(5)) == b"line1\nline2\n" and bytes(log.read(6)) == b""


def test_append_errors(run, tmp_path, filled_log):
    assert_one_line_error(run("append", filled_log, tmp_path / "a.bin", tmp_path / "nope"))
    with tidelog.open(filled_log, readonly=True) as log:
        assert log.end_offset == 5                    # a missing file appends nothing
    with tidelog.open(filled_log):                      # another writer holds the lock
        result = run("append", filled_log, input=b"x\n")
    assert_one_line_error(result)
    assert "writer" in result.stderr
    (tmp_path / "file").write_text("x")
    assert_one_line_error(run("append", tmp_path / "file", input=b"x\n"))
    assert_one_line_error(run("append", filled_log, tmp_path))   # a directory is not a file


def test_verify_clean(run, filled_log):
    result = run("verify", filled_log)
    assert result.exit_code == 0
    assert "5 records" in result.output


def test_verify_damaged(run, filled_log):
    with tidelog.open(filled_log, readonly=True) as log:
        seg = log.segments()[0][1]
    # docs/FORMAT.md (v2): 64-byte segment header, then the batch as one multi-form frame of
    # offsets 0..2 (header, value offsets, vpad to 64-align the values: "alphabetagamma" at 128)
    with open(seg, "r+b") as f:
        f.seek(133)
        assert f.read(4) == b"beta"
        f.seek(133)
        f.write(b"B")
    result = run("verify", filled_log)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert seg in lines[0] and "position=64" in lines[0] and "offset=0" in lines[0]
    assert_one_line_error(run("dump", filled_log))      # other readers stop at the damage too


def test_verify_missing_segment(run, filled_log):
    with tidelog.open(filled_log, readonly=True) as log:
        seg = log.segments()[0][1]
    os.remove(seg)
    result = run("verify", filled_log)
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1 and "offset=0" in result.output


def test_lag_without_subscribers(run, filled_log):
    result = run("lag", filled_log)
    assert result.exit_code == 0
    assert "no subscribers" in result.output


def test_lag_table(run, filled_log):
    # more in test_cli_subscribers.py
    with tidelog.open(filled_log, readonly=True) as log:
        log.set_position("indexer", 5)
        log.set_position("mailer", 2)
    result = run("lag", filled_log)
    assert result.exit_code == 0
    rows = [line.replace("│", " ").split() for line in result.output.splitlines()]
    assert ["indexer", "5", "0", "0", "B"] == rows[4][:5] and rows[4][-1] == "leads"
    assert ["mailer", "2", "3", "15", "B"] == rows[5][:5] and rows[5][-1].endswith("Z)")
    assert "subscribers:    2" in run("info", filled_log).output.splitlines()


def test_demo_with_path(run, tmp_path):
    path = tmp_path / "demo"
    result = run("demo", path, "--events", 20_000, "--singles", 2_000)
    assert result.exit_code == 0, result.output
    assert "verified: 20,000 records" in result.output
    assert "records/s" in result.output
    # the story: a live subscriber, a replayer killed and resumed exactly, determinism checks
    assert "exactly once:" in result.output
    assert "determinism: ClickCounter: deterministic" in result.output
    assert "FlakyCounter (reads state outside the log): NOT deterministic" in result.output
    with tidelog.open(path, readonly=True) as log:
        assert len(log) == 22_000 + 20_000 // 4          # + the wave the live subscriber follows
        assert set(log.positions()) == {"indexer", "mailer", "counts"}
        assert log.lag()["indexer"] == 0 and log.lag()["mailer"] > 0
        first = json.loads(bytes(log.read(0)))
        assert first["seq"] == 0 and log.read(0).key == f"u{first['user'][1:]}".encode()
    assert run("verify", path).exit_code == 0
    again = run("demo", path, "--events", 10_000, "--singles", 0)   # appends to an existing log
    assert again.exit_code == 0 and "verified: 10,000 records" in again.output


def test_demo_temporary_directory_is_removed(run):
    result = run("demo", "--events", 10_000, "--singles", 100)
    assert result.exit_code == 0, result.output
    line = [l for l in result.output.splitlines() if l.startswith("log: ")][0]
    assert line.endswith("(temporary, removed)")
    assert not os.path.exists(line[len("log: "):].rsplit(" (", 1)[0])


def test_demo_locked_path(run, filled_log):
    with tidelog.open(filled_log):
        assert_one_line_error(run("demo", filled_log, "--events", 10))


def test_bench(run):
    result = run("bench", "--records", 20_000)
    assert result.exit_code == 0, result.output
    for phase in ("append (1 per call)", "append_batch", "scan via read_batch"):
        assert phase in result.output


# ---------------------------------------------------------------------- real processes

def tidelog_cmd(*args):
    return [sys.executable, "-m", "tidelog", *map(str, args)]


def test_module_entry_point(tmp_path, filled_log):
    ok = subprocess.run(tidelog_cmd("dump", filled_log, "--count", 1), capture_output=True, timeout=60)
    assert ok.returncode == 0
    assert ok.stdout.decode().endswith("\talpha\n")
    bad = subprocess.run(tidelog_cmd("info", tmp_path / "missing"), capture_output=True, timeout=60)
    assert bad.returncode == 2
    assert bad.stdout == b""
    assert bad.stderr.decode().count("\n") == 1
    assert bad.stderr.startswith(b"tidelog: error: ") and b"Traceback" not in bad.stderr


def test_append_via_subprocess_stdin(tmp_path):
    path = tmp_path / "log"
    r = subprocess.run(tidelog_cmd("append", path), input=b"a\nb\n", capture_output=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    with tidelog.open(path, readonly=True) as log:
        assert [bytes(rec) for rec in log.cursor()] == [b"a", b"b"]


def test_tail_follow_ctrl_c_exits_0(filled_log):
    proc = subprocess.Popen(tidelog_cmd("tail", filled_log, "-n", 1, "-f"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline().endswith(b"\t\\xff\\xfebin\n")
        with tidelog.open(filled_log) as log:
            log.append(b"followed")
        assert proc.stdout.readline().endswith(b"\tfollowed\n")
        time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert b"Traceback" not in err


def test_verify_reports_index_damage_and_repair_rebuilds(tmp_path):
    import os
    from click.testing import CliRunner
    from tidelog.cli import cli
    path = str(tmp_path / "log")
    with tidelog.open(path, segment_bytes=4096, durability="none") as log:
        for i in range(200):
            log.append(b"r%04d" % i + b"." * 90)
        bases = [b for b, _ in log.segments()]
    os.unlink(os.path.join(path, "%020d.idx" % bases[1]))
    r = CliRunner().invoke(cli, ["verify", path])
    assert r.exit_code == 0 and "index" in r.output and "1 index file" in r.output
    r = CliRunner().invoke(cli, ["repair", path])
    assert r.exit_code == 0 and "rebuilt the index files of 1 segment" in r.output, r.output
    r = CliRunner().invoke(cli, ["verify", path])
    assert r.exit_code == 0 and "index" not in r.output.replace("index files", "")


def test_repair_truncate(tmp_path):
    import os
    from click.testing import CliRunner
    from tidelog.cli import cli
    path = str(tmp_path / "log")
    with tidelog.open(path, segment_bytes=1 << 16, durability="none") as log:
        for i in range(100):
            log.append(b"v%04d" % i)
    seg = os.path.join(path, "%020d.seg" % 0)
    with open(seg, "r+b") as f:
        f.seek(64 + 40 * 60 + 33)                 # a byte of record 60
        f.write(b"\xff")
    assert CliRunner().invoke(cli, ["verify", path]).exit_code == 1
    r = CliRunner().invoke(cli, ["repair", "--truncate", path])
    assert r.exit_code == 0 and "truncated at offset 60" in r.output, r.output
    assert CliRunner().invoke(cli, ["verify", path]).exit_code == 0
    r = CliRunner().invoke(cli, ["repair", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_repair_salvage_copies_everything_readable(tmp_path):
    import os
    import struct
    from click.testing import CliRunner
    from tidelog.cli import cli
    path, out = str(tmp_path / "log"), str(tmp_path / "salvaged")
    with tidelog.open(path, segment_bytes=4096, durability="none") as log:
        for i in range(200):
            log.append(b"v%04d" % i + b"." * 60, key=b"k%d" % i, timestamp=1000 + i)
        bases = [b for b, _ in log.segments()]
    seg = os.path.join(path, "%020d.seg" % bases[1])
    with open(seg, "rb") as f:
        data = f.read()
    pos = [64]
    for _ in range(5):                                # frame positions, walking the file
        pos.append(pos[-1] + (struct.unpack_from("<I", data, pos[-1])[0] + 7) // 8 * 8)
    with open(seg, "r+b") as f:                       # damage the 3rd record of segment 1
        f.seek(pos[2] + 40)
        f.write(b"\xff")
        f.seek(pos[4])                                # and garble the 5th one's length
        f.write(struct.pack("<I", 7))
    os.unlink(os.path.join(path, "%020d.seg" % bases[3]))   # and lose a whole segment
    r = CliRunner().invoke(cli, ["repair", "--salvage-to", out, path])
    assert r.exit_code == 0, r.output
    lost = set([bases[1] + 2, bases[1] + 4]) | set(range(bases[3], bases[4]))
    keep = [i for i in range(200) if i not in lost]
    assert f"salvaged {len(keep)} records" in r.output
    with tidelog.open(out, readonly=True) as log:
        recs = list(log.cursor())
    assert [bytes(r.value)[:5] for r in recs] == [b"v%04d" % i for i in keep]
    assert [r.key for r in recs] == [b"k%d" % i for i in keep]
    assert [r.timestamp for r in recs] == [1000 + i for i in keep]
    assert f"lost offsets [{bases[1] + 2}, {bases[1] + 3})" in r.output
    r = CliRunner().invoke(cli, ["repair", "--salvage-to", out, path])
    assert r.exit_code == 2                           # refuses to write into a non-empty dir
