"""Linux network namespaces for tests: islands on hosts of their own, a store host, links that can be cut.

Topology (``Topology.create``), all inside this machine; names and addresses are the test's own::

    island A (10.N.1.2) ---- veth ---- (10.N.1.1)
                                          store host S: the S3 server on 10.N.0.1, the control plane
    island B (10.N.2.2) ---- veth ---- (10.N.2.1)

A and B each have one route: to the store's address via their link. S does not
forward (``net.ipv4.ip_forward=0``), so no packet can go from A to B or back:
isolation by construction. ``cut`` sets S's end of an island's link down (the
island's packets are then dropped, its own addresses keep working); ``restore``
sets it up again. ``destroy`` kills every process left in the namespaces and
deletes them (veths go with them).
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field


def run(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check, timeout=timeout)


def permitted() -> str | None:
    """None when network namespaces can be made here, else why not (the skip reason)."""
    probe = f"atoll-probe-{uuid.uuid4().hex[:6]}"
    try:
        out = run("ip", "netns", "add", probe, check=False)
    except FileNotFoundError:
        return "the `ip` command (iproute2) is not installed"
    if out.returncode != 0:
        return f"`ip netns add` is not permitted here: {out.stderr.strip() or out.stdout.strip()}"
    run("ip", "netns", "del", probe, check=False)
    return None


@dataclass
class Topology:
    tag: str
    net: int                      # the N of 10.N.x.y
    ns: dict[str, str] = field(default_factory=dict)      # role (a, b, s) -> namespace name
    links: dict[str, str] = field(default_factory=dict)   # island -> S's end of its veth

    @property
    def store_ip(self) -> str:
        return f"10.{self.net}.0.1"

    def island_ip(self, island: str) -> str:
        return f"10.{self.net}.{self._i(island)}.2"

    def hub_ip(self, island: str) -> str:
        return f"10.{self.net}.{self._i(island)}.1"

    @staticmethod
    def _i(island: str) -> int:
        return {"a": 1, "b": 2}[island]

    @classmethod
    def create(cls) -> "Topology":
        tag = uuid.uuid4().hex[:6]
        t = cls(tag, random.randrange(200, 250), {r: f"atoll-{tag}-{r}" for r in ("a", "b", "s")})
        try:
            for name in t.ns.values():
                run("ip", "netns", "add", name)
                run("ip", "-n", name, "link", "set", "lo", "up")
            s = t.ns["s"]
            run("ip", "-n", s, "addr", "add", f"{t.store_ip}/32", "dev", "lo")
            run("ip", "netns", "exec", s, "sysctl", "-qw", "net.ipv4.ip_forward=0")
            for isl in ("a", "b"):
                inner, hub = f"i{isl}{tag}", f"h{isl}{tag}"
                run("ip", "link", "add", inner, "type", "veth", "peer", "name", hub)
                run("ip", "link", "set", inner, "netns", t.ns[isl])
                run("ip", "link", "set", hub, "netns", s)
                run("ip", "-n", t.ns[isl], "addr", "add", f"{t.island_ip(isl)}/24", "dev", inner)
                run("ip", "-n", s, "addr", "add", f"{t.hub_ip(isl)}/24", "dev", hub)
                run("ip", "-n", t.ns[isl], "link", "set", inner, "up")
                run("ip", "-n", s, "link", "set", hub, "up")
                run("ip", "-n", t.ns[isl], "route", "add", f"{t.store_ip}/32", "via", t.hub_ip(isl))
                t.links[isl] = hub
        except BaseException:
            t.destroy()
            raise
        return t

    def exec_cmd(self, role: str, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns[role], *cmd]

    def popen(self, role: str, cmd: list[str], env: dict[str, str], **kw) -> subprocess.Popen:
        return subprocess.Popen(self.exec_cmd(role, *cmd), env=env, **kw)

    def routes(self, role: str) -> list[str]:
        return run("ip", "-n", self.ns[role], "route", "show").stdout.strip().splitlines()

    def forwarding(self, role: str) -> str:
        return run("ip", "netns", "exec", self.ns[role], "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip()

    def cut(self, island: str) -> None:
        run("ip", "-n", self.ns["s"], "link", "set", self.links[island], "down")

    def restore(self, island: str) -> None:
        run("ip", "-n", self.ns["s"], "link", "set", self.links[island], "up")

    def pids(self, role: str) -> list[int]:
        out = run("ip", "netns", "pids", self.ns[role], check=False).stdout.split()
        return [int(p) for p in out if p.isdigit()]

    def kill_all(self, role: str) -> int:
        """Kills every process in the namespace (all of them are this test's): TERM, then KILL."""
        n = 0
        for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 2.0)):
            pids = [p for p in self.pids(role) if p != os.getpid()]
            for p in pids:
                try:
                    os.kill(p, sig)
                    n += 1
                except ProcessLookupError:
                    pass
            deadline = time.time() + wait
            while pids and time.time() < deadline and self.pids(role):
                time.sleep(0.2)
        return n

    def destroy(self) -> None:
        for role, name in self.ns.items():
            if run("ip", "netns", "pids", name, check=False).returncode == 0:
                self.kill_all(role)
            run("ip", "netns", "del", name, check=False)
