"""`tidelog demo`: the whole story the command tells, and the machines it uses.

`run(console, path, events, singles)` is the command's body (the CLI only parses its options,
picks the directory and sets the exit status): ingest synthetic click events and read them back
(throughput, CRC-checked), two named subscribers and their lag while a second wave arrives, a
replayer in a child process killed with SIGKILL and resumed exactly, and the determinism check
of an honest machine and of a counter-example. Holds no state between calls.

`ClickCounter` is a real machine: `tidelog replay PATH --machine tidelog.demo:ClickCounter`
works on a demo log.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Optional, Union

import click
import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.table import Table

import tidelog
from tidelog.clishow import progress_bar, result_table

if TYPE_CHECKING:
    from typing_extensions import Buffer

    from tidelog.cursor import Record, RecordBatch
    from tidelog.log import Log
    from tidelog.replay import DeterminismReport

__all__ = ["ClickCounter", "FlakyCounter", "subscribers", "replay_with_crash", "determinism",
           "sql_question", "run"]

USERS = 100_000           # the demo's user ids are 0 .. USERS-1, keys b"u%06d"
KEY_LEN = 7
_DIGITS = 10 ** np.arange(KEY_LEN - 2, -1, -1, dtype=np.int64)


def _users(batch: RecordBatch) -> Optional[npt.NDArray[np.int64]]:
    """User ids of a batch's keys, vectorized (keys b"u%06d"); None if some key is another shape."""
    try:
        raw = b"".join(batch.keys)   # type: ignore[arg-type]  # a None key: TypeError, below
    except TypeError:                       # a record without a key
        return None
    n = len(batch)
    if len(raw) != n * KEY_LEN:
        return None
    a = np.frombuffer(raw, np.uint8).reshape(n, KEY_LEN)
    digits = a[:, 1:].astype(np.int64) - 48
    if not ((a[:, 0] == ord("u")).all() and ((digits >= 0) & (digits <= 9)).all()):
        return None
    return digits @ _DIGITS


class ClickCounter:
    """Clicks per user: deterministic, so replicas agree and a resumed replay is exact."""

    def __init__(self) -> None:
        self.counts: npt.NDArray[np.int64] = np.zeros(USERS, np.int64)
        self.other = 0            # records that are not demo click events

    def apply(self, record: Record) -> None:
        k = record.key
        if k is not None and len(k) == KEY_LEN and k[:1] == b"u":
            self.counts[int(k[1:])] += 1
        else:
            self.other += 1

    def apply_batch(self, batch: RecordBatch) -> None:
        users = _users(batch)
        if users is None:
            for rec in batch:
                self.apply(rec)
            return
        self.counts += np.bincount(users, minlength=USERS)

    def snapshot(self) -> bytes:
        return self.counts.tobytes() + self.other.to_bytes(8, "little")

    def restore(self, snapshot: bytes) -> None:
        self.counts = np.frombuffer(snapshot[:-8], np.int64).copy()
        self.other = int.from_bytes(snapshot[-8:], "little")


class FlakyCounter(ClickCounter):
    """A machine that breaks the rule: its state depends on something outside the log, how many
    calls this process made before (a counter shared by every instance, as a clock or a global
    would be), so two replicas that apply the same records disagree."""

    calls = 0

    def __init__(self) -> None:
        super().__init__()
        self.last_call = 0

    def apply(self, record: Record) -> None:
        super().apply(record)
        FlakyCounter.calls += 1
        self.last_call = FlakyCounter.calls

    def apply_batch(self, batch: RecordBatch) -> None:
        super().apply_batch(batch)
        FlakyCounter.calls += 1
        self.last_call = FlakyCounter.calls

    def snapshot(self) -> bytes:
        return super().snapshot() + self.last_call.to_bytes(8, "little")

    def restore(self, snapshot: bytes) -> None:
        super().restore(snapshot[:-8])
        self.last_call = int.from_bytes(snapshot[-8:], "little")


def fold(log: Log, upto: int) -> ClickCounter:
    """The reference: counts of the first `upto` records straight from the log."""
    m = ClickCounter()
    cur = log.cursor(log.start_offset)
    while cur.position < upto:
        b = cur.read_batch(min(65536, upto - cur.position))
        if not len(b):
            break
        m.apply_batch(b)
    return m


