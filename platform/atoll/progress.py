"""Progress display for long work (rich), with a quiet mode for tests and CI logs."""
from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def console() -> Console:
    return Console(stderr=True)


class _Line:
    """Plain progress for non-terminals: one line every few seconds."""

    def __init__(self, desc: str, total: int | None):
        self.desc, self.total, self.n, self.t0, self.last = desc, total, 0, time.time(), 0.0

    def advance(self, n: int = 1, **fields) -> None:
        self.n += n
        now = time.time()
        if now - self.last > 5 or (self.total and self.n >= self.total):
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
    if os.environ.get("ATOLL_QUIET") or not sys.stderr.isatty():
        yield _Line(desc, total)
        return
    cols = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
    with Progress(*cols, console=console(), transient=False) as p:
        yield _Rich(p, p.add_task(desc, total=total, info=""))
