"""A hostile user's reproducers against issue 11's fixes (LMDB environments, the replay loop, the
CLI's one-line errors): each test failed before its fix."""

import os
import signal
import sys
import textwrap

import pytest

import tidelog
from conftest import run_python


# --------------------------------------------------------------------- fork vs. the store lock

def test_fork_while_another_thread_opens_the_positions_store(tmp_path):
    """A child forked while another thread of the parent was opening the log's positions store
    (Log's store lock held) must not wait forever for that lock: it uses the store, or gets a
    TidelogError when a transaction was open at the fork."""
    path = str(tmp_path / "log")
    with tidelog.open(path) as log:
        log.append(b"x")
        log.sync()
        log.set_position("a", 1)
    proc = run_python(r"""
        import os, sys, threading, time, faulthandler
        import tidelog
        path = sys.argv[1]
        with tidelog.open(path, readonly=True) as warm:
            warm.position_info()    # py-lmdb imports a module on its first open: a fork while
                                    # another thread imports leaves the child that import's
                                    # lock held (CPython's, not tidelog's)
        for i in range(20):
            log = tidelog.open(path, readonly=True)
            t = threading.Thread(target=log.position_info)
            t.start()
            time.sleep(0.0002 * (i % 10))
            pid = os.fork()
            if pid == 0:
                faulthandler.dump_traceback_later(10, exit=True)     # a hang: exit 1
                try:
                    assert log.position_info()["a"][0] == 1
                    os._exit(0)
                except tidelog.TidelogError:
                    os._exit(0)
                except BaseException:
                    os._exit(2)
            _, status = os.waitpid(pid, 0)
            t.join()
            log.close()
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (i, status)
        print("ok")
    """, path, timeout=240)
    assert proc.stdout.strip() == "ok"


# --------------------------------------------------------------------- CLI: every exception

MACHINES = '''
class Boom(BaseException):
    """Not an Exception: a machine may raise anything."""

class Base:
    def apply(self, rec): pass
    def snapshot(self): return b""
    def restore(self, snap): pass

class RaisesBase(Base):
    def apply(self, rec): raise Boom("boom")

class RaisesGeneratorExit(Base):
    def apply(self, rec): raise GeneratorExit

class Unprintable(Exception):
    def __str__(self): raise ValueError("no str for you")

class RaisesUnprintable(Base):
    def apply(self, rec): raise Unprintable()
'''


@pytest.fixture
def attack_machines(tmp_path, monkeypatch):
    (tmp_path / "attack_machines.py").write_text(MACHINES)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("attack_machines", None)
    yield "attack_machines"
    sys.modules.pop("attack_machines", None)


@pytest.fixture
def small_log(tmp_path):
    path = str(tmp_path / "log")
    with tidelog.open(path) as log:
        log.append_batch([b"x"] * 10)
    return path


@pytest.mark.parametrize("machine, says", [("RaisesBase", "Boom: boom"),
                                           ("RaisesGeneratorExit", "GeneratorExit"),
                                           ("RaisesUnprintable", "Unprintable")])
def test_replay_any_machine_exception_is_one_line_exit_2(run, small_log, attack_machines,
                                                         machine, says):
    r = run("replay", small_log, "--machine", f"{attack_machines}:{machine}")
    assert r.exit_code == 2, (r.exit_code, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tidelog: error: "), r.stderr
    assert f"{machine}.apply() raised at record offset 0" in lines[0]
    assert says in lines[0]


# --------------------------------------------------------------------- LMDB: named database limit

class _Counter(tidelog.LmdbView):
    def apply(self, rec, txn):
        txn.put(b"k", b"%d" % rec.offset)


def test_too_many_views_says_what_to_do_in_tidelog_terms(tmp_path):
    """Each LmdbView replayer is a named database of the positions store, whose number is
    capped: the error must say so in tidelog's terms (not py-lmdb's advice to pass a larger
    Environment(max_dbs=), which a user cannot), and the store must stay usable."""
    with tidelog.open(str(tmp_path / "log"), durability="none") as log:
        log.append_batch([b"x"] * 3)
        log.sync()
        with pytest.raises(tidelog.TidelogError) as info:
            for i in range(200):
                with tidelog.Replayer(log, _Counter(), name=f"view{i}") as rep:
                    rep.run()
        msg = str(info.value)
        assert "Environment(max_dbs" not in msg and "delete_replayer" in msg, msg
        from tidelog.replay import delete_replayer
        assert delete_replayer(log, "view0")
        with tidelog.Replayer(log, _Counter(), name="another") as rep:    # room again
            assert rep.run() == 3
        log.set_position("after", 2)
        assert log.position_info()["after"][0] == 2


# --------------------------------------------------------------------- snapshots that are not state

class _ObjectArraySnapshot:
    """snapshot() returns a numpy object array: its buffer holds pointers, not the state."""
    def apply(self, rec):
        pass

    def snapshot(self):
        import numpy as np
        return np.array([object(), object()], dtype=object)

    def restore(self, snap):
        pass


def test_a_snapshot_of_python_objects_is_refused(tmp_path):
    with tidelog.open(str(tmp_path / "log"), durability="none") as log:
        log.append_batch([b"x"] * 3)
        log.sync()
        rep = tidelog.Replayer(log, _ObjectArraySnapshot(), name="objs")
        with pytest.raises(TypeError, match="snapshot") as info:
            rep.run()
        from tidelog.replay import machine_call
        assert machine_call(info.value).method == "snapshot"
        assert "objs" not in tidelog.replay.replayers(log)      # nothing stored
