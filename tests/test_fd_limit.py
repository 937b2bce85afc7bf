"""A writer that rolls many times keeps a bounded number of descriptors open, in every durability
mode (ext/durability.pxi seal_handoff): with RLIMIT_NOFILE 64, 500 rolls by single appends and
by one non-atomic batch, then a reopen that reads everything. In "none" mode a writer that never
syncs kept one descriptor per sealed segment until its first sync() and failed with EMFILE at
roll ~58; a sync() or close() after that still makes every sealed segment durable."""
import pytest

from conftest import spawn_python

CHILD = r"""
import os, resource, sys, tidelog
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
path, dur, how = sys.argv[1], sys.argv[2], sys.argv[3]
seg = 8192
v = lambda i: b"%08d" % i + b"." * 1200          # about five records a segment
log = tidelog.open(path, durability=dur, segment_bytes=seg)
n = 0
if how == "single":
    while len(log.segments()) < 501:
        log.append(v(n))
        n += 1
else:
    n = 3500
    log.append_batch([v(i) for i in range(n)], atomic=False)
    assert len(log.segments()) > 500, len(log.segments())
fds = len(os.listdir("/proc/self/fd"))
assert fds < 40, fds
if how == "single":
    log.sync()                          # every sealed segment, through a closed descriptor too
    assert log.durable_offset == n
log.append(v(n))
n += 1
log.close()
with tidelog.open(path, durability=dur, segment_bytes=seg) as log:
    assert log.start_offset == 0 and log.end_offset == n, (log.end_offset, n)
    for i, rec in enumerate(log.cursor(0)):
        assert bytes(rec.value) == v(i), i
    assert i == n - 1
    log.append(v(n))
print("ok", n, fds, flush=True)
"""


@pytest.mark.parametrize("how", ["single", "batch"])
@pytest.mark.parametrize("dur", ["none", "batch", "always"])
def test_many_rolls_under_a_low_descriptor_limit(log_path, dur, how):
    p = spawn_python(CHILD, log_path, dur, how)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, (out, err[-3000:])
    assert out.split()[0] == "ok", out
