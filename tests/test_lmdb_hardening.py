"""LMDB under hostile conditions (issue 11, items 11-15 and 21): fork() with live transactions,
a Replayer carried into a fork child, logs in read-only directories read by a non-root user,
address-space limits and maps that grow, full maps and full disks, a cursor commit from inside a
view's apply(), verify_determinism storing nothing."""

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest

import tidelog
from tidelog import lmdbenv
from tidelog.replay import read_view, replayers

NOBODY = 65534

# machines, also written (as text) into the subprocess scripts below
MACHINES = '''
import struct
import tidelog

class Summer:
    def __init__(self):
        self.n = 0
        self.total = 0
    def apply(self, rec):
        self.n += 1
        self.total += rec.offset
    def snapshot(self):
        return struct.pack("<qq", self.n, self.total)
    def restore(self, snap):
        self.n, self.total = struct.unpack("<qq", snap)

class Big(Summer):
    """A snapshot of SIZE bytes (8 MiB by default: well past a new map's 1 MiB)."""
    SIZE = 8 << 20
    def snapshot(self):
        return struct.pack("<qq", self.n, self.total) * (self.SIZE // 16)
    def restore(self, snap):
        self.n, self.total = struct.unpack_from("<qq", snap)

class View(tidelog.LmdbView):
    """key k<offset> -> the record's value, padded to PAD bytes."""
    PAD = 0
    def apply(self, rec, txn):
        txn.put(b"k%07d" % rec.offset, bytes(rec.value).ljust(self.PAD, b"."))
'''
exec(MACHINES)


class WideView(View):                       # noqa: F821 (defined by MACHINES)
    PAD = 300


def fill(log, n, size=8):
    for i in range(n):
        log.append(i.to_bytes(8, "little").ljust(size, b"x"))
    log.sync()


