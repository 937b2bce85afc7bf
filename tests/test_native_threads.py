"""The native threads (the flusher in ext/tl_flusher.h, the pretoucher in ext/tl_toucher.h) stop
when their log closes, whatever moment the stop lands on.

A stop used to be lost when it landed between a thread's check of `stop` and its read of the
futex word it then sleeps on: close() waited for the thread forever (seen as rare hangs of
full-suite runs in close(), all threads asleep on futexes). A test hook widens that window to
make the moment certain: _core._set_native_pause_ns makes each thread pause there."""
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import os, sys, tidelog
    from tidelog import _core
    root, mode, which = sys.argv[1], sys.argv[2], sys.argv[3]
    pause = 300_000_000                           # 300 ms inside the window, every round
    _core._set_native_pause_ns(pause if which == "flusher" else 0,
                               pause if which == "pretoucher" else 0)
    try:
        for i in range(3):
            log = tidelog.open(os.path.join(root, "l%d" % i), durability=mode)
            log.append(b"x")
            log.close()                            # lands while the threads pause
            with tidelog.open(os.path.join(root, "l%d" % i), readonly=True) as r:
                assert r.read(0).value.tobytes() == b"x"
    finally:
        _core._set_native_pause_ns(0, 0)
    print("closed")
""")


@pytest.mark.parametrize("which", ["flusher", "pretoucher"])
@pytest.mark.parametrize("mode", ["none", "batch", "always"])
def test_close_stops_native_threads_whatever_moment_the_stop_lands(tmp_path, mode, which):
    try:
        out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), mode, which],
                             capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"close() in {mode!r} mode never returned: the {which} missed its stop")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "closed"
