"""The commands that change a trained ensemble (docs/lifecycle.md): ``atoll add-experts``, ``atoll experts``,
``atoll remove-expert``, ``atoll distill``. Registered on the main ``atoll`` app by ``register``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from atoll.progress import console
from atoll.spec import load

JobArg = typer.Argument(..., help="A job spec YAML file (apiVersion: atoll/v1).")
RunArg = typer.Argument(..., help="A run (./runs/quickstart, s3://bucket/prefix/quickstart) or a job YAML.")


def distill(job: Path = JobArg, store: Optional[str] = typer.Option(None, "--store", help="Override spec.store.uri."),
            model: Optional[str] = typer.Option(None, "--model", help="The student's DiT size (default: distill.model, "
                                                "else experts.model)."),
            steps: Optional[int] = typer.Option(None, "--steps", help="The student's training steps (default: "
                                                "distill.training, else the experts' steps)."),
            strategy: Optional[str] = typer.Option(None, "--strategy", help="The teacher's routing (default: "
                                                   "distill.strategy, top1).")):
    """Distils the job's trained ensemble into one dense student DiT (a one-model run for sample / serve)."""
    from atoll.distill import distill as run_distill
    from atoll.distill import with_overrides

    spec = with_overrides(load(job), model=model, steps=steps, strategy=strategy)
    out = run_distill(spec, store_uri=store, on_progress=lambda m: console().print(m))
    m = out.manifest
    word = "trained" if out.trained else "[dim]already trained (skipped)[/dim]"
    console().print(f"student [bold]{out.job.name}[/bold] ({m['student_model']}) {word}: {out.uri}")
    console().print(f"  FLOPs: student training {m['student_train_flops']:.3e} + teacher forwards "
                    f"{m['teacher_flops']:.3e} = {m['total_flops']:.3e}; final loss {m['final_loss']:.4f}")
    console().print(f"  next: atoll sample {out.uri} --class 0   |   atoll serve {out.uri}")


def experts(run: str = RunArg,
            as_json: bool = typer.Option(False, "--json", help="Print experts/registry.json as JSON.")):
    """Lists the run's experts and their state (experts/registry.json): id, state, data, samples, version."""
    from rich.table import Table

    from atoll.experts_registry import load
    from atoll.sampling.runs import inspect_run, open_run_uri

    info = inspect_run(open_run_uri(run))
    reg = load(info.store, info.total_experts)
    if as_json:
        typer.echo(json.dumps(reg, indent=2))
        return
    t = Table(title=f"{info.store.uri}: version {reg['version']}, router {reg['router']}")
    for c in ("expert", "state", "served as", "data", "samples", "since"):
        t.add_column(c)
    for e in reg["experts"]:
        served = str(info.expert_ids.index(e["id"])) if e["id"] in info.expert_ids else "-"
        since = e.get("retired") if e["state"] == "retired" else e.get("created")
        t.add_row(f"{e['id']:03d}", e["state"], served, e["data"], str(e.get("samples") or "-"), since or "-")
    console().print(t)


def add_experts(job: Path = JobArg,
                data: Path = typer.Option(..., "--data", help="A YAML file with the new data's data section "
                                          "(source: ..., shardSize ...)."),
                experts: int = typer.Option(1, "--experts", help="New experts: the new data's own k-means clusters."),
                router_steps: Optional[int] = typer.Option(None, "--router-steps", help="Fine-tuning steps of the "
                                                           "router (default: router.training.steps)."),
                store: Optional[str] = typer.Option(None, "--store", help="Override spec.store.uri.")):
    """Grows a trained ensemble: new experts for new data, the router fine-tuned; the old experts are untouched."""
    from atoll.grow import add_experts as grow, read_data_file

    spec = load(job)
    reg = grow(spec, read_data_file(data), new_experts=experts, router_steps=router_steps, store_uri=store,
               on_progress=lambda m: console().print(m))
    last = reg["history"][-1]
    ids = [e["id"] for e in reg["experts"] if e["state"] == "active"]
    console().print(f"version {reg['version']} serves experts {ids} with {reg['router']}")
    if last.get("action") == "add":
        console().print(f"  added {last['experts']} from {last['samples']} samples: experts' training "
                        f"{last['experts_train_flops']:.3e} FLOPs, router fine-tuning {last['router_train_flops']:.3e}")


def remove_expert(run: str = RunArg,
                  expert: int = typer.Option(..., "--expert", help="The expert's id in the run (`atoll experts RUN`)."),
                  reason: str = typer.Option("", "--reason", help="Recorded in experts/registry.json.")):
    """Retires an expert: a new registry version serves the others, with the router renormalised over them."""
    from atoll.experts_registry import retire
    from atoll.sampling.runs import inspect_run, open_run_uri

    info = inspect_run(open_run_uri(run))
    reg = retire(info.store, expert, num_experts=info.total_experts, reason=reason)
    left = [e["id"] for e in reg["experts"] if e["state"] == "active"]
    console().print(f"expert {expert:03d} retired: version {reg['version']} serves experts {left} with "
                    f"{reg['router']}; running servers pick it up when redeployed (`atoll serve`)")


def register(app: typer.Typer) -> None:
    app.command("add-experts")(add_experts)
    app.command("experts")(experts)
    app.command("remove-expert")(remove_expert)
    app.command("distill")(distill)
