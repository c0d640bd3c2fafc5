"""Live per-island progress (step, loss, samples/s, ETA), read from the store.

Works the same for every target: islands write ``progress.json``; this polls it.
"""
from __future__ import annotations

import sys
import time

from rich.live import Live
from rich.table import Table

from atoll.islands.plan import Unit
from atoll.progress import console
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


def table(rows: list[dict]) -> Table:
    t = Table(title="islands", expand=False)
    for c in ("island", "state", "step", "loss", "samples/s", "ETA", "restarts"):
        t.add_column(c, justify="right" if c not in ("island", "state") else "left")
    for r in rows:
        step = f"{r['step']}/{r['total']}" if r.get("step") is not None else "-"
        t.add_row(r["name"], r["state"], step, f"{r['loss']:.4f}" if r.get("loss") is not None else "-",
                  f"{r['samples_per_s']:.0f}" if r.get("samples_per_s") else "-", _fmt_eta(r.get("eta_s")),
                  str(r.get("restarts") or 0))
    return t


class Display:
    """``with Display(run, units) as d: ... d.refresh(states)``"""

    def __init__(self, run: Store, units: list[Unit], interval: float = 10.0):
        self.run, self.units, self.interval, self.last = run, units, interval, 0.0
        self.tty = sys.stderr.isatty()
        self.live = Live(console=console(), refresh_per_second=2) if self.tty else None

    def __enter__(self):
        if self.live:
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live:
            self.live.__exit__(*exc)

    def refresh(self, states: dict[str, str], force: bool = False) -> None:
        rows = snapshot(self.run, self.units, states)
        if self.live:
            self.live.update(table(rows))
        elif force or time.time() - self.last >= self.interval:
            self.last = time.time()
            parts = [f"{r['name']}:{r['state']}" + (f" {r['step']}/{r['total']} loss={r['loss']:.4f}"
                                                      if r.get("step") and r.get("loss") is not None else "")
                     for r in rows]
            print("[islands] " + " | ".join(parts), file=sys.stderr, flush=True)
