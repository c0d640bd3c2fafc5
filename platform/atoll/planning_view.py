"""``atoll plan``: the plan of ``atoll.planning`` as tables (or JSON), and the data shape it starts from."""
from __future__ import annotations

from rich.console import Group
from rich.table import Table

from atoll.spec import JobSpec


def committed_data_manifest(job: JobSpec, store_uri: str | None) -> dict | None:
    """The run's committed data manifest (it has the real image shape) when the store is a local folder
    or was named with ``--store``; None otherwise (the plan then works from the spec alone)."""
    from atoll import pipeline

    uri = store_uri or job.spec.store.uri
    if store_uri is None and uri is not None and uri.startswith("s3://"):
        return None  # no network before anything runs, unless asked for
    try:
        return pipeline.open_run(job, store_uri).manifest("data")
    except Exception:  # noqa: BLE001 -- a store that cannot be read only means "plan from the spec"
        return None


def _flops(x: float) -> str:
    return f"{x:.3e}"


def _mb(x: float) -> str:
    return f"{x / 2**20:,.1f} MiB" if x < 2**30 else f"{x / 2**30:,.2f} GiB"


def render(p: dict) -> Group:
    """The plan as rich tables: models, training FLOPs, sampling cost, memory per worker."""
    d, m, tf, inf = p["data"], p["models"], p["training_flops"], p["inference"]
    shape = f"{d['channels']}x{d['size']}x{d['size']}" + (f", {d['frames']} frames" if d["frames"] else "")
    note = {"assumed": " [yellow](assumed: set data.imageSize / data.source.channels, or run the data stage)[/yellow]",
            "store": " (from the committed data stage)", "source": ""}[d["origin"]]
    if d.get("latents"):
        note += f"; latent space: {d['latents']}"
    models = Table(title=f"{p['job']}: {p['num_experts']} expert(s), samples {shape}, "
                         f"{d['num_classes']} classes{note}", title_justify="left")
    for c in ("model", "size", "params", "notes"):
        models.add_column(c)
    models.add_row("expert", m["expert"]["size"], f"{m['expert']['params']:,}", p["mode"])
    if m["router"]:
        r = m["router"]
        models.add_row("router", r["size"], f"{r['params']:,}", f"{r['tokens']} tokens, conditioning: {r['conditioning']}")
    train = Table(title="training FLOPs", title_justify="left")
    train.add_column("unit / island")
    train.add_column("FLOPs", justify="right")
    for name, v in tf["experts"].items():
        train.add_row(name, _flops(v))
    if m["router"]:
        train.add_row("router", f"{_flops(tf['router'])} ({tf['router_share']:.1%} of the experts')")
    if p["islands_listed"]:
        for name, v in tf["by_island"].items():
            train.add_row(f"island {name}", _flops(v))
    train.add_row("[bold]total[/bold]", f"[bold]{_flops(tf['total'])}[/bold]")
    cost = Table(title=f"sampling cost ({inf['steps']} {inf['sampler']} steps, "
                       f"{'with' if inf['cfg'] else 'no'} classifier-free guidance)", title_justify="left")
    for c in ("strategy", "GFLOPs/image", "x monolith"):
        cost.add_column(c, justify="right")
    mono = inf["monolith_gflops_per_image"]
    for st, g in inf["gflops_per_image"].items():
        cost.add_row(st, f"{g:.3f}", f"{g / mono:.3f}")
    cost.add_row("monolith (one expert-size model)", f"{mono:.3f}", "1.000")
    share = inf["router_share_per_step"]
    flag = "[red]" if share > inf["router_share_limit"] else "[green]"
    cost.caption = (f"router per denoising step: {flag}{share:.1%}[/] of the chosen expert's "
                    f"(limit {inf['router_share_limit']:.0%}); top-1 / monolith = {inf['top1_over_monolith']:.3f}")
    mem = Table(title="training memory per worker (estimate: model states + activations)", title_justify="left")
    units = p["memory_per_worker"]
    mem.add_column("")
    for unit in units:
        mem.add_column(unit, justify="right")
    rows = [("precision, ZeRO stage", lambda e: f"{e['precision']}, {e['zero_stage']}"),
            ("workers x micro-batch", lambda e: f"{e['world_size']} x {e['micro_batch']}")]
    rows += [(k, lambda e, k=k: _mb(e["bytes"][k])) for k in ("weights", "gradients", "master", "adam", "ema",
                                                                "activations")]
    rows += [("[bold]total[/bold]", lambda e: f"[bold]{_mb(e['total_bytes'])}[/bold]")]
    for label, fn in rows:
        mem.add_row(label, *(fn(e) for e in units.values()))
    return Group(models, train, cost, mem)
