"""Measuring what islands send: a byte-counting TCP proxy per island in front of the S3 server,
and a sampler of the islands' TCP connections (to prove none goes from one island to another)."""
from __future__ import annotations

import socket
import threading
import time

import psutil


class CountingProxy:
    """127.0.0.1:PORT -> upstream; counts bytes each way (to_store = requests + uploads)."""

    def __init__(self, upstream_port: int):
        self.upstream = ("127.0.0.1", upstream_port)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.to_store = self.from_store = self.connections = 0
        self._lock = threading.Lock()
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._pump, args=(client, up, "to_store"), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, client, "from_store"), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, counter: str) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
                with self._lock:
                    setattr(self, counter, getattr(self, counter) + len(data))
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop = True
        self.sock.close()


class ConnectionSampler:
    """Every ``interval`` s: each cluster's processes, their listening ports and their TCP peers.

    ``crossings()`` lists every connection from a process of one cluster to a port
    some process of another cluster listens on (should be empty)."""

    def __init__(self, clusters: dict, interval: float = 0.5):
        self.clusters, self.interval = clusters, interval
        self.listening: dict[str, set[int]] = {n: set() for n in clusters}
        self.peers: dict[str, set[int]] = {n: set() for n in clusters}
        self.samples = 0
        self.max_procs: dict[str, int] = {n: 0 for n in clusters}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for name, c in self.clusters.items():
                procs = c.processes()
                self.max_procs[name] = max(self.max_procs[name], len(procs))
                for p in procs:
                    try:
                        conns = p.net_connections(kind="tcp")
                    except psutil.Error:
                        continue
                    for k in conns:
                        if k.status == psutil.CONN_LISTEN:
                            self.listening[name].add(k.laddr.port)
                        elif k.raddr:
                            self.peers[name].add(k.raddr.port)
            self.samples += 1
            self._stop.wait(self.interval)

    def crossings(self) -> list[str]:
        out = []
        for a in self.clusters:
            for b in self.clusters:
                if a != b:
                    hit = self.peers[a] & self.listening[b]
                    if hit:
                        out.append(f"{a} -> {b} ports {sorted(hit)}")
        return out
