"""Per-log compression (issue 14): compression ratio, ingest and scan records/s of the demo's JSON
click events with each codec against uncompressed, interleaved in one process, medians of rounds.

  python bench/codecs.py [--records N] [--batch B] [--rounds R] [--dir DIR] [--json FILE]

Per round and codec (order rotated each round): a fresh log (durability "none") ingests N events
with append_batch of B (key = the user), closed (synced); then a reader scans it twice: read_batch
of 65536 summing nbytes (the read path: decompression of every compressed frame included), and
the same touching every value (a memoryview per record, as a consumer would). Stored bytes are
the frames' bytes (the active segment's write position from the control page, less the header).
Codecs whose package is missing are left out (pip install '.[zstd,lz4]').
"""
import argparse
import json
import os
import shutil
import statistics
import struct
import tempfile
import time

import numpy as np

import tidelog

TYPES = (b"click", b"view", b"scroll", b"hover", b"purchase")
PAGES = (b"home", b"search", b"product", b"cart", b"checkout")
EVENT = b'{"seq":%d,"ts":%d,"user":"u%06d","type":"%s","page":"/%s/%d","x":%d,"y":%d}'


def click_events(n, seed=7):
    """n synthetic click events (~100 bytes of JSON each, as `tidelog demo` makes) and keys."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 100_000, n).tolist()
    kinds = rng.integers(0, len(TYPES), n).tolist()
    pages = rng.integers(0, len(PAGES), n).tolist()
    items = rng.integers(0, 10_000, n).tolist()
    xs = rng.integers(0, 2048, n).tolist()
    ys = rng.integers(0, 2048, n).tolist()
    ts = 1_700_000_000_000
    values = [EVENT % (i, ts + i, u, TYPES[k], PAGES[p], it, x, y)
              for i, (u, k, p, it, x, y) in enumerate(zip(users, kinds, pages, items, xs, ys))]
    return values, [b"u%06d" % u for u in users]


def available():
    out = [None]
    for name, module in (("lz4", "lz4.block"), ("zstd", "zstandard")):
        try:
            __import__(module)
            out.append(name)
        except ImportError:
            print(f"({name}: {module} not installed, left out)")
    return out


def stored_bytes(path):
    with open(os.path.join(path, "tidelog.ctl"), "rb") as f:
        ctl = f.read(64)
    return struct.unpack_from("<q", ctl, 48)[0] - 64      # active position - segment header


def one(d, codec, values, keys, batch):
    path = os.path.join(d, f"log-{codec}")
    shutil.rmtree(path, ignore_errors=True)
    n = len(values)
    t0 = time.perf_counter()
    with tidelog.open(path, durability="none", compression=codec or "none") as log:
        for i in range(0, n, batch):
            log.append_batch(values[i:i + batch], keys=keys[i:i + batch])
    t_ingest = time.perf_counter() - t0
    size = stored_bytes(path)
    with tidelog.open(path, readonly=True) as log:
        t0 = time.perf_counter()
        cur = log.cursor()
        got = 0
        while True:
            b = cur.read_batch(65536)
            if not len(b):
                break
            got += b.nbytes
        t_scan = time.perf_counter() - t0
        t0 = time.perf_counter()
        cur = log.cursor()
        touched = 0
        while True:
            b = cur.read_batch(65536)
            if not len(b):
                break
            for v in b.values:
                touched += len(v)
        t_values = time.perf_counter() - t0
    assert got == touched == sum(map(len, values))
    shutil.rmtree(path)
    return {"ingest": n / t_ingest, "scan": n / t_scan, "scan_values": n / t_values,
            "stored": size}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=300_000, help="events per log")
    ap.add_argument("--batch", type=int, default=1000, help="records per append_batch")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (medians)")
    ap.add_argument("--dir", default=None, help="where the logs go (default: a temp dir)")
    ap.add_argument("--json", default=None, help="write the medians here")
    a = ap.parse_args()
    values, keys = click_events(a.records)
    raw = sum(map(len, values))
    codecs = available()
    d = tempfile.mkdtemp(dir=a.dir)
    res = {c: [] for c in codecs}
    try:
        for r in range(a.rounds):
            k = r % len(codecs)
            for c in codecs[k:] + codecs[:k]:
                res[c].append(one(d, c, values, keys, a.batch))
    finally:
        shutil.rmtree(d, ignore_errors=True)
    med = {str(c): {m: statistics.median(x[m] for x in res[c]) for m in res[c][0]} for c in codecs}
    base = med["None"]
    print(f"{a.records} click events, {raw / a.records:.0f} B of JSON each ({raw / 1e6:.1f} MB), "
          f"append_batch of {a.batch}, {a.rounds} rounds interleaved, medians")
    print(f"{'codec':6} {'stored MB':>9} {'ratio':>6} {'ingest rec/s':>13} {'x':>5} "
          f"{'scan rec/s':>12} {'x':>5} {'scan+values rec/s':>18} {'x':>5}")
    for c in codecs:
        m = med[str(c)]
        print(f"{str(c or 'none'):6} {m['stored'] / 1e6:9.2f} {raw / m['stored']:6.2f} "
              f"{m['ingest']:13,.0f} {m['ingest'] / base['ingest']:5.2f} "
              f"{m['scan']:12,.0f} {m['scan'] / base['scan']:5.2f} "
              f"{m['scan_values']:18,.0f} {m['scan_values'] / base['scan_values']:5.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"records": a.records, "raw_bytes": raw, "batch": a.batch,
                       "rounds": a.rounds, "medians": med}, f, indent=1)


if __name__ == "__main__":
    main()
