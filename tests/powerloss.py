"""Helpers for the fault tests: the LD_PRELOAD interposer (tests/shim/synclog.c), a writer process
that prints what it acknowledged, and power-loss images of a log directory built from what the
interposer saw reach stable storage."""
import hashlib
import os
import random
import shutil
import subprocess
import sys
import textwrap

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def build_shim(tmpdir):
    """Compile the interposer; on Linux a missing compiler is a failure, not a skip."""
    if not sys.platform.startswith("linux"):
        pytest.skip("LD_PRELOAD interposition is Linux-only")
    out = os.path.join(str(tmpdir), "synclog.so")
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "the fault tests need a C compiler (cc/gcc) to build tests/shim/synclog.c"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", out,
                    os.path.join(HERE, "shim", "synclog.c"), "-ldl"], check=True)
    return out


def value(off):
    return hashlib.blake2b(b"%d" % off, digest_size=16).digest() * (1 + off % 11)


def nvalue(off):
    """The value of record `off` when a numpy batch wrote it (rows of one size)."""
    return hashlib.blake2b(b"n%d" % off, digest_size=24).digest()


# TL_FRAME_LIMIT: the writer's _frame_limit (format v2: batches above it are groups of frames);
# TL_NUMPY=1: every 8th step appends a numpy array (rows nvalue(off)); TL_HEADERS=1: records
# other than numpy rows get headers hdr_of(off)
WRITER = """
import os, sys, hashlib, tidelog
path, mode, unsafe = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
def value(off):
    return hashlib.blake2b(b"%d" % off, digest_size=16).digest() * (1 + off % 11)
def nvalue(off):
    return hashlib.blake2b(b"n%d" % off, digest_size=24).digest()
log = tidelog.open(path, segment_bytes=16384, durability=mode, sync_interval=0.002)
log._unsafe_ack_without_sync = unsafe
log._frame_limit = int(os.environ.get("TL_FRAME_LIMIT", 1 << 20))
numpy = os.environ.get("TL_NUMPY") == "1"
hdrs = os.environ.get("TL_HEADERS") == "1"
def hdr_of(off):
    return [("o", b"%d" % off), ("h\u00e9", b"")][:off % 3] if hdrs else None
if numpy:
    import numpy as np
off = log.end_offset
i = 0
print("start", off, flush=True)
while True:
    if numpy and i % 8 == 4:
        n = 2 + i % 60
        rows = np.frombuffer(b"".join(nvalue(o) for o in range(off, off + n)), np.uint8)
        assert log.append_batch(rows.reshape(n, 24)) == off
        off += n
    elif i % 4 == 0:
        n = 1 + i % 30
        log.append_batch([value(o) for o in range(off, off + n)],
                         headers=[hdr_of(o) for o in range(off, off + n)] if hdrs else None)
        off += n
    else:
        log.append(value(off), headers=hdr_of(off))
        off += 1
    if mode == "none" and i % 5 == 0:
        log.sync()
    print("ack", log.durable_offset, flush=True)
    i += 1
"""


def run_writer(path, mode, env, seconds, rng, unsafe=False):
    """Run WRITER under the interposer, SIGKILL it after a random time; the acknowledged offset."""
    import signal
    import time
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(WRITER), path, mode,
                              "1" if unsafe else "0"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env)
    first = child.stdout.readline()
    assert first.startswith("start"), child.stderr.read()
    time.sleep(rng.uniform(0.01, seconds))
    os.kill(child.pid, signal.SIGKILL)
    out, err = child.communicate()
    # killed by us, not ended by itself (the interposer aborts when it cannot record a sync)
    assert child.returncode == -signal.SIGKILL, f"writer ended with {child.returncode}: {err[-500:]}"
    acked = 0
    for line in out.split("\n")[:-1]:
        if line.startswith("ack "):
            acked = max(acked, int(line.split()[1]))
    return acked


def read_files(d):
    out = {}
    for name in os.listdir(d):
        p = os.path.join(d, name)
        if os.path.isfile(p) and not name.startswith("."):
            with open(p, "rb") as f:
                out[name] = f.read()
    return out


def power_loss_image(logdir, shadow, out, rng, variant):
    """The log directory as a power loss may leave it: what was synced (the interposer's copies)
    plus, of what was not, nothing ("drop"), a prefix up to a random byte ("cut") or a random
    subset of its 4 KiB pages ("pages"). Files whose directory entry was never synced may be
    missing; the control page is its synced copy or its current state."""
    synced = read_files(os.path.join(shadow, "files")) if os.path.isdir(shadow) else {}
    try:
        with open(os.path.join(shadow, "dirlist")) as f:
            dirlist = set(f.read().split())
    except FileNotFoundError:
        dirlist = set()
    current = read_files(logdir)
    os.makedirs(out)
    for name in set(current) | set(synced):
        if name.endswith(".tmp"):
            continue
        cur = current.get(name)
        base = synced.get(name)
        if name not in dirlist and rng.random() < 0.5:
            continue                        # its directory entry never reached the disk
        if cur is None:                     # deleted since: the old content may still be there
            if base is None or rng.random() < 0.5:
                continue
            data = base
        else:
            if base is None:
                base = bytes(len(cur))      # never synced: no page of it is guaranteed
            base = base[:len(cur)].ljust(len(cur), b"\0")
            if variant == "drop":
                data = base
            elif variant == "cut":
                r = rng.randrange(len(cur) + 1)
                data = cur[:r] + base[r:]
            else:
                b = bytearray(base)
                for p in range(0, len(cur), 4096):
                    if cur[p:p + 4096] != base[p:p + 4096] and rng.random() < 0.5:
                        b[p:p + 4096] = cur[p:p + 4096]
                data = bytes(b)
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)


def hdr_of(off):
    """The headers WRITER gives record `off` with TL_HEADERS=1."""
    return [("o", b"%d" % off), ("h\u00e9", b"")][:off % 3]


def check_recovered(path, acked, headers=False):
    """Open like a writer (recovery), then read everything: (records, lost acknowledged ones).
    Every record must be CRC-valid and the log a gap-free prefix of what was written."""
    import tidelog
    with tidelog.open(path, durability="none") as log:
        n = 0
        for rec in log.cursor():
            assert rec.offset == n
            v = bytes(rec.value)
            assert v == value(n) or v == nvalue(n), f"record {n} is not what was written"
            if headers:
                assert rec.headers == (hdr_of(n) if v == value(n) else []), f"headers of {n}"
            n += 1
        assert n == log.end_offset
    return n, max(0, acked - n)