def subscribers(log: Log, console: Console, ingest_more: Callable[[], None]
                ) -> tuple[dict[str, int], int, float, int]:
    """A fast subscriber follows the log live in a thread (committing as it goes) while
    `ingest_more()` appends a second wave; a slow one reads a quarter and commits. Returns
    ({name: lag}, records the live follower received, seconds)."""
    end0 = log.end_offset
    fast = log.cursor(name="indexer")
    got = [0]
    stop = threading.Event()

    def follow() -> None:
        for batch in fast.follow_batches(timeout=0.5):
            got[0] += len(batch)
            fast.commit()
            if stop.is_set() and fast.position >= log.durable_offset:
                return
    t = threading.Thread(target=follow, name="indexer")
    t0 = time.perf_counter()
    t.start()
    ingest_more()
    log.sync()
    stop.set()
    t.join()
    secs = time.perf_counter() - t0
    slow = log.cursor(name="mailer")
    target = slow.position + (log.durable_offset - slow.position) // 4
    while slow.position < target:
        if not len(slow.read_batch(min(4096, target - slow.position))):
            break
        time.sleep(0.0005)                 # a slow consumer: it does real work per batch
    slow.commit()
    return log.lag(), got[0], secs, end0


_CHILD = """
import sys, tidelog
from tidelog.demo import ClickCounter

path, every, fraction, end = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])


class Paused(ClickCounter):
    # after the batch that reaches kill_at, say so and wait: the parent kills this process
    # there, holding applied records that no checkpoint covers yet
    def apply_batch(self, batch):
        super().apply_batch(batch)
        applied = int(batch.offsets[-1]) + 1
        if applied >= kill_at:
            print("applied", applied, flush=True)
            sys.stdin.readline()


log = tidelog.open(path, readonly=True)
rep = tidelog.Replayer(log, Paused(), name="counts", checkpoint_every=every)
start = rep.position
kill_at = start + max(1, int((end - start) * fraction))
print("start", start, flush=True)
rep.run(until=max(end, start))
print("done", rep.position, flush=True)
"""


