"""Independent Ray clusters on 127.0.0.1 for tests: start one, find its processes, kill ONE of them.

``ray stop`` kills every Ray cluster of the machine; these helpers only touch the
processes of one cluster: those whose command line names its temp dir or GCS
port, and all their descendants (Ray workers rename themselves ``ray::...``).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil

VENV_BIN = str(Path(sys.executable).parent)


@dataclass
class Cluster:
    name: str
    temp_dir: str
    gcs_port: int
    dashboard_port: int
    ports: dict[str, int] = field(default_factory=dict)
    worker_ports: tuple[int, int] = (0, 0)

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def roots(self) -> list[psutil.Process]:
        marks = (self.temp_dir, f"127.0.0.1:{self.gcs_port}", f"--gcs_server_port={self.gcs_port}")
        out = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                cmd = " ".join(p.info["cmdline"] or [])
            except (psutil.Error, TypeError):
                continue
            if p.pid != os.getpid() and any(m in cmd for m in marks):
                out.append(p)
        return out

    def processes(self) -> list[psutil.Process]:
        """Every live process of this cluster (daemons, workers, job drivers, train workers)."""
        seen: dict[int, psutil.Process] = {}
        for r in self.roots():
            seen[r.pid] = r
            try:
                for c in r.children(recursive=True):
                    seen[c.pid] = c
            except psutil.Error:
                pass
        return list(seen.values())

    def kill(self) -> int:
        """SIGKILLs this cluster's processes (and only them); returns how many."""
        n = 0
        for _ in range(3):
            procs = self.processes()
            if not procs:
                break
            for p in procs:
                try:
                    p.send_signal(signal.SIGKILL)
                    n += 1
                except psutil.Error:
                    pass
            psutil.wait_procs(procs, timeout=5)
        return n


def start_cluster(name: str, ports: list[int], worker_ports: tuple[int, int], env: dict[str, str]) -> Cluster:
    """``ray start --head`` bound to 127.0.0.1 with its own ports and temp dir (auth disabled)."""
    temp_dir = f"/tmp/atr-{name}-{uuid.uuid4().hex[:6]}"   # short: Unix socket paths are limited
    names = ("gcs", "dashboard", "client", "node_manager", "object_manager", "agent_listen", "agent_grpc",
             "runtime_env_agent", "metrics")
    pm = dict(zip(names, ports))
    cmd = [os.path.join(VENV_BIN, "ray"), "start", "--head", "--node-ip-address=127.0.0.1",
           f"--port={pm['gcs']}", "--dashboard-host=127.0.0.1", f"--dashboard-port={pm['dashboard']}",
           f"--ray-client-server-port={pm['client']}", f"--node-manager-port={pm['node_manager']}",
           f"--object-manager-port={pm['object_manager']}", f"--dashboard-agent-listen-port={pm['agent_listen']}",
           f"--dashboard-agent-grpc-port={pm['agent_grpc']}", f"--runtime-env-agent-port={pm['runtime_env_agent']}",
           f"--metrics-export-port={pm['metrics']}", f"--min-worker-port={worker_ports[0]}",
           f"--max-worker-port={worker_ports[1]}", "--num-cpus=1", f"--temp-dir={temp_dir}",
           "--include-dashboard=true", "--disable-usage-stats"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    c = Cluster(name, temp_dir, pm["gcs"], pm["dashboard"], pm, worker_ports)
    if out.returncode != 0:
        c.kill()
        raise RuntimeError(f"ray start for cluster {name} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return c


def wait_jobs_api(c: Cluster, timeout: float = 60.0) -> None:
    import requests

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if requests.get(f"{c.address}/api/version", timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the Jobs API of cluster {c.name} ({c.address}) did not come up in {timeout}s")


def cleanup(c: Cluster) -> None:
    c.kill()
    shutil.rmtree(c.temp_dir, ignore_errors=True)
