"""pytest-benchmark: tidelog's own engine numbers, one value size at a time.

    pytest bench/ --benchmark-only
    pytest bench/ --benchmark-only --benchmark-save=before      # .benchmarks/
    pytest bench/ --benchmark-only --benchmark-compare=0001     # against a saved run

Groups: append (one call per record), append_batch (1000 per call), read (random
log.read(offset)), scan (a fresh cursor over read_batch(...).values, len() of each zero-copy
view). Value sizes 16 B, 100 B, 1 KiB, 64 KiB. durability="none" everywhere (the raw engine:
no sync inside the timed region) except one append row in durability="batch" (the default:
a flusher thread syncs every 5 ms while the loop runs).

One round = a fixed number of records (`extra_info["records"]`); the printed times are per
round, and `extra_info["records_per_s"]` has the median rate. Writers get a fresh log per round
(opened in setup, closed in teardown: close() syncs, outside the timed region), so every round
writes into new, never-touched pages, as a real log does. Peers are in bench/compare.py.
"""

import os
import random
import shutil
import sys

import numpy as np
import pytest

pytest.importorskip("pytest_benchmark")   # the `benchmark` fixture (pip install pytest-benchmark)

try:
    import tidelog
except ImportError:          # a checkout without installing: use ../src
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
    import tidelog

BATCH = 1000
SIZES = [16, 100, 1024, 65536]
ROUNDS = 5

# records per round, chosen so that a round takes ~10-100 ms on a 2-core VM
N_APPEND = {16: 50_000, 100: 50_000, 1024: 20_000, 65536: 1_000}
N_BATCH = {16: 200_000, 100: 100_000, 1024: 50_000, 65536: 1_000}
N_DATA = {16: 200_000, 100: 200_000, 1024: 100_000, 65536: 2_000}   # the log read and scanned
N_READ = {16: 20_000, 100: 20_000, 1024: 20_000, 65536: 2_000}      # random reads per round


def size_id(size):
    return f"{size // 1024}KiB" if size % 1024 == 0 else f"{size}B"


_values = {}


def values_for(size):
    """1000 distinct random values of `size` bytes (the same ones in every run)."""
    if size not in _values:
        rng = random.Random(size)
        _values[size] = [rng.randbytes(size) for _ in range(BATCH)]
    return _values[size]


class Logs:
    """Fresh logs in their own directories; closes and deletes them whatever happens."""

    def __init__(self, root):
        self.root = root
        self.count = 0
        self.open_logs = []

    def fresh(self, **kw):
        self.count += 1
        path = os.path.join(self.root, f"log{self.count}")
        log = tidelog.open(path, **kw)
        self.open_logs.append(log)
        return log

    def close(self, log):
        log.close()
        shutil.rmtree(log.path, ignore_errors=True)
        self.open_logs.remove(log)

    def close_all(self):
        for log in list(self.open_logs):
            self.close(log)


@pytest.fixture
def logs(tmp_path):
    lg = Logs(str(tmp_path))
    yield lg
    lg.close_all()


_data_logs = {}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-data")
    yield root
    _data_logs.clear()
    shutil.rmtree(root, ignore_errors=True)


