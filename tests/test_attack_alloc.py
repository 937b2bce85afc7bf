"""Attacks on allocation in steps (ext/prealloc.pxi) with real processes and real files: a
segment whose blocks past the recovered tail are not one allocated run (a punched file, or a
power loss that kept later blocks and lost earlier ones), full disks, readers across steps."""
import os
import shutil
import subprocess
import sys

import pytest

import tidelog
from conftest import spawn_python

SEG0 = "%020d.seg" % 0

WRITE_THEN_DIE = r"""
import os, signal, sys, tidelog
log = tidelog.open(sys.argv[1], durability="none", segment_bytes=64 << 20)
tag = sys.argv[4].encode()
for i in range(int(sys.argv[2]), int(sys.argv[3])):
    log.append(b"%06d" % i + tag * 250)
os.kill(os.getpid(), signal.SIGKILL)
"""


def write_then_die(path, a, b, tag):
    p = spawn_python(WRITE_THEN_DIE, path, a, b, tag)
    p.communicate(timeout=60)
    assert p.returncode == -9, p.returncode


@pytest.mark.skipif(shutil.which("fallocate") is None, reason="needs fallocate(1)")
def test_old_frames_past_a_hole_never_come_back_after_recovery(log_path):
    """A hole in the middle of the unsynced tail, old frames after it: recovery cuts the log at
    the hole, and the frames after it must be cleared too, else the next appends (same offsets
    at the same positions) join them up and a later recovery counts them as written."""
    write_then_die(log_path, 0, 3000, "a")
    seg = os.path.join(log_path, SEG0)
    subprocess.run(["fallocate", "--punch-hole", "-o", str(256 << 10), "-l", "4096", seg],
                   check=True)
    with tidelog.open(log_path, durability="none") as log:
        n = log.end_offset
    assert 0 < n < 3000
    write_then_die(log_path, n, n + 200, "b")
    with tidelog.open(log_path, durability="none") as log:
        assert log.end_offset == n + 200
        got = [bytes(r.value)[:7] for r in log.cursor(0)]
    assert got == [b"%06da" % i for i in range(n)] + [b"%06db" % i for i in range(n, n + 200)]
