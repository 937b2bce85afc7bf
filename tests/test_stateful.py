"""Hypothesis stateful test: the Log against a plain list model (append, append_batch, read,
cursor batches, sync, reopen)."""
import shutil
import tempfile

import numpy as np
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import tidelog

values = st.binary(max_size=600)
keys = st.none() | st.binary(max_size=20)


class LogModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp()
        self.path = self.dir + "/log"
        self.log = tidelog.open(self.path, segment_bytes=4096, durability="none")
        self.model = []            # (key, value, timestamp)

    @rule(v=values, k=keys, ts=st.integers(0, 2**62))
    def append(self, v, k, ts):
        assert self.log.append(v, key=k, timestamp=ts) == len(self.model)
        self.model.append((k, v, ts))

    @rule(vs=st.lists(values, max_size=12), ks=st.lists(keys, max_size=12),
          atomic=st.booleans(), shared=st.booleans(), limit=st.sampled_from([1 << 20, 200]))
    def append_batch(self, vs, ks, atomic, shared, limit):
        # format v2: multi-form frames (keys None and b"", one timestamp or one per record),
        # groups of frames above the frame limit
        ks = (ks + [None] * len(vs))[:len(vs)]
        tss = [5] * len(vs) if shared else list(range(len(vs)))
        self.log._frame_limit = limit
        try:
            first = self.log.append_batch(vs, keys=ks, atomic=atomic, timestamps=tss)
        except ValueError:
            # only a batch about as large as a segment (columns: at most ~24 B per record,
            # a header and a value pad per frame) is refused
            data = sum(map(len, vs)) + sum(len(k) for k in ks if k is not None)
            assert atomic and data + 96 * len(vs) > 4096 - 64, (data, len(vs))
            return
        assert first == len(self.model)
        self.model.extend(zip(ks, vs, tss))

    @rule(n=st.integers(1, 20), width=st.integers(1, 64))
    def append_array(self, n, width):
        a = np.random.default_rng(n).integers(0, 255, (n, width), dtype=np.uint8)
        first = self.log.append_batch(a, timestamps=[7] * n)
        assert first == len(self.model)
        self.model.extend((None, row.tobytes(), 7) for row in a)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def read(self, data):
        off = data.draw(st.integers(0, len(self.model) - 1))
        r = self.log.read(off)
        assert (r.key, bytes(r.value), r.timestamp) == self.model[off] and r.offset == off

    @rule(data=st.data())
    def read_batches(self, data):
        start = data.draw(st.integers(0, len(self.model)))
        cur = self.log.cursor(start)
        got = []
        while True:
            b = cur.read_batch(max_records=data.draw(st.integers(1, 50)))
            if not len(b):
                break
            got.extend(zip(b.keys, map(bytes, b.values), b.timestamps.tolist()))
        assert got == self.model[start:]

    @rule()
    def sync(self):
        assert self.log.sync() == len(self.model)

    @rule(readonly=st.booleans())
    def reopen(self, readonly):
        self.log.close()
        if readonly:
            with tidelog.open(self.path, readonly=True) as r:
                assert r.end_offset == len(self.model)
                assert [(x.key, bytes(x.value), x.timestamp) for x in r.cursor()] == self.model
        self.log = tidelog.open(self.path, segment_bytes=4096, durability="none")

    @invariant()
    def offsets(self):
        assert self.log.end_offset == len(self.model) == len(self.log)
        assert self.log.start_offset == 0

    def teardown(self):
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


TestLogModel = LogModel.TestCase
TestLogModel.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