def data_log(root, size):
    """Path of a closed log holding N_DATA[size] records of `size` bytes (made once)."""
    if size not in _data_logs:
        path = str(root / f"data-{size_id(size)}")
        with tidelog.open(path, durability="none") as log:
            values = values_for(size)
            for _ in range(N_DATA[size] // BATCH):
                log.append_batch(values)
        _data_logs[size] = path
    return _data_logs[size]


def note(benchmark, records, size):
    """Record the size of a round, and its rate when the benchmark ran."""
    benchmark.extra_info["records"] = records
    benchmark.extra_info["value_bytes"] = size
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None and stats.stats.median:
        benchmark.extra_info["records_per_s"] = round(records / stats.stats.median)
        benchmark.extra_info["MB_per_s"] = round(records * size / stats.stats.median / 1e6, 1)


# ---------------------------------------------------------------------------------- append

def _append_loop(values, n):
    def run(log):
        append = log.append
        for _ in range(n // len(values)):
            for v in values:
                append(v)
        assert log.end_offset == n
    return run


@pytest.mark.benchmark(group="append")
@pytest.mark.parametrize("size", SIZES, ids=size_id)
def test_append(benchmark, logs, size):
    n = N_APPEND[size]
    benchmark.pedantic(_append_loop(values_for(size), n),
                       setup=lambda: ((logs.fresh(durability="none"),), {}),
                       teardown=logs.close, rounds=ROUNDS)
    note(benchmark, n, size)


@pytest.mark.benchmark(group="append")
@pytest.mark.parametrize("size", [100], ids=size_id)
def test_append_durability_batch(benchmark, logs, size):
    """The default mode: same loop while the flusher thread syncs every sync_interval."""
    n = N_APPEND[size]
    benchmark.pedantic(_append_loop(values_for(size), n),
                       setup=lambda: ((logs.fresh(durability="batch"),), {}),
                       teardown=logs.close, rounds=ROUNDS)
    note(benchmark, n, size)


# ---------------------------------------------------------------------------------- append_batch

@pytest.mark.benchmark(group="append_batch")
@pytest.mark.parametrize("size", SIZES, ids=size_id)
def test_append_batch(benchmark, logs, size):
    values = values_for(size)
    n = N_BATCH[size]

    def run(log):
        append_batch = log.append_batch
        for _ in range(n // BATCH):
            append_batch(values)
        assert log.end_offset == n

    benchmark.pedantic(run, setup=lambda: ((logs.fresh(durability="none"),), {}),
                       teardown=logs.close, rounds=ROUNDS)
    note(benchmark, n, size)


@pytest.mark.benchmark(group="append_batch")
def test_append_batch_numpy_64B(benchmark, logs):
    """Fixed-size records from a 2-D uint8 array, 1000 rows per call."""
    arr = np.frombuffer(random.Random(64).randbytes(BATCH * 64), np.uint8).reshape(BATCH, 64)
    n = N_BATCH[100]

    def run(log):
        append_batch = log.append_batch
        for _ in range(n // BATCH):
            append_batch(arr)
        assert log.end_offset == n

    benchmark.pedantic(run, setup=lambda: ((logs.fresh(durability="none"),), {}),
                       teardown=logs.close, rounds=ROUNDS)
    note(benchmark, n, 64)


@pytest.mark.benchmark(group="append_batch")
@pytest.mark.parametrize("form", ["tuple", "list", "dict", "int_headers"])
def test_append_batch_headers_100B(benchmark, logs, form):
    """1000 records per call, each with one header of its own (a position, as an ingest
    writes): the per-record cost of checking and packing headers, by the form they come in
    (int_headers: the positions as a column of ints, append_batch(int_headers={name: ints}))."""
    values = values_for(100)
    n = N_BATCH[100]
    if form == "int_headers":
        calls = [{"int_headers": {"src-offset": list(range(j * BATCH, (j + 1) * BATCH))}}
                 for j in range(n // BATCH)]
    else:
        make = {"tuple": lambda i: (("src-offset", b"%d" % i),),
                "list": lambda i: [("src-offset", b"%d" % i)],
                "dict": lambda i: {"src-offset": b"%d" % i}}[form]
        calls = [{"headers": [make(j * BATCH + i) for i in range(BATCH)]}
                 for j in range(n // BATCH)]

    def run(log):
        append_batch = log.append_batch
        for kw in calls:
            append_batch(values, **kw)
        assert log.end_offset == n

    benchmark.pedantic(run, setup=lambda: ((logs.fresh(durability="none"),), {}),
                       teardown=logs.close, rounds=ROUNDS)
    note(benchmark, n, 100)


# ---------------------------------------------------------------------------------- read

@pytest.mark.benchmark(group="read")
@pytest.mark.parametrize("size", SIZES, ids=size_id)
def test_read(benchmark, data_root, size):
    path = data_log(data_root, size)
    rng = random.Random(size + 1)
    offsets = [rng.randrange(N_DATA[size]) for _ in range(N_READ[size])]
    with tidelog.open(path, readonly=True) as log:
        def run():
            read = log.read
            for o in offsets:
                len(read(o).value)

        benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1)
    note(benchmark, len(offsets), size)


# ---------------------------------------------------------------------------------- scan

@pytest.mark.benchmark(group="scan")
@pytest.mark.parametrize("size", SIZES, ids=size_id)
def test_scan(benchmark, data_root, size):
    path = data_log(data_root, size)
    n = N_DATA[size]
    with tidelog.open(path, readonly=True) as log:
        def run():
            count = 0
            read_batch = log.cursor().read_batch
            while True:
                batch = read_batch()
                if not len(batch):
                    break
                for v in batch.values:
                    len(v)
                    count += 1
            assert count == n

        benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1)
    note(benchmark, n, size)