def run_py(code, *args, timeout=120, **kw):
    return subprocess.run([sys.executable, "-c", MACHINES + textwrap.dedent(code), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, **kw)


def child(fn):
    """Run fn() in a fork() child; (exit code, what it wrote) -- fn returns a str."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(r)
            out = fn()
        except BaseException as exc:     # report anything, never run the parent's code
            out, code = f"{type(exc).__module__}.{type(exc).__name__}: {exc}", 1
        try:
            os.write(w, out.encode())
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out


# ------------------------------------------------------------------ 11, 12: fork()

def test_fork_leaves_the_parents_read_transaction_protected(tmp_path):
    """A fork child must not clear the parent's reader slot: the parent's read transaction keeps
    its snapshot while another process rewrites the view many times (page reuse)."""
    path = str(tmp_path / "log")
    log = tidelog.open(path, segment_bytes=1 << 20)
    fill(log, 3000)
    tidelog.Replayer(log, View(), name="v").run()           # noqa: F821
    with read_view(log, "v") as txn:
        before = {bytes(k): bytes(v) for k, v in txn.cursor()}
        assert len(before) == 3000
        code, out = child(lambda: "ok")
        assert (code, out) == (0, "ok")
        proc = run_py('''
            import sys
            from tidelog.replay import delete_replayer
            class Tagged(tidelog.LmdbView):
                def __init__(self, tag):
                    self.tag = tag
                def apply(self, rec, txn):
                    txn.put(b"k%07d" % rec.offset, b"%s-%d" % (self.tag, rec.offset))
            log = tidelog.open(sys.argv[1], readonly=True)
            for round in range(6):
                delete_replayer(log, "v")
                tidelog.Replayer(log, Tagged(b"r%d" % round), name="v").run()
            ''', path)
        assert proc.returncode == 0, proc.stderr
        after = {bytes(k): bytes(v) for k, v in txn.cursor()}
    changed = sum(after.get(k) != v for k, v in before.items())
    assert changed == 0, f"{changed} of {len(before)} values changed under a read transaction"
    with read_view(log, "v") as txn:
        assert bytes(txn.get(b"k0000007")) == b"r5-7"               # the writer did write
    log.close()


def test_replayer_made_before_fork_works_in_the_child(tmp_path):
    """Replayers of a reader Log made before fork() work in the child (a reader is inherited
    whole); on an inherited writer they get LogForkedError, a TidelogError naming fork."""
    log = tidelog.open(str(tmp_path / "log"), segment_bytes=1 << 20)
    fill(log, 1000)
    reader = tidelog.open(str(tmp_path / "log"), readonly=True)
    snap = tidelog.Replayer(reader, Summer(), name="s", checkpoint_every=100)   # noqa: F821
    view = tidelog.Replayer(reader, View(), name="v", checkpoint_every=100)     # noqa: F821
    on_writer = tidelog.Replayer(log, Summer(), name="w")                      # noqa: F821
    assert snap.run(until=500) == 500 and view.run(until=400) == 400

    def in_child():
        try:
            on_writer.run()
            return "the inherited writer's Replayer ran"
        except tidelog.LogForkedError as exc:
            assert "fork" in str(exc)
        a, b = snap.run(), view.run()
        cur = reader.cursor(name="c")
        cur.commit(700)
        return json.dumps([a, b, reader.positions(), sorted(replayers(reader))])

    code, out = child(in_child)
    assert code == 0, out
    reader.close()
    assert json.loads(out) == [1000, 1000, {"c": 700, "s": 1000, "v": 1000}, ["s", "v"]]
    # the parent, untouched, sees what the child committed
    assert log.positions() == {"c": 700, "s": 1000, "v": 1000}
    with read_view(log, "v") as txn:
        assert sum(1 for _ in txn.cursor()) == 1000
    again = tidelog.Replayer(log, Summer(), name="s")                   # noqa: F821
    assert again.position == 1000 and again.machine.n == 1000
    log.close()


def test_fork_during_a_transaction_gives_the_child_a_clear_error(tmp_path):
    """The parent holds a read transaction at fork(): the child must not close (abort) it, so it
    cannot open the store again; using positions there is a TidelogError, not an lmdb one."""
    log = tidelog.open(str(tmp_path / "log"), segment_bytes=1 << 20)
    fill(log, 100)
    rep = tidelog.Replayer(log, View(), name="v")                       # noqa: F821
    rep.run(until=50)
    with read_view(log, "v") as txn:
        def in_child():
            try:
                rep.run()
            except tidelog.TidelogError as exc:
                assert "fork" in str(exc), exc
                return "refused"
            return "ran"
        code, out = child(in_child)
        assert (code, out) == (0, "refused")
        assert txn.get(b"k0000049") is not None
    assert rep.run() == 100                 # the parent goes on
    log.close()


# ------------------------------------------------------------------ 13, 21: read-only directories

AS_NOBODY = '''
import contextlib, importlib, io, json, os, pkgutil, sys, time
import lmdb, click, rich
import tidelog, tidelog.cli, tidelog.replay
for _m in pkgutil.iter_modules(rich.__path__):   # rich imports some modules only on first use
    try:
        if _m.name != "__main__":
            importlib.import_module("rich." + _m.name)
    except ImportError:                 # (its Windows-only modules)
        pass
path = sys.argv[1]
if os.geteuid() == 0:                   # drop to nobody (root ignores permissions)
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
if os.geteuid() == 0:
    sys.exit("could not drop privileges: the test would prove nothing")
sys.path[:] = []                        # as in CI, whose venv nobody cannot read
'''

RO_SCRIPT = '''
from tidelog.replay import read_view, replayers
if os.access(path, os.W_OK):
    sys.exit("nobody may write the log: the test would prove nothing")
out = {}
log = tidelog.open(path, readonly=True)
out["positions"] = log.positions()
out["lag"] = log.lag()
out["position_info"] = {k: v[0] for k, v in log.position_info().items()}
out["cursor"] = log.cursor(name="c").position
out["replayers"] = sorted(replayers(log))
with read_view(log, "view") as txn:
    out["view"] = bytes(txn.get(b"k0000005")).decode()
try:
    log.set_position("c", 3)
    out["set"] = "allowed"
except tidelog.TidelogError as exc:
    out["set"] = "refused: " + str(exc)
out["verify"] = bool(tidelog.verify_determinism(log, View, checkpoint_every=16))
out["verify_snap"] = bool(tidelog.verify_determinism(log, Summer, checkpoint_every=16))
for cmd in ("info", "lag", "positions"):
    buf, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
        try:
            tidelog.cli.main([cmd, path])
            code = 0
        except SystemExit as e:
            code = e.code
    out["cli_" + cmd] = [code, buf.getvalue(), err.getvalue()]
print(json.dumps(out))
'''


@pytest.fixture
def ro_dir():
    """A world-traversable directory (tmp_path under /tmp/pytest-of-root is 0700)."""
    d = tempfile.mkdtemp(dir="/tmp", prefix="tidelog-ro-")
    os.chmod(d, 0o755)
    yield d
    for root, dirs, _ in os.walk(d):
        for x in dirs:
            os.chmod(os.path.join(root, x), 0o755)
    shutil.rmtree(d)


def make_readonly(path, lock_writable):
    for root, dirs, files in os.walk(path):
        for f in files:
            os.chmod(os.path.join(root, f), 0o444)
        os.chmod(root, 0o555)
    if lock_writable:
        os.chmod(os.path.join(path, "positions", "lock.mdb"), 0o666)


def as_nobody(code, *args):
    """Run code as a user without write access: as root, it imports first, then drops to
    nobody (so that CI's private venv need not be readable); else it runs as this user."""
    return run_py(AS_NOBODY + textwrap.dedent(code), *args)


@pytest.mark.parametrize("lock_writable", [False, True], ids=["lock-readonly", "lock-writable"])
def test_positions_of_a_readonly_log_are_readable(ro_dir, lock_writable):
    path = os.path.join(ro_dir, "log")
    log = tidelog.open(path, segment_bytes=1 << 20)
    fill(log, 100)
    log.cursor(name="c").commit(50)
    tidelog.Replayer(log, View(), name="view").run()                    # noqa: F821
    tidelog.Replayer(log, Summer(), name="snap").run()                  # noqa: F821
    log.close()
    make_readonly(path, lock_writable)
    before = sorted(os.listdir(os.path.join(path, "positions")))
    proc = as_nobody(RO_SCRIPT, path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    want = {"c": 50, "snap": 100, "view": 100}
    assert out["positions"] == out["position_info"] == want
    assert out["lag"] == {"c": 50, "snap": 0, "view": 0}
    assert out["cursor"] == 50 and out["replayers"] == ["snap", "view"]
    assert out["view"].startswith("\x05")
    assert out["set"].startswith("refused") and "permission denied" in out["set"]
    assert out["verify"] and out["verify_snap"]          # 21: stores nothing, needs no write
    code, text, err = out["cli_info"]
    assert code == 0 and "subscribers:    3" in text and "c:" in text, (text, err)
    code, text, err = out["cli_lag"]
    assert code == 0 and "snap" in text and "view" in text, (text, err)
    code, text, err = out["cli_positions"]
    assert code == 0 and "c\t50\t50\t" in text, (text, err)
    assert sorted(os.listdir(os.path.join(path, "positions"))) == before


def test_info_shows_what_it_can_when_positions_are_unreadable(ro_dir):
    path = os.path.join(ro_dir, "log")
    log = tidelog.open(path, segment_bytes=1 << 20)
    fill(log, 10)
    log.cursor(name="c").commit(5)
    log.close()
    make_readonly(path, False)
    os.chmod(os.path.join(path, "positions"), 0o500)          # not even readable by others
    proc = as_nobody('''
        try:
            tidelog.cli.main(["info", path])
        except SystemExit as e:
            sys.exit(e.code)
        ''', path)
    assert proc.returncode == 0, proc.stderr
    assert "end_offset:     10" in proc.stdout
    assert "subscribers:    unknown" in proc.stdout and "permission denied" in proc.stdout


def test_verify_determinism_of_a_view_stores_nothing(tmp_path):
    log = tidelog.open(str(tmp_path / "log"), segment_bytes=1 << 20)
    fill(log, 300)
    assert tidelog.verify_determinism(log, View, checkpoint_every=64)      # noqa: F821
    assert not os.path.exists(os.path.join(log.path, "positions"))
    before = set(os.listdir(tempfile.gettempdir()))
    report = tidelog.verify_determinism(log, WideView, checkpoint_every=1000)
    assert report and report.checkpoints == 1
    assert not {x for x in set(os.listdir(tempfile.gettempdir())) - before
                if x.startswith("tidelog-view-")}                  # scratch stores deleted
    assert not os.path.exists(os.path.join(log.path, "positions"))
    log.close()


# ------------------------------------------------------------------ 14: address space, growing

def test_many_logs_with_positions_under_an_address_space_limit(tmp_path):
    """64 GiB of map per positions store made the 2047th log fail; here, 300 logs in 6 GiB of
    address space (and `info` under `ulimit -v 16000000`)."""
    proc = run_py('''
        import os, resource, sys
        def vm_size():
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmSize:"):
                        return int(line.split()[1]) * 1024
        limit = vm_size() + (6 << 30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        logs = []
        for i in range(300):
            log = tidelog.open(os.path.join(sys.argv[1], "l%d" % i), segment_bytes=1 << 16,
                               durability="none")
            log.append(b"x")
            log.sync()
            log.set_position("c", 1)
            logs.append(log)
        assert all(log.positions() == {"c": 1} for log in logs)
        print("ok", len(logs))
        ''', tmp_path)
    assert proc.returncode == 0 and proc.stdout.split() == ["ok", "300"], proc.stderr[-2000:]

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (16_000_000 * 1024,) * 2)

    info = subprocess.run([sys.executable, "-m", "tidelog", "info", str(tmp_path / "l7")],
                          capture_output=True, text=True, preexec_fn=limit, timeout=60)
    assert info.returncode == 0, info.stderr
    assert "subscribers:    1" in info.stdout and "c:" in info.stdout


def test_stores_grow_past_their_initial_map(tmp_path):
    """A 8 MiB snapshot, a ~12 MB view written in one checkpoint, and a few thousand positions:
    each fills a 1 MiB map several times over; the map grows and everything is stored."""
    log = tidelog.open(str(tmp_path / "log"), segment_bytes=4 << 20)
    fill(log, 30_000)
    store = log._positions()
    assert store.shared.map_size == lmdbenv.INITIAL_MAP
    big = tidelog.Replayer(log, Big(), name="big", checkpoint_every=10_000)   # noqa: F821
    assert big.run() == 30_000
    view = tidelog.Replayer(log, WideView(), name="view", checkpoint_every=1 << 30)
    assert view.run() == 30_000
    names = [f"cursor-{i:05d}-" + "n" * 300 for i in range(3000)]
    for i, name in enumerate(names):     # one transaction each would take long: share them
        store.write(lambda txn, name=name, i=i: store.put(name, i, txn))
    grown = store.shared.map_size
    assert 16 << 20 <= grown <= 1 << 30
    log.close()

    log = tidelog.open(str(tmp_path / "log"))
    again = tidelog.Replayer(log, Big(), name="big")                        # noqa: F821
    assert again.machine.n == 30_000 and again.machine.total == sum(range(30_000))
    with read_view(log, "view") as txn:
        assert sum(1 for _ in txn.cursor()) == 30_000
        assert bytes(txn.get(b"k0029999")).rstrip(b".") == (29_999).to_bytes(8, "little")
    positions = log.positions()
    assert len(positions) == 3002 and positions[names[-1]] == 2999
    log.close()


def test_a_map_grown_by_another_process_is_adopted(tmp_path):
    path = str(tmp_path / "log")
    log = tidelog.open(path, segment_bytes=1 << 20)
    fill(log, 100)
    log.cursor(name="c").commit(10)
    assert log.positions() == {"c": 10}          # this process maps the store small
    proc = run_py('''
        import sys
        log = tidelog.open(sys.argv[1], readonly=True)
        tidelog.Replayer(log, Big(), name="big").run()
        ''', path)
    assert proc.returncode == 0, proc.stderr
    assert log.positions() == {"big": 100, "c": 10}
    rep = tidelog.Replayer(log, Big(), name="big")                          # noqa: F821
    assert rep.position == 100 and rep.machine.n == 100
    log.set_position("c", 20)
    log.close()


# ------------------------------------------------------------------ 15: errors, translated

def test_a_full_map_is_a_tidelog_error(tmp_path, monkeypatch):
    monkeypatch.setattr(lmdbenv, "MAX_MAP", 4 << 20)
    log = tidelog.open(str(tmp_path / "log"), segment_bytes=1 << 20)
    fill(log, 100)
    rep = tidelog.Replayer(log, Big(), name="big")                          # noqa: F821
    with pytest.raises(lmdbenv.StoreFullError, match="full.*delete subscribers"):
        rep.run()
    view = tidelog.Replayer(log, WideView(), name="v")
    fill(log, 20_000)
    with pytest.raises(tidelog.TidelogError, match="full"):
        view.run()
    log.set_position("c", 5)                     # the store still works
    assert log.positions()["c"] == 5
    log.close()


class CommitsFromApply(tidelog.LmdbView):
    def __init__(self, log):
        self.log = log

    def apply(self, rec, txn):
        txn.put(b"k", b"v")
        if rec.offset == 5:
            self.log.cursor(name="side").commit(rec.offset)


def test_cursor_commit_from_a_views_apply_is_refused_clearly(tmp_path):
    log = tidelog.open(str(tmp_path / "log"), segment_bytes=1 << 20)
    fill(log, 10)
    rep = tidelog.Replayer(log, CommitsFromApply(log), name="v")
    with pytest.raises(tidelog.TidelogError, match="apply.*deadlock|deadlock.*apply"):
        rep.run()
    log.cursor(name="side").commit(5)           # outside apply: fine
    assert log.positions() == {"side": 5}
    log.close()


FULL_DISK = '''
import errno, os, sys
mnt = sys.argv[1]
path = os.path.join(mnt, "log")
log = tidelog.open(path, segment_bytes=1 << 16)
for i in range(200):
    log.append(b"v%d" % i)
log.sync()
log.set_position("c", 1)
Big.SIZE = 1 << 20
rep = tidelog.Replayer(log, Big(), name="big", checkpoint_every=50)
rep.run(until=50)
fd = os.open(os.path.join(mnt, "filler"), os.O_WRONLY | os.O_CREAT)    # fill the disk
try:
    while True:
        os.write(fd, b"\\0" * 4096)
except OSError as e:
    assert e.errno == errno.ENOSPC, e
os.close(fd)
out = []
for what, fn in (("position", lambda: [log.set_position("n%04d" % i, 2) for i in range(2000)]),
                 ("checkpoint", lambda: rep.run())):
    try:
        fn()
        out.append(what + ": no error")
    except tidelog.TidelogError as exc:
        out.append("%s: %s %s %s" % (what, type(exc).__name__, isinstance(exc, OSError), exc))
    except Exception as exc:
        out.append("%s: FOREIGN %s.%s %s" % (what, type(exc).__module__, type(exc).__name__, exc))
os.unlink(os.path.join(mnt, "filler"))
log.set_position("c", 3)
out.append("after: %s" % log.positions()["c"])
print("\\n".join(out))
'''


def test_full_disk_is_a_tidelog_error(tmp_path):
    """A real full disk: a small tmpfs in a private mount namespace (`unshare -m` as root,
    `unshare -rm` otherwise). Fails, not skips, if that cannot be made here."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = tmp_path / "full.py"
    script.write_text(MACHINES + FULL_DISK)
    unshare = shutil.which("unshare")
    assert unshare, "unshare(1) is needed to make a small filesystem for this test"
    flags = "-m" if os.geteuid() == 0 else "-rm"
    proc = subprocess.run(
        [unshare, flags, "--propagation", "private", "sh", "-c",
         'mount -t tmpfs -o size=3m tmpfs "$1" && exec "$2" "$3" "$1"', "sh",
         str(mnt), sys.executable, str(script)],
        capture_output=True, text=True, timeout=120)
    assert "mount" not in proc.stderr.split(":")[0], \
        f"cannot mount a small tmpfs here: {proc.stderr}"
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 3, proc.stdout
    for line in lines[:2]:
        assert "FOREIGN" not in line and "no error" not in line, line
        assert "LogFullError True" in line and "no space left" in line, line
        assert "free space" in line
    assert lines[2] == "after: 3"


def test_a_lockless_reader_never_sees_a_torn_snapshot(ro_dir):
    """A reader that may not write LMDB's lock file reads without a reader slot; while a writer
    commits all 200 positions at once, again and again, every read must see one commit."""
    path = os.path.join(ro_dir, "log")
    log = tidelog.open(path, segment_bytes=1 << 20)
    fill(log, 100)
    names = [f"sub-{i:03d}-" + "x" * 100 for i in range(200)]
    store = log._positions()
    store.write(lambda txn: [store.put(n, 0, txn) for n in names])
    log.close()
    make_readonly(path, False)
    os.chmod(path, 0o755)
    os.chmod(os.path.join(path, "positions"), 0o755)
    for f in ("data.mdb", "lock.mdb"):
        os.chmod(os.path.join(path, "positions", f), 0o644)      # root writes, nobody reads
    reader = subprocess.Popen([sys.executable, "-c", AS_NOBODY + textwrap.dedent('''
        log = tidelog.open(path, readonly=True)
        assert not log._positions().shared.locked
        reads = torn = 0
        seen = set()
        print("ready", flush=True)
        while not os.path.exists(os.path.join("/tmp", sys.argv[2])):
            p = log.positions()
            reads += 1
            torn += len(set(p.values())) != 1
            seen |= set(p.values())
        print(reads, torn, len(seen))
        '''), path, os.path.basename(ro_dir) + ".done"], stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "ready"
        log = tidelog.open(path, readonly=True)
        store = log._positions()
        for i in range(1, 300):
            store.write(lambda txn, i=i: [store.put(n, i, txn) for n in names])
        log.close()
    finally:
        open(ro_dir + ".done", "w").close()
    try:
        out, _ = reader.communicate(timeout=60)
    finally:
        os.unlink(ro_dir + ".done")
    assert reader.returncode == 0, out
    reads, torn, seen = map(int, out.split())
    assert torn == 0 and reads > 10 and seen > 10, (reads, torn, seen)
