"""Experts scaled by routed traffic (``serve.experts.scaleOn: rows``), over time, in distributed mode.

    .venv/bin/python bench/autoscale.py [--size small|default] [--out bench/results/autoscale.md]

Builds a K=4 run in a temporary store (quickstart shapes: DiT-XXS/4 experts on 28x28x1, 10 classes,
random weights through the real ``save_pretrained``; serving load does not depend on training) whose
Router-XS@16 routes class ``c`` to expert ``c % 4`` (its class embedding drives the head: a routing
table, so the skew is known), serves it on 127.0.0.1 with every expert on ``numReplicas: auto,
minReplicas: 0, scaleOn: rows`` and drives it through phases, each bounded in time:

    skewed   80% of requests for class 0 (expert 0), 20% spread over classes 1..9
    idle     no requests: the experts scale to zero after ``idleS``
    uniform  classes 0..9 alike: every expert cold-starts
    idle     again

It polls each expert's running replicas every 0.5 s and writes ``autoscale.md`` (per phase: requests,
errors, rerouted answers, p50/p95 latency, each expert's share of the routed rows and its replicas)
and ``autoscale.png`` (replicas per expert over time). With ``--size small`` a smoke run: short phases.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("ATOLL_QUIET", "1")

K = 4
CLASSES = [f"class-{i}" for i in range(10)]
#: (phase, seconds, concurrent clients) per size
PHASES = {"default": [("skewed", 90, 4), ("idle", 40, 0), ("uniform", 60, 4), ("idle", 40, 0)],
          "small": [("skewed", 12, 2), ("idle", 6, 0), ("uniform", 8, 2), ("idle", 4, 0)]}  # a smoke run
SERVE = {"default": {"targetRowsPerS": 40, "idleS": 15, "upscaleDelayS": 3, "maxReplicas": 3},
         "small": {"targetRowsPerS": 8, "idleS": 4, "upscaleDelayS": 1, "maxReplicas": 2}}


def build_run(root: str, size: str) -> str:
    """The K=4 run; its router sends class c to expert c % K: the class embedding of c is +20 in dimension
    c % K, the head's shift reads those dimensions (x 10) and the head's logit k is shift k."""
    import torch

    from atoll.models.checkpoint import save_pretrained
    from atoll.models.dit import DiTConfig
    from atoll.models.router import RouterConfig
    from atoll.spec import loads
    from atoll.store import open_store

    s = SERVE[size]
    job = loads(textwrap.dedent(f"""
        apiVersion: atoll/v1
        kind: Job
        metadata: {{name: scaled}}
        spec:
          store: {{uri: "{root}"}}
          data: {{source: {{type: fashion-mnist}}}}
          partition: {{k: {K}}}
          experts: {{model: DiT-XXS/4}}
          router: {{model: Router-XS@16}}
          serve:
            mode: distributed
            maxSteps: 100
            router: {{numReplicas: 1, numCpus: 0.2, maxBatchSize: 64}}
            experts: {{numReplicas: auto, minReplicas: 0, maxReplicas: {s['maxReplicas']}, numCpus: 0.1,
                       scaleOn: rows, targetRowsPerS: {s['targetRowsPerS']}, idleS: {s['idleS']},
                       upscaleDelayS: {s['upscaleDelayS']}}}
        """))
    run = open_store(root).sub("scaled")
    run.put_json("job.json", {"spec": job.model_dump(mode="json", by_alias=True)})
    run.commit("data", {"count": 0, "num_classes": len(CLASSES), "class_names": CLASSES, "shards": []})
    g = torch.Generator().manual_seed(0)
    for i in range(K):
        e = DiTConfig("DiT-XXS/4", 28, 1, num_classes=len(CLASSES)).build()
        with torch.no_grad():
            for p in e.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
        save_pretrained(e.eval(), run, f"experts/{i:03d}/model")
        run.commit(f"experts/{i:03d}", {"name": f"expert-{i:03d}"})
    r = RouterConfig("Router-XS@16", 28, 1, num_experts=K, num_classes=len(CLASSES)).build()
    with torch.no_grad():
        D = r.head.weight.shape[1]
        r.y_embedder.weight.zero_()
        for c in range(len(CLASSES)):
            r.y_embedder.weight[c, c % K] = 20.0
        lin = r.head_modulation[-1]
        lin.weight.zero_(), lin.bias.zero_()
        for k in range(K):
            lin.weight[k, k] = 10.0        # shift_k = 10 * silu(c)_k
        r.head.weight.zero_(), r.head.bias.zero_()
        r.head.weight[:, :K] = torch.eye(K)
    assert D >= K
    save_pretrained(r.eval(), run, "router/model")
    run.commit("router", {"name": "router"})
    return run.uri


def skewed() -> int:
    return 0 if random.random() < 0.8 else random.randint(1, 9)


def main(argv: list[str] | None = None) -> int:
    import httpx

    from atoll.parallel.groups import free_port
    from atoll.serve import runner
    from atoll.serve.app import build_app
    from atoll.serve.ingress import IngressOptions
    from atoll.serve.status import running_replicas

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(PHASES), default="default")
    ap.add_argument("--steps", type=int, default=10, help="denoising steps per request (n=2, top-1, CFG)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "autoscale.md")
    a = ap.parse_args(argv)
    random.seed(0)
    load0 = Path("/proc/loadavg").read_text().split()[:3]
    uri = build_run(tempfile.mkdtemp(prefix="atoll-autoscale-"), a.size)
    opts = IngressOptions(expert_timeout_s=30, request_timeout_s=300, health_poll_s=0.25, cold_start_timeout_s=240)
    from atoll.serve.app import resolve_target

    _, spec = resolve_target(uri)
    url = runner.start(build_app(uri, options=opts, environ={}), spec, K, port=free_port())
    names = [f"Expert-{k:03d}" for k in range(K)]
    timeline, reqs, t0 = [], [], time.monotonic()
    stop_poll = threading.Event()

    def poll():
        while not stop_poll.is_set():
            try:
                run = running_replicas("atoll")
                timeline.append((time.monotonic() - t0, [run.get(n, 0) for n in names]))
            except Exception:  # noqa: BLE001 - the controller busy: skip a point
                pass
            time.sleep(0.5)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    stats = []
    try:
        with httpx.Client(base_url=url, timeout=300) as client:
            for phase, seconds, conc in PHASES[a.size]:
                before, start = client.get("/v1/stats").json(), time.monotonic()
                end = start + seconds

                def worker(phase=phase, end=end):
                    while time.monotonic() < end:
                        c = skewed() if phase == "skewed" else random.randint(0, 9)
                        t = time.monotonic()
                        r = client.post("/v1/generate", json={"class": c, "n": 2, "steps": a.steps, "guidance": 2.0,
                                                              "strategy": "top1", "format": "json"})
                        reqs.append((phase, t - t0, time.monotonic() - t, r.status_code,
                                     "x-atoll-degraded" in r.headers))
                ws = [threading.Thread(target=worker) for _ in range(conc)]
                for w in ws:
                    w.start()
                for w in ws:
                    w.join()
                time.sleep(max(0.0, end - time.monotonic()))
                after = client.get("/v1/stats").json()
                rows = [x - y for x, y in zip(after["expert_rows"], before["expert_rows"])]
                stats.append((phase, start - t0, time.monotonic() - t0, rows))
    finally:
        stop_poll.set()
        runner.shutdown()
    write(a, stats, timeline, reqs, load0)
    print(a.out.read_text())
    return 0


def write(a, stats, timeline, reqs, load0) -> None:
    import platform

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def pct(xs, q):
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")

    lines = ["| phase | seconds | requests | errors | rerouted | p50 s | p95 s | rows share per expert | "
             "replicas per expert (mean / max) |", "|---|---|---|---|---|---|---|---|---|"]
    for i, (phase, s, e, rows) in enumerate(stats):
        mine = [r for r in reqs if s <= r[1] < e]
        lat = [r[2] for r in mine if r[3] == 200]
        pts = [reps for t, reps in timeline if s <= t < e]
        total = sum(rows) or 1
        share = " / ".join(f"{x / total:.2f}" for x in rows)
        reps = " / ".join(f"{sum(p[k] for p in pts) / max(len(pts), 1):.1f}-{max((p[k] for p in pts), default=0)}"
                          for k in range(K))
        lines.append(f"| {i + 1}. {phase} | {e - s:.0f} | {len(mine)} | {sum(r[3] != 200 for r in mine)} | "
                     f"{sum(r[4] for r in mine)} | {pct(lat, 0.5):.2f} | {pct(lat, 0.95):.2f} | {share} | {reps} |")
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    s = SERVE[a.size]
    text = "\n".join([
        f"# Experts scaled by routed rows ({a.size} size)", "",
        f"Command: `python bench/autoscale.py --size {a.size}`", "",
        f"Machine: {os.cpu_count()} CPUs, {cpu}; load average before {' '.join(load0)}, after "
        f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}", "",
        f"K=4 DiT-XXS/4 experts (28x28, random weights), a Router-XS@16 routing class c to expert c % 4; "
        f"serve.mode distributed, experts numReplicas auto, minReplicas 0, maxReplicas {s['maxReplicas']}, "
        f"scaleOn rows, targetRowsPerS {s['targetRowsPerS']}, idleS {s['idleS']}, upscaleDelayS "
        f"{s['upscaleDelayS']}. Requests: n=2, {a.steps} steps, top-1, CFG 2. Skewed: 80% class 0 (expert 0). "
        "Replicas: RUNNING replicas polled every 0.5 s (mean-max over the phase). Rerouted: answers with "
        "X-Atoll-Degraded (a scaled-to-zero expert must cold-start, not be rerouted).", "", *lines, "",
        "Replicas over time: `autoscale.png`.", ""])
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ts = [t for t, _ in timeline]
    for k in range(K):
        ax.step(ts, [reps[k] + 0.04 * k for _, reps in timeline], where="post", label=f"Expert-{k:03d}")
    for phase, s0, e0, _ in stats:
        ax.axvspan(s0, e0, alpha=0.08 if phase == "idle" else 0.18, color="grey" if phase == "idle" else "C1")
        ax.text(s0 + 1, SERVE[a.size]["maxReplicas"] + 0.3, phase, fontsize=8)
    ax.set_xlabel("seconds")
    ax.set_ylabel("running replicas")
    ax.set_ylim(-0.2, SERVE[a.size]["maxReplicas"] + 0.8)
    ax.legend(fontsize=7, loc="center right")
    ax.set_title("Expert replicas follow the rows routed to them (scale to zero when idle)")
    fig.tight_layout()
    fig.savefig(a.out.with_suffix(".png"), dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
