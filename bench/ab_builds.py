#!/usr/bin/env python3
"""Two builds of tidelog against each other, pair by pair, on compare.py's tidelog workloads.

    python bench/ab_builds.py A_SRC B_SRC [--pairs 9] [--size 100] [--dir DIR]

A_SRC and B_SRC are directories holding a built `tidelog` package (e.g. a worktree's src/ after
`python setup.py build_ext --inplace`). One process cannot import two builds of the same
extension, so each repeat runs each build in a fresh child process (the same workloads and record
counts as compare.py: append, batch, scan, read), A and B alternated pair by pair, the order
flipped every pair, so drift of a shared machine hits both alike. Each child runs the workloads
--inner times and reports its best rate for each. Prints records per second: the median over
the pairs for each build and the median of the per-pair ratios A/B.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOADS = ("append", "batch", "scan", "read")

CHILD = r"""
import json, os, random, shutil, sys, tempfile
sys.path.insert(0, sys.argv[1])                         # bench/: compare.py
import compare
size, root = int(sys.argv[2]), sys.argv[3]
import tidelog
assert os.path.dirname(tidelog.__file__).startswith(sys.argv[4]), tidelog.__file__
t = compare.Tidelog()
n = compare.counts(size, False)
rng = random.Random(7)
values = [rng.randbytes(size) for _ in range(compare.BATCH)]
inner = int(sys.argv[5])
out = {w: [] for w in ("append", "batch", "scan", "read")}
d = tempfile.mkdtemp(dir=root)
t.prepare(d, values, n["scan"])
offsets = [rng.randrange(n["scan"]) for _ in range(min(n["read"], n["scan"]))]
for _ in range(inner):
    for w in ("append", "batch"):
        e = tempfile.mkdtemp(dir=root)
        out[w].append(n[w] / compare.run_cell(getattr(t, w), e, values, n[w]))
        shutil.rmtree(e)
    out["scan"].append(n["scan"] / compare.run_cell(t.scan, d, n["scan"]))
    out["read"].append(len(offsets) / compare.run_cell(t.read, d, offsets))
shutil.rmtree(d)
print(json.dumps({w: max(v) for w, v in out.items()}))     # the best of the inner repeats
"""


def run(src, size, root, inner):
    env = dict(os.environ, PYTHONPATH=src)
    p = subprocess.run([sys.executable, "-c", CHILD, HERE, str(size), root,
                        os.path.abspath(src), str(inner)], env=env, capture_output=True, text=True,
                       timeout=600)
    if p.returncode:
        sys.exit(f"child for {src} failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--pairs", type=int, default=9)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--inner", type=int, default=3,
                    help="repeats inside each child; the child reports the best (the least "
                         "disturbed by other load on a shared machine)")
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="tidelog-ab-", dir=args.dir)
    res = {"a": [], "b": []}
    try:
        for i in range(args.pairs):
            order = ("a", "b") if i % 2 == 0 else ("b", "a")
            for k in order:
                res[k].append(run(getattr(args, k), args.size, root, args.inner))
            print(f"pair {i + 1}/{args.pairs}", file=sys.stderr, flush=True)
    finally:
        os.rmdir(root)
    print(f"A = {args.a}\nB = {args.b}\nvalue size {args.size} B, {args.pairs} pairs, "
          f"records/s (median over pairs of each child's best of {args.inner}), ratio = median of "
          f"per-pair A/B (min..max)")
    print(f"{'workload':10} {'A':>12} {'B':>12} {'A/B':>8}   spread of A/B")
    for w in WORKLOADS:
        a = [r[w] for r in res["a"]]
        b = [r[w] for r in res["b"]]
        ratios = [x / y for x, y in zip(a, b)]
        print(f"{w:10} {statistics.median(a):12,.0f} {statistics.median(b):12,.0f} "
              f"{statistics.median(ratios):8.3f}   {min(ratios):.3f}..{max(ratios):.3f}")


if __name__ == "__main__":
    main()
