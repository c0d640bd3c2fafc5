"""Progress display for long work (rich), with a quiet mode for tests and CI logs.

On a terminal: rich progress bars and tables. Anywhere else (a CI log, ``make demo
> log``, a pipe): plain lines, no colour codes, no wrapped messages, and tables as
wide as they need (``COLUMNS`` still wins when set), so no line is cut in the
middle of a table.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


#: how wide plain (non-terminal) output may be before rich wraps a table's cells
PLAIN_WIDTH = 240


def console() -> Console:
    """The console on stderr: rich on a terminal; plain, unwrapped and wide anywhere else."""
    if sys.stderr.isatty():
        return Console(stderr=True)
    width = int(os.environ.get("COLUMNS") or 0) or PLAIN_WIDTH
    return Console(stderr=True, width=width, soft_wrap=True, no_color=True, highlight=False, emoji=False)


def plain() -> bool:
    """True when progress is printed as plain lines (not a terminal, or ``ATOLL_QUIET``)."""
    return bool(os.environ.get("ATOLL_QUIET")) or not sys.stderr.isatty()


def interval_s() -> float:
    """Seconds between two plain progress lines of one task (``ATOLL_PROGRESS_INTERVAL``, default 30)."""
    return float(os.environ.get("ATOLL_PROGRESS_INTERVAL") or 30.0)


class _Line:
    """Plain progress for non-terminals: the first step, then one line per interval, and the last step."""

    def __init__(self, desc: str, total: int | None):
        self.desc, self.total, self.n, self.t0, self.last = desc, total, 0, time.time(), 0.0
        self.every = interval_s()

    def advance(self, n: int = 1, **fields) -> None:
        self.n += n
        now = time.time()
        if now - self.last > self.every or (self.total and self.n >= self.total):
            self.last = now
            extra = " ".join(f"{k}={v}" for k, v in fields.items())
            tot = f"/{self.total}" if self.total else ""
            el = now - self.t0
            eta = f" eta {el * (self.total - self.n) / self.n:.0f}s" if self.total and 0 < self.n < self.total else ""
            print(f"[{self.desc}] {self.n}{tot} {el:.1f}s{eta} {extra}".rstrip(), file=sys.stderr, flush=True)


class _Rich:
    def __init__(self, progress: Progress, task):
        self.p, self.task = progress, task

    def advance(self, n: int = 1, **fields) -> None:
        info = " ".join(f"{k}={v}" for k, v in fields.items())
        self.p.update(self.task, advance=n, info=info)


@contextlib.contextmanager
def task(desc: str, total: int | None = None) -> Iterator[_Line | _Rich]:
    """``with task("shards", total=7) as t: ... t.advance()``"""
    if plain():
        yield _Line(desc, total)
        return
    cols = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
    with Progress(*cols, console=console(), transient=False) as p:
        yield _Rich(p, p.add_task(desc, total=total, info=""))
