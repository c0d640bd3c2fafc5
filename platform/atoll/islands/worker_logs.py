"""Per-island log files: what an island's Ray processes print goes to the run, not the terminal.

Every process of an island (the task that drives its Ray Train run, the Train
controller, the training workers, Ray Train's helper actors) starts with
``setup_hook`` (Ray's ``worker_process_setup_hook``, inherited by every task and
actor the island creates): it points the process's stdout and stderr at a file of
its own in the island's local log folder (``$ATOLL_ISLAND_LOG_DIR``). ``Shipper``
copies that folder into the unit's folder of the store (``experts/00k/logs/``,
``router/logs/``) every few seconds and once more at the end, so ``atoll logs JOB
--expert K`` reads the same files for every target. The driver's console stays
Atoll's own (``-v`` tails these files to it).

Ray prints ``:job_id:``, ``:actor_name:X`` and ``:task_name:X`` marker lines into
a worker's output; the names label the process in ``atoll logs``; the markers
themselves are not shown.
Limitation: on a multi-node island the shipper sees the files of its own node;
processes on other nodes keep theirs on that node (same folder path).
"""
from __future__ import annotations

import os
import re
import socket
import threading
import time
from pathlib import Path

from atoll.store import Store

ENV_DIR = "ATOLL_ISLAND_LOG_DIR"
HOOK = "atoll.islands.worker_logs.setup_hook"
PREFIX = "logs"
_MARK = re.compile(r"^:(actor_name|task_name|job_id):(.*)$")


def setup_hook() -> None:
    """Runs first in every Ray worker process of an island: stdout/stderr -> ``$ATOLL_ISLAND_LOG_DIR/<file>``.
    Never raises (Ray would stop the worker): without a usable folder the output stays Ray's."""
    folder = os.environ.get(ENV_DIR)
    if not folder:
        return
    try:
        _redirect(Path(folder))
    except OSError:
        pass


def _redirect(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{time.strftime('%Y%m%dT%H%M%S')}-{socket.gethostname()}-{os.getpid()}.log"
    import sys

    for s in (sys.stdout, sys.stderr):
        try:
            s.flush()
        except (OSError, ValueError):
            pass
    fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def runtime_env(log_dir: str, env_vars: dict[str, str] | None = None) -> dict:
    """The runtime env of an island's driving task: its log folder and the hook (children inherit both)."""
    from atoll.islands.local_ray import setup_hook_env

    return {"env_vars": {**(env_vars or {}), ENV_DIR: log_dir, **setup_hook_env(HOOK)}}


class Shipper:
    """Copies the files of ``folder`` that grew into ``dest`` (a store folder) every ``interval`` s and at ``stop``."""

    def __init__(self, folder: str | Path, dest: Store, interval: float = 10.0):
        self.folder, self.dest, self.interval = Path(folder), dest, interval
        self.sizes: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="atoll-log-shipper", daemon=True)

    def sync(self) -> int:
        """Uploads every file that changed since the last sync; returns how many. Never raises for the store
        (a log upload must not fail the training)."""
        n = 0
        for f in sorted(self.folder.glob("*.log")) if self.folder.is_dir() else []:
            try:
                size = f.stat().st_size
                if self.sizes.get(f.name) == size:
                    continue
                self.dest.put_file(f.name, f)
                self.sizes[f.name] = size
                n += 1
            except Exception:  # noqa: BLE001 - the store unreachable, a fenced attempt, a file gone: retry later
                continue
        return n

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sync()

    def __enter__(self) -> "Shipper":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.sync()


def label(text: str) -> str:
    """What a log file's process was: the Ray actor/task names it ran (``RayTrainWorker``, ``_fit_island``)."""
    names = []
    for line in text.splitlines()[:2000]:
        m = _MARK.match(line)
        if m and m.group(1) != "job_id" and m.group(2) not in names:
            names.append(m.group(2))
    return ", ".join(names) or "process"


def clean(text: str) -> list[str]:
    """The file's lines without Ray's marker lines."""
    return [ln for ln in text.splitlines() if not _MARK.match(ln)]


def read(unit: Store) -> list[tuple[str, str]]:
    """``[(file name, text)]`` of a unit's log files in the store, oldest first (names start with the time)."""
    out = []
    for key in unit.list(PREFIX):
        if key.endswith(".log"):
            out.append((key.split("/", 1)[1], unit.get_bytes(key).decode("utf-8", "replace")))
    return sorted(out)


class Tail:
    """New complete lines of the ``*.log`` files in some folders (``-v``: island output on the console)."""

    def __init__(self):
        self.offsets: dict[Path, int] = {}
        self.labels: dict[Path, str] = {}

    def lines(self, folders: dict[str, Path]) -> list[str]:
        out = []
        for unit, folder in folders.items():
            for f in sorted(Path(folder).glob("*.log")) if Path(folder).is_dir() else []:
                try:
                    with open(f, "rb") as fh:
                        fh.seek(self.offsets.get(f, 0))
                        data = fh.read()
                except OSError:
                    continue
                end = data.rfind(b"\n") + 1
                if not end:
                    continue
                self.offsets[f] = self.offsets.get(f, 0) + end
                pid = f.stem.rsplit("-", 1)[-1]
                for line in data[:end].decode("utf-8", "replace").splitlines():
                    m = _MARK.match(line)
                    if m:
                        if m.group(1) != "job_id":
                            self.labels[f] = m.group(2)
                        continue
                    out.append(f"({unit} {self.labels.get(f, 'process')} pid={pid}) {line}")
        return out
