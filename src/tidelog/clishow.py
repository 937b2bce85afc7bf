"""Rich widgets shared by the command line, the demo and the quick benchmark: a progress bar
and a throughput table. Holds no state.
"""

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

def _progress(console):
    return Progress(TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, disable=not console.is_terminal)



def _rate(n, seconds):
    return n / seconds if seconds > 0 else float("inf")


def _result_table(title, rows):
    table = Table("phase", "records", "seconds", "records/s", "MB/s", title=title)
    for name, n, nbytes, seconds in rows:
        table.add_row(name, f"{n:,}", f"{seconds:.3f}", f"{_rate(n, seconds):,.0f}",
                      "" if nbytes is None else f"{_rate(nbytes, seconds) / 1e6:,.1f}")
    return table
