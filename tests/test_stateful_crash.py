"""Hypothesis stateful test with crashes and power losses against a model: after a crash every
appended record is there (the page cache survives); after a power loss every acknowledged one is,
and the log is a gap-free, CRC-valid prefix of what was appended."""
import os
import random
import shutil
import tempfile

from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import tidelog
from powerloss import power_loss_image

SEGMENT = 8192


def snapshot(logdir, shadow):
    """What is on stable storage right after a sync: every file of the log, as it is now."""
    shutil.rmtree(shadow, ignore_errors=True)
    os.makedirs(os.path.join(shadow, "files"))
    names = []
    for name in os.listdir(logdir):
        src = os.path.join(logdir, name)
        if os.path.isfile(src):
            shutil.copyfile(src, os.path.join(shadow, "files", name))
            names.append(name)
    with open(os.path.join(shadow, "dirlist"), "w") as f:
        f.write("\n".join(names))


class CrashModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp()
        self.path = os.path.join(self.dir, "log")
        self.shadow = os.path.join(self.dir, "shadow")
        self.log = tidelog.open(self.path, segment_bytes=SEGMENT, durability="none")
        self.model = []          # every value appended
        self.acked = 0           # durable_offset after the last sync
        snapshot(self.path, self.shadow)
        self.n = 0

    def _value(self, size):
        self.n += 1
        return (b"%d:" % self.n + b"v" * size)[:max(size, 1)]

    @rule(size=st.integers(0, 500))
    def append(self, size):
        v = self._value(size)
        assert self.log.append(v) == len(self.model)
        self.model.append(v)

    @rule(sizes=st.lists(st.integers(0, 300), min_size=1, max_size=15))
    def append_batch(self, sizes):
        vals = [self._value(s) for s in sizes]
        if sum((32 + len(v) + 7) // 8 * 8 for v in vals) > SEGMENT - 64:
            return
        assert self.log.append_batch(vals) == len(self.model)
        self.model.extend(vals)

    @rule()
    def sync(self):
        self.acked = self.log.sync()
        assert self.acked == len(self.model)
        snapshot(self.path, self.shadow)

    @rule()
    def crash(self):
        self.log._crash()
        self.log = tidelog.open(self.path, segment_bytes=SEGMENT, durability="none")
        assert self.log.end_offset == len(self.model)      # a process crash loses nothing
        self.acked = len(self.model)                        # recovery synced it
        snapshot(self.path, self.shadow)

    @rule(variant=st.sampled_from(["drop", "cut", "pages"]), seed=st.integers(0, 2**32))
    def power_loss(self, variant, seed):
        self.log._crash()
        image = os.path.join(self.dir, "image")
        power_loss_image(self.path, self.shadow, image, random.Random(seed), variant)
        shutil.rmtree(self.path)
        os.rename(image, self.path)
        self.log = tidelog.open(self.path, segment_bytes=SEGMENT, durability="none")
        end = self.log.end_offset
        assert self.acked <= end <= len(self.model)
        got = [bytes(r.value) for r in self.log.cursor()]
        assert got == self.model[:end]
        self.model = self.model[:end]
        self.acked = end
        snapshot(self.path, self.shadow)

    @invariant()
    def readable(self):
        assert self.log.end_offset == len(self.model)

    def teardown(self):
        self.log.close()
        with tidelog.open(self.path, readonly=True) as log:
            assert [bytes(r.value) for r in log.cursor()] == self.model
        shutil.rmtree(self.dir, ignore_errors=True)


TestCrashModel = CrashModel.TestCase
TestCrashModel.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
