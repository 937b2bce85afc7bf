"""The workload of `tidelog bench`: append one record per call, append_batch, then a scan, in a
temporary directory that is removed at the end.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from typing import List, Tuple

import numpy as np

import tidelog

CHUNK = 10_000        # records per append_batch


def run(records: int, size: int) -> List[Tuple[str, int, int, float]]:
    """Append `records` values of `size` bytes one per call, then as many in batches of CHUNK,
    then scan both; returns the throughput rows (phase, records, bytes, seconds)."""
    rng = np.random.default_rng(1)
    chunk = [bytes(v) for v in rng.integers(0, 256, (CHUNK, size), dtype=np.uint8)]
    tmp = tempfile.mkdtemp(prefix="tidelog-bench-")
    try:
        with tidelog.open(tmp) as log:
            append1 = log.append
            t0 = time.perf_counter()
            for i in range(records):
                append1(chunk[i % CHUNK])
            log.sync()
            t_single = time.perf_counter() - t0

            t0 = time.perf_counter()
            for _ in range(records // CHUNK):
                log.append_batch(chunk)
            log.sync()
            t_batch = time.perf_counter() - t0
            n_batch = records // CHUNK * CHUNK

            cur = log.cursor("earliest")
            scanned = scanned_bytes = 0
            t0 = time.perf_counter()
            while True:
                batch = cur.read_batch()
                if not len(batch):
                    break
                scanned += len(batch)
                scanned_bytes += batch.nbytes
            t_scan = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [("append (1 per call) + sync", records, records * size, t_single),
            (f"append_batch ({CHUNK:,}) + sync", n_batch, n_batch * size, t_batch),
            ("scan via read_batch", scanned, scanned_bytes, t_scan)]
