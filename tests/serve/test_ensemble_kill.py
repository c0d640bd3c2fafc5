"""Killing the ensemble replica under traffic: the requests in flight get a 503 with Retry-After (never a
hang, never another 5xx), Serve replaces the replica, and the new one serves the same images."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from serve_replicas import kill, replica_actors, wait_replaced
from test_app import png_array

pytestmark = pytest.mark.slow


def test_killing_the_ensemble_replica_gives_503_then_recovers(client, served):
    (actor,) = replica_actors("Ensemble")
    body = {"n": 2, "steps": 40, "class": 1, "strategy": "full", "seed": 3}
    stop, results = threading.Event(), []

    def traffic():
        deadline = time.monotonic() + 90
        while not stop.is_set() and time.monotonic() < deadline and len(results) < 300:
            t0 = time.monotonic()
            r = client.post("/v1/generate", json=body)
            results.append((r.status_code, r.headers.get("retry-after"), r.text if r.status_code != 200 else "",
                            time.monotonic() - t0))

    threads = [threading.Thread(target=traffic) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    kill(actor)
    wait_replaced("Ensemble", [actor[0]])
    time.sleep(2.0)  # traffic after the recovery
    stop.set()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a client hung"
    codes = [c for c, *_ in results]
    assert set(codes) <= {200, 503}, sorted(set(codes))
    assert 503 in codes, "no request was in flight when the replica died"
    for c, retry, text, _ in results:
        if c == 503:
            assert retry and int(retry) >= 1 and '"error"' in text
    assert max(s for *_, s in results) < 75  # bounded by the ingress's request timeout, never a hang
    assert codes[-1] == 200 or any(c == 200 for c in codes[-3:])  # served again after the replacement
    r = client.post("/v1/generate", json={**body, "steps": 5, "n": 1})
    want = served["ens"].sample(1, class_labels=1, steps=5, seed=3, strategy="full").images[0, 0].numpy()
    assert r.status_code == 200 and np.array_equal(png_array(r.content), want)
