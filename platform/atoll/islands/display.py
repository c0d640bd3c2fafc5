"""Live per-island progress (step, loss, samples/s, ETA), read from the store.

Works the same for every target: islands write ``progress.json``; this polls it.
On a terminal: a live table. Anywhere else: one plain line per island per
interval (``ATOLL_PROGRESS_INTERVAL`` seconds, default 30), only for islands
whose state or step changed, and a last line for each when the islands end.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from rich.live import Live
from rich.table import Table
from rich.text import Text

from atoll.islands.plan import Unit
from atoll.progress import console, interval_s, plain
from atoll.store import Store


def _fmt_eta(s) -> str:
    if s is None:
        return "-"
    s = int(s)
    return f"{s // 60}m{s % 60:02d}s"


def snapshot(run: Store, units: list[Unit], states: dict[str, str]) -> list[dict]:
    rows = []
    for u in units:
        p = {}
        try:
            if run.exists(f"{u.prefix}/progress.json"):
                p = run.get_json(f"{u.prefix}/progress.json")
        except Exception:  # a torn read of a file being replaced: show the last state
            p = {}
        rows.append({"name": u.name, "state": states.get(u.name, p.get("state", "queued")), **{
            k: p.get(k) for k in ("step", "total", "loss", "samples_per_s", "eta_s", "restarts")}})
    return rows


def table(rows: list[dict], title: str = "islands") -> Table:
    t = Table(title=title, expand=False)
    for c in ("island", "state", "step", "loss", "samples/s", "ETA", "restarts"):
        t.add_column(c, justify="right" if c not in ("island", "state") else "left")
    for r in rows:
        step = f"{r['step']}/{r['total']}" if r.get("step") is not None else "-"
        t.add_row(r["name"], r["state"], step, f"{r['loss']:.4f}" if r.get("loss") is not None else "-",
                  f"{r['samples_per_s']:.0f}" if r.get("samples_per_s") else "-", _fmt_eta(r.get("eta_s")),
                  str(r.get("restarts") or 0))
    return t


def line(r: dict, elapsed: float) -> str:
    """One island as one plain line: ``[islands 2m30s] expert-000 training step 120/600 loss 0.3397 ...``."""
    parts = [f"[islands {_fmt_eta(elapsed)}] {r['name']} {r['state']}"]
    if r.get("step") is not None:
        parts.append(f"step {r['step']}/{r['total']}")
    if r.get("loss") is not None:
        parts.append(f"loss {r['loss']:.4f}")
    if r.get("samples_per_s"):
        parts.append(f"{r['samples_per_s']:.0f} samples/s")
    if r.get("eta_s") is not None and r["state"] not in ("done", "failed"):
        parts.append(f"ETA {_fmt_eta(r['eta_s'])}")
    if r.get("restarts"):
        parts.append(f"restarts {r['restarts']}")
    return " ".join(parts)


class Display:
    """``with Display(run, units) as d: ... d.refresh(states)``. ``log_dirs`` (``-v``): island log folders
    whose new lines are printed too."""

    def __init__(self, run: Store, units: list[Unit], interval: float | None = None,
                 log_dirs: dict[str, Path] | None = None):
        self.run, self.units = run, units
        self.interval = interval_s() if interval is None else interval
        self.t0, self.last = time.time(), 0.0
        self.printed: dict[str, tuple] = {}
        self.live = None if plain() else Live(console=console(), refresh_per_second=2)
        self.log_dirs = log_dirs
        self.tail = None
        if log_dirs:
            from atoll.islands.worker_logs import Tail

            self.tail = Tail()

    def __enter__(self):
        if self.live:
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.tail:
            self._echo_logs()
        if self.live:
            self.live.__exit__(*exc)

    def _echo_logs(self) -> None:
        for ln in self.tail.lines(self.log_dirs):
            if self.live:
                self.live.console.print(Text(ln), soft_wrap=True)
            else:
                print(ln, file=sys.stderr, flush=True)

    def refresh(self, states: dict[str, str], force: bool = False) -> None:
        if self.tail:
            self._echo_logs()
        rows = snapshot(self.run, self.units, states)
        elapsed = time.time() - self.t0
        if self.live:
            self.live.update(table(rows, title=f"islands ({_fmt_eta(elapsed)})"))
            return
        if not force and time.time() - self.last < self.interval:
            return
        self.last = time.time()
        for r in rows:
            key = (r["state"], r.get("step"))
            if self.printed.get(r["name"]) != key:
                self.printed[r["name"]] = key
                print(line(r, elapsed), file=sys.stderr, flush=True)
