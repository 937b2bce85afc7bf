"""Rich widgets shared by the command line, the demo and the quick benchmark: a progress bar
and a throughput table. Holds no state.
"""

from __future__ import annotations

from typing import Iterable, Optional, Tuple

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


def progress_bar(console: Console) -> Progress:
    """A progress bar on `console`, drawn only when it is a terminal."""
    return Progress(TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, disable=not console.is_terminal)


def rate(n: float, seconds: float) -> float:
    """n per second (inf for no time at all)."""
    return n / seconds if seconds > 0 else float("inf")


def result_table(title: str,
                 rows: Iterable[Tuple[str, int, Optional[int], float]]) -> Table:
    """A throughput table of rows (phase, records, bytes or None, seconds)."""
    table = Table("phase", "records", "seconds", "records/s", "MB/s", title=title)
    for name, n, nbytes, seconds in rows:
        table.add_row(name, f"{n:,}", f"{seconds:.3f}", f"{rate(n, seconds):,.0f}",
                      "" if nbytes is None else f"{rate(nbytes, seconds) / 1e6:,.1f}")
    return table
