"""Runs inside the store host's namespace: `atoll submit --target ray`, a link cut mid-training, a report.

    python scenario.py --job job.yaml --store s3://bucket/runs/partition --endpoint http://10.N.0.1:5000 \
        --cut-cmd "ip -n NS link set IF down" --restore-cmd "..." --island-a http://10.N.1.2:8265 --report r.json

1. starts ``atoll submit JOB --target ray`` (the real CLI) and timestamps its output lines;
2. once expert 0 (island a) has committed a checkpoint and is training, cuts island a's link;
3. waits for the control plane to declare island a lost and for expert 0's next attempt to
   train on island b, then restores the link;
4. waits for the old attempt's job on island a to end (its writes are refused: fencing) and for
   the submit to finish; writes the timeline and what the store holds as JSON.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import threading
import time

from atoll.islands import control_state
from atoll.islands.ray_jobs import TERMINAL, JobsClient, JobsError
from atoll.store import S3Config, open_store
from atoll.train import checkpoints as ckpt

T0 = time.time()


def now() -> float:
    return round(time.time() - T0, 2)


def wait_for(what: str, cond, timeout: float, poll: float = 0.3):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def main() -> None:
    ap = argparse.ArgumentParser()
    for a in ("--job", "--store", "--endpoint", "--cut-cmd", "--restore-cmd", "--island-a", "--report", "--log"):
        ap.add_argument(a, required=True)
    ap.add_argument("--name", default="partition")
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args()
    run = open_store(f"{args.store}/{args.name}", S3Config(endpoint_url=args.endpoint))
    unit = run.sub("experts/000")
    rep: dict = {"events": [], "timeline": {}}
    tl = rep["timeline"]

    log = open(args.log, "w")
    proc = subprocess.Popen(["atoll", "submit", args.job, "--target", "ray"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)

    def pump() -> None:
        for line in proc.stdout:
            rep["events"].append([now(), line.rstrip()])
            log.write(f"{now():8.2f} {line}")
            log.flush()

    threading.Thread(target=pump, daemon=True).start()
    try:
        _scenario(args, run, unit, rep, tl, proc)
    except BaseException as e:  # the report says how far it got
        rep["error"] = f"{type(e).__name__}: {e}"
        raise
    finally:
        if proc.poll() is None and "error" in rep:
            proc.terminate()
        rep["submit_rc"] = proc.poll()
        _collect(run, rep)
        with open(args.report, "w") as f:
            json.dump(rep, f, indent=1, default=str)
        log.close()


def _unit_state(run, name: str):
    st = control_state.load(run)
    return st.units.get(name) if st else None


def _scenario(args, run, unit, rep, tl, proc) -> None:
    # -- 2. expert 0 committed a checkpoint on island a and trains on: cut a's link
    def training_on_a():
        u = _unit_state(run, "expert-000")
        if not (u and u.island == "a" and u.status == "RUNNING" and (ckpt.latest(unit) or 0) > 0):
            return None
        p = unit.get_json("progress.json") if unit.exists("progress.json") else {}
        return p if p.get("state") == "training" and p.get("step", 0) < p.get("total", 0) // 2 else None

    p = wait_for("expert 0 training on island a with a committed checkpoint", training_on_a, args.timeout)
    a_job = _unit_state(run, "expert-000").job_id
    subprocess.run(shlex.split(args.cut_cmd), check=True)
    tl["cut_at"] = now()
    rep["at_cut"] = {"latest_checkpoint": ckpt.latest(unit), "progress_step": p["step"], "a_pid": p["pid"],
                     "a_job_id": a_job, "checkpoints": ckpt.committed_steps(unit)}

    # -- 3. declared lost, moved to b, training there
    def moved():
        u = _unit_state(run, "expert-000")
        return u if u and u.island == "b" and u.attempt >= 2 else None

    u = wait_for("expert 0 moved to island b", moved, args.timeout)
    lost = next((t for t, ln in rep["events"] if "island a lost" in ln), None)
    tl["declared_lost_at"] = lost if lost is not None else now()
    rep["b_attempt"] = u.attempt

    def training_on_b():
        q = unit.get_json("progress.json") if unit.exists("progress.json") else {}
        return q if q.get("pid") not in (None, rep["at_cut"]["a_pid"]) and q.get("state") == "training" else None

    q = wait_for("expert 0 training on island b", training_on_b, args.timeout)
    tl["training_on_b_at"] = now()
    rep["b_first_progress_step"] = q["step"]

    def b_committed():
        m = unit.manifest(f"checkpoints/{ckpt.tag(ckpt.latest(unit) or 0)}") if ckpt.latest(unit) else None
        return m if m and m.get("attempt") == u.attempt else None

    m = wait_for("a checkpoint committed by island b's attempt", b_committed, args.timeout)
    tl["b_first_checkpoint_at"], rep["b_first_checkpoint_step"] = now(), m["step"]
    subprocess.run(shlex.split(args.restore_cmd), check=True)
    tl["restored_at"] = now()

    # -- 4. the old attempt on a: its writes are refused; it ends
    client = JobsClient("a", args.island_a, timeout_s=5)

    def old_ended():
        try:
            s = client.status(a_job)
        except JobsError:
            return None
        return s if s in TERMINAL else None

    rep["old_attempt_status"] = wait_for("island a's old attempt to end", old_ended, 300, poll=2)
    tl["old_attempt_ended_at"] = now()
    try:
        rep["old_attempt_log"] = client.logs(a_job)[-6000:]
    except JobsError as e:
        rep["old_attempt_log"] = f"(no log: {e})"
    rc = proc.wait(timeout=args.timeout)
    tl["finished_at"] = now()
    rep["submit_rc_wait"] = rc


def _collect(run, rep: dict) -> None:
    """What the store holds at the end: manifests, checkpoint attempts, the fence, model integrity."""
    from atoll import fence
    from atoll.store.base import sha256_bytes

    try:
        unit = run.sub("experts/000")
        rep["manifests"] = {p: run.manifest(p) for p in ("experts/000", "experts/001", "router")}
        rep["checkpoints"] = {s: (unit.manifest(f"checkpoints/{ckpt.tag(s)}") or {}).get("attempt")
                              for s in ckpt.committed_steps(unit)}
        rep["fence"] = fence.holder(unit)
        mm = unit.manifest("model") or {}
        rep["model_files_match"] = bool(mm) and all(
            sha256_bytes(unit.get_bytes(f"model/{f['name']}")) == f["sha256"] for f in mm.get("files", []))
        rep["model_attempt"] = mm.get("attempt")
        ck_ok = True
        for s in ckpt.committed_steps(unit):
            files = (unit.manifest(f"checkpoints/{ckpt.tag(s)}") or {}).get("files", [])
            ck_ok &= all(unit.exists(f"checkpoints/{ckpt.tag(s)}/{f}") for f in files)
        rep["checkpoint_files_present"] = ck_ok
        rep["metrics_steps"] = [h["step"] for h in unit.get_json("metrics.json")["history"]]
        rep["log_files"] = [k for k in unit.list("logs")]
        texts = [unit.get_bytes(k).decode("utf-8", "replace") for k in unit.list("logs")]
        rep["superseded_in_island_logs"] = any("Superseded" in t for t in texts)
        st = control_state.load(run)
        rep["control_state"] = st.to_json() if st else None
    except Exception as e:  # noqa: BLE001 - the report is best effort
        rep["collect_error"] = f"{type(e).__name__}: {e}"


if __name__ == "__main__":
    sys.exit(main())
