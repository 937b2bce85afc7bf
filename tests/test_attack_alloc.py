"""Attacks on allocation in steps (ext/prealloc.pxi) with real processes and real files: a
segment whose blocks past the recovered tail are not one allocated run (a punched file, or a
power loss that kept later blocks and lost earlier ones), full disks, readers across steps."""
import os
import shutil
import subprocess
import sys

import pytest

import tidelog
import smallfs                      # tests/smallfs.py: a small tmpfs in a private mount namespace
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


def run_on_small_tmpfs(tmp_path, script, *args, size="8m"):
    return smallfs.run_on_small_tmpfs(tmp_path, script, *args, size=size)


SALVAGE = r"""
import os, sys, tidelog

mnt, fill = sys.argv[1], sys.argv[2] == "fill"
path = os.path.join(mnt, "log")
with tidelog.open(path, durability="none", segment_bytes=32 << 20) as log:
    for i in range(2000):
        log.append(b"%08d" % i + b"." * 100)
free = lambda: os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
if fill:
    with open(os.path.join(mnt, "filler"), "wb") as f:
        try:
            f.write(b"f" * free())
        except OSError:
            pass
before = free()
with tidelog.open(path, readonly=True) as r:
    got = [bytes(x.value)[:8] for x in r._salvage()]
assert got == [b"%08d" % i for i in range(2000)], len(got)
print("salvaged", len(got), "took", before - free(), flush=True)
"""


@pytest.mark.parametrize("fill", ["fill", "room"])
def test_salvage_reads_no_hole_of_a_segment(tmp_path, fill):
    """Salvage looks at every aligned position of a segment, but a segment is mostly holes past
    its writer's last step: read through the mapping, each hole takes a page on tmpfs (a 32 MiB
    segment took 32 MiB), and on a full tmpfs it is a SIGBUS (returncode -7)."""
    proc = run_on_small_tmpfs(tmp_path, SALVAGE, fill, size="48m")
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr[-3000:])
    words = proc.stdout.split()
    assert words[:2] == ["salvaged", "2000"] and int(words[3]) < (1 << 20), proc.stdout
