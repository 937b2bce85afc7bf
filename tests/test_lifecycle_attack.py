"""A Log's lifecycle against code that runs inside its own calls, in the same thread: a signal
handler (KeyboardInterrupt; a SIGTERM handler that closes the log; one that appends) or a
finalizer, which run wherever the writer calls Python-level code (threading.Condition's methods
around a sync, posixpath.join in a segment roll, ...) while the thread leads a sync or holds the
writer lock. Found attacking a3d2dfe: each of these hung the process.

The tests raise the signal at every such point in turn: a profile hook counts the Python-level
calls the log's call makes and raises the signal at the n-th, for n = 1, 2, ... until a call makes
fewer. Every script runs in a fresh interpreter with a watchdog: a hang fails the test (exit 3)
instead of hanging pytest."""
import pytest

from conftest import run_python

EVERY_POINT = r"""
import faulthandler, os, shutil, signal, sys, threading, time
import tidelog
from tidelog import LogClosedError

base, mode, what, syncs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "sync"

def bark():
    time.sleep(25)
    print("HUNG at point", point, flush=True)
    faulthandler.dump_traceback()
    os._exit(3)
threading.Thread(target=bark, daemon=True).start()

armed = {"n": 0, "left": 0}
def prof(frame, event, arg):
    if event == "call" and armed["left"] > 0:
        armed["left"] -= 1
        if armed["left"] == 0:
            signal.raise_signal(signal.SIGUSR1)     # its handler runs inside this call

handled = []
log = None
def on_usr1(signum, frame):
    sys.setprofile(None)
    handled.append(True)
    if what == "interrupt":
        raise KeyboardInterrupt
    if what == "close":
        log.close()                  # (inside the writer's own call: done as that call ends)
        return
    try:                             # what == "append": refused inside the writer, else fine
        handled.append(log.append(b"handler"))
    except RuntimeError as e:
        assert "reentrant" in str(e), e
        handled.append("refused")
signal.signal(signal.SIGUSR1, on_usr1)

def kept(path):
    with tidelog.open(path, readonly=True) as r:
        return [bytes(x.value) for x in r.cursor()]

point = 0
fired_somewhere = 0
while True:
    point += 1
    path = os.path.join(base, "p%d" % point)
    # (a long sync_interval: in "batch" mode the appending thread's syncs are the ones tested)
    log = tidelog.open(path, durability=mode, segment_bytes=4096, sync_interval=60)
    acked, refused, raised = [], [], []
    handled.clear()
    for i in range(60):              # about two segment rolls
        v = b"%05d" % i + b"x" * 95
        armed["left"] = point
        sys.setprofile(prof)
        try:
            acked.append((v, log.append(v)))
            if syncs and mode != "always" and i % 7 == 6:
                log.sync()
        except KeyboardInterrupt:
            raised.append(v)
        except LogClosedError:
            refused.append(v)
        finally:
            sys.setprofile(None)
            armed["left"] = 0
        if handled:
            break
    if not handled:
        break                        # fewer Python-level calls than `point`: every one was tried
    fired_somewhere += 1
    if what == "close":
        assert log.closed, point
        assert len(refused) <= 1, (point, refused)
        with tidelog.open(path) as again:     # closed: the lock is free
            pass
    else:
        # the writer goes on: appends, a sync, and close() complete
        tail = [b"after%d" % j for j in range(3)]
        for v in tail:
            acked.append((v, log.append(v)))
        log.sync()
        log.close()
    k = kept(path)
    for v, off in acked:             # acknowledged: kept at its offset
        assert off < len(k) and k[off] == v, (point, v, off)
    for v in refused:                # raised LogClosedError: left no record
        assert v not in k, (point, v)
    if what == "append":
        assert handled[1] == "refused" or k[handled[1]] == b"handler", (point, handled)
    shutil.rmtree(path)
assert fired_somewhere >= 1, fired_somewhere
print("ok", point - 1)
"""


@pytest.mark.parametrize("what", ["interrupt", "close", "append"])
@pytest.mark.parametrize("mode,syncs", [("always", "sync"), ("batch", "sync"), ("none", "sync"),
                                        ("batch", "nosync"), ("none", "nosync")])
def test_signal_handler_at_every_point_inside_the_writer(tmp_path, mode, syncs, what):
    # interrupt: KeyboardInterrupt raised at the leader's `with cv:` after its fdatasync left
    #   _syncing set: every later sync and close() waited forever (a3d2dfe: a plain append loop
    #   in always or batch mode interrupted by SIGINT, then close(): hung 3 of 3 runs)
    # close: a SIGTERM-style handler calling close() inside this thread's own sync or roll
    #   waited for itself (a3d2dfe: hung, always mode 3 of 3 runs of an append loop). Now the
    #   close completes as the interrupted call ends; the append in progress returns an offset
    #   that is kept, or raises LogClosedError and left no record
    # append: a handler appending inside this thread's roll or sync waited for itself (hung);
    #   now RuntimeError ("reentrant call") at once, or it appends when that is safe
    # ("nosync": appends only, so that the points inside segment rolls come first)
    proc = run_python(EVERY_POINT, tmp_path, mode, what, syncs, check=False, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, (
        f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}")
