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


PL_WRITER = r"""
import hashlib, sys, tidelog
path, mode = sys.argv[1], sys.argv[2]
def value(off):
    return hashlib.blake2b(b"%d" % off, digest_size=16).digest() * (1 + off % 11)
log = tidelog.open(path, segment_bytes=4096, durability=mode, sync_interval=0.5)
off = log.end_offset
print("start", off, flush=True)
i = 0
while True:
    log.append(value(off))              # ~40 records a segment
    off += 1
    i += 1
    if i % 500 == 0:                    # ~12 rolls between syncs: most sealed ones have no
        if mode == "none":              # descriptor left when sync() comes
            log.sync()
        print("ack", log.durable_offset, flush=True)
"""


@pytest.mark.parametrize("mode", ["none", "batch", "always"])
def test_power_loss_after_many_rolls_between_syncs(tmp_path, mode):
    """A sync reports durable only records whose segments it synced, the ones whose descriptor
    was closed (by name) included: power-loss images built from what the LD_PRELOAD interposer
    saw reach stable storage keep every acknowledged record."""
    import os, random, signal, subprocess, sys, textwrap, time
    from powerloss import build_shim, check_recovered, power_loss_image
    shim = build_shim(tmp_path)
    rng = random.Random(1234)
    for cycle in range(3):
        d = tmp_path / f"c{cycle}"
        logdir, shadow = str(d / "log"), str(d / "shadow")
        os.makedirs(os.path.join(shadow, "files"))
        env = dict(os.environ, LD_PRELOAD=shim, SYNCLOG_DIR=shadow)
        child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(PL_WRITER), logdir, mode],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=env)
        assert child.stdout.readline().startswith("start"), child.stderr.read()
        acked = 0
        for line in child.stdout:       # at least a few syncs that covered closed descriptors
            acked = int(line.split()[1])
            if acked >= 2000 + 500 * cycle:
                break
        os.kill(child.pid, signal.SIGKILL)
        out, err = child.communicate()
        assert child.returncode == -signal.SIGKILL, err[-2000:]
        for line in out.split("\n")[:-1]:
            acked = max(acked, int(line.split()[1]))
        for variant in ("drop", "cut", "pages"):
            img = str(d / f"img-{variant}")
            power_loss_image(logdir, shadow, img, rng, variant)
            n, lost = check_recovered(img, acked)
            assert lost == 0, (variant, n, acked)
