"""Kill -9 a real writer at random moments: every acknowledged (synced) record survives byte-exact,
and the log reopens as a gap-free prefix of what was appended. Cycles: TIDELOG_CRASH_CYCLES."""
import os
import random
import signal
import time

import pytest

import tidelog
from conftest import spawn_python

CYCLES = int(os.environ.get("TIDELOG_CRASH_CYCLES", "15"))

WRITER = """
import sys, hashlib, tidelog
path, mode = sys.argv[1], sys.argv[2]
def value(off):
    return hashlib.blake2b(b"%d" % off, digest_size=16).digest() * (1 + off % 23)
log = tidelog.open(path, segment_bytes=1 << 15, durability=mode)
off = log.end_offset
print("start", off, flush=True)
i = 0
while True:
    if i % 3 == 0:
        n = 1 + i % 40
        assert log.append_batch([value(o) for o in range(off, off + n)]) == off
        off += n
    else:
        assert log.append(value(off), key=b"%d" % off) == off
        off += 1
    if mode != "always" and i % 7 == 0:
        log.sync()
    if i % 7 == 0:
        print("durable", log.durable_offset, flush=True)
    i += 1
"""


def value(off):
    import hashlib
    return hashlib.blake2b(b"%d" % off, digest_size=16).digest() * (1 + off % 23)


@pytest.mark.parametrize("mode", ["none", "batch", "always"])
def test_kill9_loses_nothing_acknowledged(tmp_path, mode):
    path = str(tmp_path / "log")
    rng = random.Random(1234)
    acked = 0
    for cycle in range(CYCLES):
        child = spawn_python(WRITER, path, mode)
        start_line = child.stdout.readline().split()
        assert start_line[0] == "start", child.stderr.read()
        assert int(start_line[1]) >= acked
        time.sleep(rng.uniform(0.0, 0.15))
        os.kill(child.pid, signal.SIGKILL)
        out, _ = child.communicate()
        for line in out.split("\n")[:-1]:        # complete lines only: the kill may cut one
            if line.startswith("durable "):
                acked = max(acked, int(line.split()[1]))
        with tidelog.open(path, readonly=True) as log:
            end = log.end_offset
        with tidelog.open(path, durability="none") as log:      # the writer's recovery
            assert log.end_offset >= acked, (cycle, log.end_offset, acked)
            assert log.durable_offset == log.end_offset
            n = 0
            for rec in log.cursor():
                assert rec.offset == n
                assert bytes(rec.value) == value(n)
                n += 1
            assert n == log.end_offset
        # a process crash keeps the page cache: every record that was published survives
        assert n >= end, (cycle, n, end)
