"""``atoll add-experts``: grow a trained ensemble with experts for new data; the old experts are not
retrained, not even loaded.

Version N+1 of the run's registry (``experts/registry.json``) is made in four resumable steps, all
under ``grow/vN+1/`` in the run or in new folders, so nothing committed before is touched:

1. the new data becomes shards (``grow/vN+1/data``, the data stage with the new ``data`` section);
2. it is clustered into ``m`` new clusters by its own k-means (``grow/vN+1/partition``, the partition
   stage with ``partition.k = m``), copied to ``partition/expert-<id>`` for the new ids K, K+1, ...;
3. each new cluster trains an expert on its own island exactly like the first ones
   (``experts/<id>``, Ray Train + DeepSpeed);
4. the router of the new version is fine-tuned from the current one on the partitions of every
   active expert, old and new: its head keeps the old experts' rows and gets fresh rows for the new
   ones (``router.init``), so it starts from the old routing (``router/versions/vN+1``).

The registry file is written last: until then loaders serve the old version. The new data must use
the run's classes (the same class names in the same order; an image folder may leave class folders
empty) and the run's sample shape.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from atoll.experts_registry import REGISTRY, active, load, now
from atoll.run_store import open_run, s3_config
from atoll.spec import JobSpec, dump, parse
from atoll.store import Store


class GrowError(ValueError):
    """The ensemble cannot grow this way (says the fix)."""


def growth_job(job: JobSpec, data: dict, new_experts: int, router: dict | None = None) -> JobSpec:
    """The job of one growth: ``job`` with the new ``data`` section, ``partition.k = new_experts`` (the new
    data's own clusters) and, for the router's fine-tuning, ``router`` fields (experts, init, training)."""
    doc = dump(job)
    doc["spec"]["data"] = data
    part = doc["spec"]["partition"]
    part.update(k=new_experts, fineClusters=max(new_experts, min(int(part.get("fineClusters", 1024)), 256)))
    doc["spec"].pop("distill", None)
    if router:
        doc["spec"]["router"].update(router)
    return parse(doc, source=f"{job.name} (add-experts)")


def add_experts(job: JobSpec, data: dict, *, new_experts: int = 1, router_steps: int | None = None,
                store_uri: str | None = None, on_progress: Callable[[str], None] | None = None) -> dict:
    """Grows the run of ``job`` by ``new_experts`` experts trained on ``data`` (a ``data:`` section);
    returns the new registry. Resumable: run it again after an interruption."""
    from atoll.data.partition import run_partition
    from atoll.data.stage import run_data, spec_hash
    from atoll.islands.plan import Unit, is_done
    from atoll.sampling.runs import inspect_run
    from atoll.stages import _train

    say = on_progress or (lambda _m: None)
    if job.spec.experts.mode == "monolith" or job.spec.latents.enabled or job.spec.experts.distill_from:
        raise GrowError(f"job {job.name!r}: add-experts grows an ensemble trained in pixel space (experts.mode: "
                        "ensemble, latents.enabled: false); this job is a monolith, a distilled student or in "
                        "latent space")
    if new_experts < 1:
        raise GrowError(f"--experts {new_experts}: add at least one expert")
    run = open_run(job, store_uri)
    info = inspect_run(run)
    reg = load(run, info.total_experts)
    if run.manifest(reg["router"]) is None or not all(run.manifest(f"experts/{k:03d}") for k in active(reg)):
        raise GrowError(f"the ensemble at {run.uri} is not trained yet; run `atoll run JOB.yaml --until router` first")
    data_hash = spec_hash(data)
    done = next((h for h in reg["history"] if h.get("action") == "add" and h.get("data_hash") == data_hash), None)
    if done is not None:
        say(f"this data was added in version {done['version']} (experts {done['experts']}); nothing to do")
        return reg
    version = reg["version"] + 1
    grow = run.sub(f"grow/v{version}")
    gjob = growth_job(job, data, new_experts)
    t0 = time.time()
    say(f"version {version}: new data -> {grow.uri}/data")
    dm = run_data(gjob, grow)
    _check_compatible(run.manifest("data") or {}, dm, gjob)
    say(f"version {version}: {dm['count']} new samples -> {new_experts} clusters (their own k-means)")
    pm = run_partition(gjob, grow)
    first = info.total_experts
    new_ids = list(range(first, first + new_experts))
    for j, k in enumerate(new_ids):
        _copy_artifact(grow, f"partition/expert-{j:03d}", run, f"partition/expert-{k:03d}")
    s3 = s3_config(job)
    units = [Unit("expert", k, f"experts/{k:03d}") for k in new_ids]
    say(f"version {version}: training experts {new_ids} on their own islands (the old ones are not loaded)")
    _train(gjob, run, s3, [u for u in units if not is_done(run, u, gjob)])
    old = active(reg)
    tr = dump(job)["spec"]["router"]["training"]
    rjob = growth_job(job, data, new_experts, router={
        "experts": old + new_ids, "init": {"checkpoint": reg["router"], "experts": old},
        "training": {**tr, **({"steps": router_steps} if router_steps else {})}})
    runit = Unit("router", None, f"router/versions/v{version}")
    say(f"version {version}: fine-tuning the router from {reg['router']} over experts {old + new_ids}")
    _train(rjob, run, s3, [runit] if not is_done(run, runit, rjob) else [])
    rm = run.manifest(runit.prefix)
    added = []
    for j, k in enumerate(new_ids):
        m = run.manifest(f"experts/{k:03d}")
        added.append({"id": k, "prefix": f"experts/{k:03d}", "state": "active", "data": f"partition/expert-{k:03d}",
                      "samples": pm["cluster_sizes"][j], "fingerprint": m.get("fingerprint"),
                      "created": m.get("committed_at"), "version": version, "source": dict(data["source"])})
    event = {"version": version, "action": "add", "experts": new_ids, "data_hash": data_hash,
             "samples": int(dm["count"]), "router": f"fine-tuned from {reg['router']}",
             "experts_train_flops": float(sum(run.manifest(u.prefix)["train_flops"] for u in units)),
             "router_train_flops": float(rm.get("train_flops") or 0), "router_accuracy_vs_t": rm.get("accuracy_vs_t"),
             "wall_s": round(time.time() - t0, 1), "at": now()}
    new = {**reg, "version": version, "router": f"{runit.prefix}/model", "experts": reg["experts"] + added,
           "history": reg["history"] + [event]}
    run.put_json(REGISTRY, new)  # last and atomic: loaders switch to the new version here
    return new


def _check_compatible(old: dict, new: dict, gjob: JobSpec) -> None:
    """The new data has the run's sample shape and classes (labels are indices into the run's classes)."""
    if old.get("image_shape") and list(new["image_shape"]) != list(old["image_shape"]):
        raise GrowError(f"the new data's samples are {'x'.join(map(str, new['image_shape']))} (CxHxW) but the run's are "
                        f"{'x'.join(map(str, old['image_shape']))}; set data.imageSize (and data.source.channels) "
                        "in the new data section to match")
    a, b = old.get("class_names") or [], new.get("class_names") or []
    if a and b and b != a[:len(b)]:  # the same classes, or the first of them
        raise GrowError(f"the new data's classes {b} are not the run's {a}: labels are class indices, so the new "
                        "data must name the run's classes in the same order (an image folder may leave class "
                        "folders empty)")
    if not a and int(new.get("num_classes") or 0) > int(old.get("num_classes") or 0):
        raise GrowError(f"the new data has {new.get('num_classes')} classes, the run {old.get('num_classes')}; "
                        "the experts' class embeddings cannot grow: use the run's classes")


def _copy_artifact(src: Store, src_prefix: str, dst: Store, dst_prefix: str) -> None:
    """Copies a committed shard artifact (files first, manifest last); skipped when already committed."""
    m = src.manifest(src_prefix)
    if m is None:
        raise GrowError(f"{src.url(src_prefix)} is not committed")
    if dst.manifest(dst_prefix) is not None:
        return
    base = f"{src_prefix}/"
    for key in src.list(src_prefix):
        if key.startswith(base) and not key.endswith("/manifest.json"):
            dst.put_bytes(dst_prefix + "/" + key[len(base):], src.get_bytes(key))
    dst.commit(dst_prefix, {k: v for k, v in m.items() if k != "committed_at"})


def read_data_file(path) -> dict:
    """A YAML file with the new data: a job's ``data:`` section (``source``, ``shardSize`` ...), bare or under
    ``data:``. Raises ``GrowError`` naming the file."""
    from pathlib import Path

    import yaml

    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise GrowError(f"--data {p}: cannot read it as YAML ({e})") from None
    if isinstance(doc, dict) and isinstance(doc.get("data"), dict):
        doc = doc["data"]
    if not isinstance(doc, dict) or "source" not in doc:
        raise GrowError(f"--data {p}: write a job's data section, e.g. `source: {{type: image-folder, path: new/}}` "
                        "(optionally under `data:`, with shardSize, imageSize ...)")
    return doc
