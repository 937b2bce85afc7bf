"""Instructions per record of the read paths over a log of single appends, by callgrind (stable on
a shared, noisy machine where wall-clock A/B pairs are not): for each Python given (each a venv
with a tidelog build), each path runs once with 1 pass and once with 2 passes over a 50,000-record
log under `valgrind --tool=callgrind`; (2-pass total - 1-pass total) / 50,000 is the cost of one
record. Paths: iter (cursor iteration, len(value)), batch (read_batch() and a memoryview per
value), numpy (read_batch(65536).values_array of 64 B rows, summed), read (random log.read(o)).

    python bench/instr_read.py /path/a/bin/python /path/b/bin/python
"""
import argparse
import os
import random
import re
import subprocess
import sys
import tempfile

N = 50_000
OPS = ("iter", "batch", "numpy", "read")


def child(op: str, passes: int, d: str) -> None:
    import numpy as np
    import tidelog
    path = os.path.join(d, "log-" + op)
    if passes == 0:
        with tidelog.open(path, durability="none") as log:
            for i in range(N):
                log.append((b"%08d" % i) * 8 if op == "numpy" else (b"%08d" % i) * 12 + b"xxxx")
        return
    with tidelog.open(path, readonly=True) as log:
        offs = list(range(N))
        random.Random(1).shuffle(offs)
        s = 0
        for _ in range(passes):
            if op == "iter":
                for r in log.cursor(0):
                    s += len(r.value)
            elif op in ("batch", "numpy"):
                c = log.cursor(0)
                while True:
                    b = c.read_batch(65536)
                    if not len(b):
                        break
                    if op == "batch":
                        for v in b.values:
                            s += len(v)
                    else:
                        s += int(b.values_array(np.dtype((np.uint8, 64))).sum())
            else:
                for o in offs:
                    s += len(log.read(o).value)


def total(py: str, op: str, passes: int, d: str) -> int:
    out = os.path.join(d, f"cg.{op}.{passes}")
    env = dict(os.environ, PYTHONHASHSEED="0", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", py,
                    __file__, "--child", op, str(passes), d], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(out) as f:
        return int(re.search(r"^(?:summary|totals): (\d+)", f.read(), re.M).group(1))


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pythons", nargs="*", help="Python interpreters, each with a tidelog build "
                    "(default: this one)")
    pythons = ap.parse_args().pythons or [sys.executable]
    print("instructions per record (callgrind, 2 passes - 1 pass, / %d)" % N)
    print("%-50s" % "python" + "".join("%8s" % op for op in OPS))
    for py in pythons:
        with tempfile.TemporaryDirectory() as d:
            row = []
            for op in OPS:
                subprocess.run([py, __file__, "--child", op, "0", d], check=True)
                row.append((total(py, op, 2, d) - total(py, op, 1, d)) // N)
        print("%-50s" % py[-50:] + "".join("%8d" % x for x in row))


if __name__ == "__main__":
    main()
