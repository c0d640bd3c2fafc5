"""Times ``make demo`` from a fresh clone: wall time, console line count, stage times, class accuracy.

    flock /tmp/atoll-bench.lock python bench/demo_time.py [--ref HEAD] [--venv .venv] [--warm]

Clones ``--ref`` of this repository into a temporary folder (committed files only, as a
user's ``git clone`` would), runs ``make demo`` there with stdout and stderr going to a
file (no terminal: the console a CI log or ``make demo > log`` shows), and writes
``bench/results/demo-<label>.json`` with the numbers and the console log beside it.
By default the torch-extension build cache and the evaluation classifier cache start
empty (``--warm`` reuses the user's), so the time includes what a new machine pays once.
``--venv`` is an existing environment with Atoll's dependencies (``make setup``); the
clone's own code runs from ``PYTHONPATH=<clone>/platform``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def console_counts(text: str) -> dict:
    """Lines of a console log: in all, with colour codes, printed by Ray workers/raylet, and the longest."""
    lines = text.splitlines()
    bare = [ANSI.sub("", ln).lstrip() for ln in lines]
    return {"console_lines": len(lines), "console_lines_with_ansi": sum(bool(ANSI.search(ln)) for ln in lines),
            "console_lines_from_ray_workers": sum(b.startswith("(") and ("pid=" in b or b.startswith("(raylet)"))
                                                  for b in bare),
            "longest_line": max((len(ln) for ln in lines), default=0)}


def machine() -> dict:
    model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    return {"cpu": model, "cores": os.cpu_count(), "load_before": os.getloadavg()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", default="HEAD", help="git ref to clone (default HEAD)")
    ap.add_argument("--venv", default=str(REPO / ".venv"), help="an installed Atoll environment")
    ap.add_argument("--label", default=None, help="name of the result files (default: the ref's short hash)")
    ap.add_argument("--warm", action="store_true", help="reuse the torch-extension and classifier caches")
    ap.add_argument("--keep", action="store_true", help="keep the clone (its runs/ folder) afterwards")
    ap.add_argument("--cmd", default=None, help="run this in the clone instead of `make demo` (smoke tests)")
    ap.add_argument("--out-dir", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args()
    venv = Path(args.venv).resolve()
    sha = subprocess.check_output(["git", "-C", str(REPO), "rev-parse", "--short", args.ref], text=True).strip()
    label = args.label or sha
    work = Path(tempfile.mkdtemp(prefix="atoll-demo-"))
    clone = work / "atoll"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "checkout", "-q", sha], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATOLL_", "RAY_ADDRESS", "COLUMNS"))}
    env["PYTHONPATH"] = str(clone / "platform")
    if not args.warm:
        env["TORCH_EXTENSIONS_DIR"] = str(work / "torch-extensions")
        env["ATOLL_EVAL_CACHE"] = str(work / "eval-cache")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    log_path = args.out_dir / f"demo-{label}.log"
    info = {"ref": sha, "label": label, "warm_caches": args.warm, "command": args.cmd or "make demo", **machine()}
    loads: list[float] = []
    cpu: dict[int, float] = {}
    stop = threading.Event()

    def sample() -> None:   # load average, and CPU seconds of every process the demo starts (Ray's too)
        import psutil

        n = 0
        while not stop.wait(2):
            n += 1
            if n % 8 == 0:
                loads.append(os.getloadavg()[0])
            for p in psutil.Process().children(recursive=True):
                try:
                    t = p.cpu_times()
                    cpu[p.pid] = t.user + t.system   # not children_*: they were sampled themselves
                except psutil.Error:
                    pass

    threading.Thread(target=sample, daemon=True).start()
    t0 = time.time()
    with open(log_path, "wb") as log:   # `-o STAMP`: use the given environment as it is, never reinstall it
        cmd = (["bash", "-c", args.cmd] if args.cmd else
               ["make", "-s", "demo", f"VENV={venv}", "-o", str(venv / ".installed")])
        rc = subprocess.run(cmd, cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL).returncode
    wall = time.time() - t0
    stop.set()
    text = log_path.read_bytes().decode("utf-8", "replace")
    run = clone / "runs" / "quickstart"
    samples = json.loads((run / "samples" / "manifest.json").read_text()) if (run / "samples/manifest.json").exists() else {}
    stages = json.loads((run / "stages.json").read_text()) if (run / "stages.json").exists() else {}
    info.update({
        "returncode": rc, "wall_s": round(wall, 1), **console_counts(text),
        "stages_s": {k: v["wall_s"] for k, v in stages.items()},
        "class_accuracy": {k: v.get("class_accuracy") for k, v in samples.get("strategies", {}).items()},
        # CPU work of the demo's processes (sampled every 2 s): under load it grows far less than wall time
        "cpu_s": round(sum(cpu.values()), 1),
        "load1_during": {"mean": round(sum(loads) / max(1, len(loads)), 2), "max": max(loads, default=None)},
    })
    out = args.out_dir / f"demo-{label}.json"
    out.write_text(json.dumps(info, indent=1) + "\n")
    print(json.dumps(info, indent=1))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"clone kept at {clone}", file=sys.stderr)
    sys.exit(rc)


if __name__ == "__main__":
    main()