def checkpoint_every_for(log: Log) -> int:
    """About ten checkpoints over the log (at least one record apart, at most 100k)."""
    return int(min(100_000, max(1, (log.durable_offset - log.start_offset) // 10)))


def replay_with_crash(log: Log, console: Console, rng: np.random.Generator,
                      checkpoint_every: Optional[int] = None
                      ) -> dict[str, Union[int, float, bool, None]]:
    """A replayer in a child process applies part of the log and is killed (SIGKILL) before its
    next checkpoint; a new Replayer of the same name resumes from its last checkpoint. Its counts
    must equal a fresh fold of the log: nothing lost, nothing counted twice.

    Returns a dict: `start` (where the child's replayer began), `killed_after` (it had applied
    the records below this offset when it was killed; None when there was nothing to replay, so
    no kill), `resumed_from` (the new replayer's position, its last checkpoint), `checkpointed`
    (whether a checkpoint existed), `every`, `end`, `exact` and the counts' summary."""
    end = log.durable_offset
    every = checkpoint_every_for(log) if checkpoint_every is None else checkpoint_every
    fraction = float(rng.uniform(0.3, 0.8))
    child = subprocess.Popen([sys.executable, "-c", _CHILD, log.path, str(every), repr(fraction),
                              str(end)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert child.stdin and child.stdout and child.stderr   # (for mypy) all three are pipes
    killed_at = None
    try:
        first = child.stdout.readline().split()
        if first[:1] != ["start"]:
            raise RuntimeError(f"replayer child failed: {child.stderr.read()[-500:]}")
        start = int(first[1])
        line = child.stdout.readline().split()
        if line[:1] == ["applied"]:
            killed_at = int(line[1])
            child.send_signal(signal.SIGKILL)
        elif line[:1] != ["done"]:
            raise RuntimeError(f"replayer child failed: {child.stderr.read()[-500:]}")
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for f in (child.stdin, child.stdout, child.stderr):
            f.close()
    if killed_at is not None and child.returncode != -signal.SIGKILL:
        raise RuntimeError(f"replayer child exited with status {child.returncode} before it "
                           f"was killed")
    t0 = time.perf_counter()
    rep = tidelog.Replayer(log, ClickCounter(), name="counts", checkpoint_every=every)
    resumed_from = rep.position
    checkpointed = rep.checkpoint_position is not None
    rep.run(until=end)
    resumed_secs = time.perf_counter() - t0
    state = rep.machine
    ref = fold(log, end)
    exact = np.array_equal(state.counts, ref.counts) and state.other == ref.other
    return dict(start=start, killed_after=killed_at, resumed_from=resumed_from,
                checkpointed=checkpointed, every=every, end=end, exact=exact,
                resumed_secs=resumed_secs, total=int(ref.counts.sum()),
                top=int(ref.counts.argmax()), top_count=int(ref.counts.max()))


SQL_TOP_USERS = """
select decode(key) as user, count(*) as clicks,
       count(*) filter (where contains(decode(value), '"type":"purchase"')) as purchases
from log where key is not null group by key order by clicks desc, user limit 5"""


def sql_question(log: Log, console: Console, top_count: Optional[int]) -> bool:
    """The demo's SQL question, answered by DuckDB from the log itself (Log.scan_arrow, zero-
    copy): the users with the most clicks. Checked against the replayer's counts (`top_count`,
    its largest per-user count; None: not known). Without duckdb it says what to install.
    False when the answers differ."""
    from tidelog.arrow import require
    try:
        require("duckdb", "sql")
        require("pyarrow", "sql")
    except ImportError:
        click.echo("sql: the top users in SQL need DuckDB: pip install 'tidelog[sql]' (skipped)")
        return True
    from tidelog import sql
    t0 = time.perf_counter()
    columns, rows = sql.query(log, SQL_TOP_USERS)
    secs = time.perf_counter() - t0
    click.echo(f"sql: DuckDB over the log as the table `log` (Log.scan_arrow: Arrow over the "
               f"mapping, no copy of batch-written values): the top users by clicks ({len(log):,} records, {secs:.2f} s)")
    table = Table(*columns, title="select ... from log group by key order by clicks desc")
    for row in rows:
        table.add_row(*(str(v) for v in row))
    console.print(table)
    if top_count is not None and rows and rows[0][1] != top_count:
        click.echo(f"tidelog: demo: SQL's top user has {rows[0][1]} clicks, the replayer's "
                   f"{top_count}", err=True)
        return False
    if top_count is not None and rows:
        click.echo(f"sql: the top count ({rows[0][1]:,}) is the replayer's")
    return True


def determinism(log: Log) -> tuple[DeterminismReport, float, DeterminismReport]:
    """verify_determinism on the honest machine (agrees) and on FlakyCounter (caught)."""
    every = checkpoint_every_for(log)
    t0 = time.perf_counter()
    good = tidelog.verify_determinism(log, ClickCounter, checkpoint_every=every)
    t_good = time.perf_counter() - t0
    FlakyCounter.calls = 0
    bad = tidelog.verify_determinism(log, FlakyCounter, checkpoint_every=every,
                                     raise_on_divergence=False, locate_record=False)
    return good, t_good, bad


# ------------------------------------------------------------------------------- the command

CHUNK = 10_000        # events per append_batch
BATCH = 65536         # records per read_batch


def run(console: Console, path: str, events: int, singles: int) -> bool:
    """The whole demo on the log at `path`; True when every check held."""
    t0 = time.perf_counter()
    ok, first = _ingest(console, path, events, singles)
    ok = _story(console, path, events, singles, first) and ok
    click.echo(f"demo took {time.perf_counter() - t0:.1f} s")
    return ok


_TYPES = (b"click", b"view", b"scroll", b"add_to_cart", b"purchase")
_PAGES = (b"home", b"search", b"product", b"cart", b"checkout")
_EVENT = b'{"seq":%d,"ts":%d,"user":"u%06d","type":"%s","page":"/%s/%d","x":%d,"y":%d}'


def _click_events(rng: np.random.Generator, seq: int, n: int) -> tuple[list[bytes], list[bytes]]:
    """n synthetic click events (~100 bytes of JSON each) and their keys (the user)."""
    users = rng.integers(0, 100_000, n).tolist()
    kinds = rng.integers(0, len(_TYPES), n).tolist()
    pages = rng.integers(0, len(_PAGES), n).tolist()
    items = rng.integers(0, 10_000, n).tolist()
    xy = rng.integers(0, 2048, (2, n)).tolist()
    ts = 1_700_000_000_000 + seq
    values = [_EVENT % (seq + i, ts + i, u, _TYPES[k], _PAGES[p], it, x, y)
              for i, (u, k, p, it, x, y) in enumerate(zip(users, kinds, pages, items, *xy))]
    return values, [b"u%06d" % u for u in users]


def _story(console: Console, path: str, events: int, singles: int, first: int) -> bool:
    """After the ingest (which began at offset `first`): subscribers, the replayer's crash and
    resume, the determinism checks. True when every check held."""
    rng = np.random.default_rng(7)
    ok = True
    with tidelog.open(path) as log:
        wave = max(1, events // 4)

        def ingest_more() -> None:
            for lo in range(0, wave, CHUNK):
                values, keys = _click_events(rng, 10 ** 9 + lo, min(CHUNK, wave - lo))
                log.append_batch(values, keys=keys)
        click.echo(f"subscribers: two named cursors read while a second wave of {wave:,} events "
                   f"is appended")
        lags, got, secs, before = subscribers(log, console, ingest_more)
        info = log.position_info()
        end = log.end_offset
        table = Table("subscriber", "position", "lag (records)", title="subscribers")
        lead = max(lags, key=lambda k: -lags[k]) if lags else None
        for name, lag in lags.items():
            table.add_row(name + (" (leads)" if name == lead else ""), f"{info[name][0]:,}",
                          f"{lag:,}")
        console.print(table)
        ingested = f"{before - first:,} ingested above"
        if singles:
            ingested += f" ({before - first - singles:,} in batches + {singles:,} one per call)"
        start = log.start_offset
        earlier = f"{first - start:,} from earlier runs, " if first > start else ""
        click.echo(f"the log now holds {len(log):,} records: {earlier}{ingested}, and the "
                   f"second wave of {end - before:,}")
        indexer, mailer = info["indexer"][0], info["mailer"][0]
        click.echo(f"live tail: 'indexer' followed the log from offset {indexer - got:,} and read "
                   f"{got:,} records, the second wave included as it was appended ({secs:.2f} s), "
                   f"committing as it went: lag {end - indexer:,}")
        click.echo(f"slow consumer: 'mailer' does some work per batch; it read a quarter of "
                   f"what was waiting for it and committed at {mailer:,}: lag {end - mailer:,}")

        r = replay_with_crash(log, console, rng)
        if r["killed_after"] is None:
            click.echo(f"replay: replayer 'counts' was already at the end ({r['end']:,}): "
                       f"nothing to replay, so no crash to show")
        else:
            since = (f"its last checkpoint at {r['resumed_from']:,}" if r["checkpointed"] else
                     f"{r['resumed_from']:,} (no checkpoint yet: where it first began)")
            click.echo(f"replay: a replayer in a child process applied records "
                       f"[{r['start']:,}, {r['killed_after']:,}) (checkpointing every "
                       f"{r['every']:,}) and was killed (SIGKILL) before its next checkpoint; "
                       f"a new one resumed from {since} and reached {r['end']:,} in "
                       f"{r['resumed_secs']:.2f} s")
        if r["exact"]:
            click.echo(f"exactly once: its per-user counts ({r['total']:,} clicks; user "
                       f"{r['top']} leads with {r['top_count']}) equal a fresh fold of the log")
        else:
            ok = False
            click.echo("tidelog: demo: the resumed replayer's counts differ from a fresh fold",
                       err=True)
        top = r["top_count"]
        ok = sql_question(log, console, top if r["exact"] and isinstance(top, int) else None) and ok
        good, t_good, bad = determinism(log)
        click.echo(f"determinism: ClickCounter: {good} ({t_good:.2f} s)")
        click.echo("counter-example: FlakyCounter breaks the rule on purpose: its apply() also "
                   "counts the calls this process has made (state outside the log, as a clock "
                   "or a global would be), so two replicas fed the same records end in "
                   "different states; verify_determinism must catch it:")
        click.echo(f"determinism: FlakyCounter (reads state outside the log): {bad}")
        if not good or bad:
            ok = False
            if bad:
                click.echo("tidelog: demo: the counter-example was not caught", err=True)
    return ok


def _ingest(console: Console, path: str, events: int, singles: int) -> tuple[bool, int]:
    rng = np.random.default_rng(2024)
    wcrc = kcrc = 0
    nbytes = 0
    t_gen = t_append = 0.0
    with tidelog.open(path) as log:
        first = log.end_offset
        click.echo(f"demo: {events:,} click events (~100 B, keyed by user) into {log.path}")
        with progress_bar(console) as prog:
            task = prog.add_task("ingest", total=events)
            for lo in range(0, events, CHUNK):
                t0 = time.perf_counter()
                values, keys = _click_events(rng, lo, min(CHUNK, events - lo))
                t1 = time.perf_counter()
                log.append_batch(values, keys=keys)
                t_append += time.perf_counter() - t1
                t_gen += t1 - t0
                wv, wk = b"".join(values), b"".join(keys)
                wcrc, kcrc = zlib.crc32(wv, wcrc), zlib.crc32(wk, kcrc)
                nbytes += len(wv) + len(wk)
                prog.advance(task, len(values))
        t0 = time.perf_counter()
        log.sync()
        t_sync = time.perf_counter() - t0

        v: Buffer           # (typed: the values read back, then the ones appended one by one)
        rcrc = rkcrc = 0
        n = 0
        contiguous = True
        crc32 = zlib.crc32
        cur = log.cursor(first)
        t_batches = 0.0
        t0 = time.perf_counter()
        with progress_bar(console) as prog:
            task = prog.add_task("read + verify", total=events)
            while n < events:
                t1 = time.perf_counter()
                batch = cur.read_batch(min(BATCH, events - n))
                t_batches += time.perf_counter() - t1
                if not len(batch):
                    break
                contiguous &= bool(batch.offsets[0] == first + n)
                for v in batch.values:       # one view at a time: no garbage-collector churn
                    rcrc = crc32(v, rcrc)
                rkcrc = crc32(b"".join(k or b"" for k in batch.keys), rkcrc)
                n += len(batch)
                prog.advance(task, len(batch))
        t_read = time.perf_counter() - t0

        values, keys = _click_events(rng, events, singles)
        append1 = log.append
        t0 = time.perf_counter()
        for v, k in zip(values, keys):
            append1(v, key=k)
        t_single = time.perf_counter() - t0
        single_bytes = sum(map(len, values)) + sum(map(len, keys))
        t0 = time.perf_counter()
        log.sync()
        t_single_sync = time.perf_counter() - t0

    ok = n == events and contiguous and rcrc == wcrc and rkcrc == kcrc
    rows = [("append_batch + sync", events, nbytes, t_append + t_sync),
            ("read_batch (CRC-checked)", n, nbytes, t_batches),
            ("read_batch + Python crc32", n, nbytes, t_read)]
    if singles:
        rows.append(("append (1 per call) + sync", singles, single_bytes,
                     t_single + t_single_sync))
    console.print(result_table("throughput (MB/s: key + value bytes)", rows))
    click.echo(f"(generating the events took {t_gen:.2f} s, not counted above)")
    if ok:
        click.echo(f"verified: {n:,} records read back, offsets contiguous, "
                      f"crc32 values {rcrc:08x} keys {rkcrc:08x} match what was written")
    else:
        click.echo(f"tidelog: demo: MISMATCH: wrote {events} records (crc32 {wcrc:08x}/{kcrc:08x}), "
                   f"read {n} (crc32 {rcrc:08x}/{rkcrc:08x}, contiguous={contiguous})", err=True)
    return ok, first
