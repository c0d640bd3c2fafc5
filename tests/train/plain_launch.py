"""Starting plain torch.distributed worker groups (no Ray) for tests: what torchrun does, minimal.

``start_workers`` spawns ``world`` processes of one command with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR=127.0.0.1`` and a free ``MASTER_PORT``; ``wait_all`` waits for them
(bounded) and fails with their output when one fails; ``kill_all`` tears a group down, as
torchrun does when a member dies.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from atoll.parallel.groups import free_port

ROOT = Path(__file__).resolve().parents[2]


def start_workers(args: list[str], world: int, env: dict | None = None) -> list[subprocess.Popen]:
    port = free_port()
    base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world),
            "DS_ACCELERATOR": "cpu", "ATOLL_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "platform"), os.environ.get("PYTHONPATH", "")]),
            **(env or {})}
    procs = []
    for r in range(world):
        log = tempfile.TemporaryFile()
        p = subprocess.Popen([sys.executable, *args], env={**base, "RANK": str(r), "LOCAL_RANK": str(r)},
                             stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT))
        p.log = log  # type: ignore[attr-defined]
        procs.append(p)
    return procs


def output(p: subprocess.Popen, tail: int = 4000) -> str:
    p.log.seek(0)  # type: ignore[attr-defined]
    return p.log.read().decode(errors="replace")[-tail:]  # type: ignore[attr-defined]


def kill_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
    for p in procs:
        p.wait(timeout=30)


def wait_all(procs: list[subprocess.Popen], timeout: float = 600) -> None:
    """Waits for every worker; on a failure or the timeout, kills the group and raises with the output."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        codes = [p.poll() for p in procs]
        if any(c not in (None, 0) for c in codes) or all(c == 0 for c in codes):
            break
        time.sleep(0.2)
    codes = [p.poll() for p in procs]
    if all(c == 0 for c in codes):
        return
    kill_all(procs)
    logs = "\n".join(f"--- rank {r} (exit {c}) ---\n{output(p)}" for r, (p, c) in enumerate(zip(procs, codes)))
    raise AssertionError(f"worker group failed or timed out after {timeout:.0f}s:\n{logs}")


def run_workers(args: list[str], world: int, timeout: float = 600, env: dict | None = None) -> None:
    wait_all(start_workers(args, world, env), timeout)
