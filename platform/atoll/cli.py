"""The ``atoll`` command line (typer). Bad input ends with a message, never a traceback."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from atoll.progress import console

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Atoll: train diffusion experts on isolated islands, serve them as one model.")

JobArg = typer.Argument(..., help="A job spec YAML file (apiVersion: atoll/v1).")


@app.callback()
def _options(verbose: bool = typer.Option(False, "-v", "--verbose", help="Also show Ray's own output: the islands' "
                                          "worker logs and Ray's INFO lines (default: Atoll's progress only; "
                                          "the logs are in the run, see `atoll logs`).")):
    if verbose:
        os.environ["ATOLL_VERBOSE"] = "1"


def _load(path: Path):
    from atoll.spec import load

    return load(path)


@app.command()
def validate(job: Path = JobArg, show: bool = typer.Option(False, "--show", help="Print the spec with defaults.")):
    """Checks a job spec and reports every problem at once."""
    spec = _load(job)
    console().print(f"[green]ok[/green] {job}: job {spec.name!r}, {spec.spec.num_experts} expert(s), "
                    f"islands target {spec.spec.islands.target!r}")
    from atoll.planning import router_warning

    if warning := router_warning(spec):
        console().print(f"[yellow]warning:[/yellow] {warning}")
    if show:
        import yaml

        from atoll.spec import dump

        typer.echo(yaml.safe_dump(dump(spec), sort_keys=False))


@app.command()
def plan(job: Path = JobArg, as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
         store: Optional[str] = typer.Option(None, "--store", help="Read the data shape from this store's run.")):
    """Before anything runs: parameters, training FLOPs per island, sampling cost per strategy, memory per worker."""
    from atoll.planning import plan as make_plan
    from atoll.planning_view import committed_data_manifest, render

    spec = _load(job)
    p = make_plan(spec, committed_data_manifest(spec, store))
    if as_json:
        typer.echo(json.dumps(p, indent=2))
    else:
        console().print(render(p))


@app.command()
def schema(output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write to a file instead of stdout.")):
    """Prints the JSON Schema of job specs (for editors)."""
    from atoll.spec import json_schema

    text = json.dumps(json_schema(), indent=2)
    if output:
        output.write_text(text + "\n")
    else:
        typer.echo(text)


@app.command()
def run(job: Path = JobArg,
        until: Optional[str] = typer.Option(None, "--until", help="Stop after this stage."),
        from_stage: Optional[str] = typer.Option(None, "--from", help="Redo this stage and all after it."),
        store: Optional[str] = typer.Option(None, "--store", help="Override spec.store.uri.")):
    """Runs all stages of a job (data, partition, experts, router, samples, report); resumable."""
    from atoll import pipeline

    spec = _load(job)
    run_store = pipeline.open_run(spec, store)
    console().print(f"run [bold]{spec.name}[/bold] -> {run_store.uri}")

    def show(res):
        word = "[dim]skipped (complete)[/dim]" if res.status == "skipped" else f"done in {res.wall_s:.1f}s"
        console().print(f"[bold]stage {res.name}[/bold]: {word}")

    pipeline.run(spec, until=until, from_stage=from_stage, store_uri=store, on_stage=show)


@app.command()
def status(job: Path = JobArg, store: Optional[str] = typer.Option(None, "--store")):
    """Shows which stages of a run are complete and each island's progress."""
    from atoll import pipeline
    from atoll.islands.display import snapshot, table
    from atoll.islands.plan import expert_units, router_unit

    spec = _load(job)
    run_store = pipeline.open_run(spec, store)
    for stage in pipeline.active_stages(spec):
        ok = pipeline.is_complete(run_store, spec, stage)
        console().print(f"{stage:10s} {'[green]complete[/green]' if ok else '[yellow]not complete[/yellow]'}")
    console().print(table(snapshot(run_store, expert_units(spec) + [router_unit()], {})))
    from atoll.islands import control_state

    if control_state.load(run_store) is not None:  # submitted with --target ray: island, attempt, job id
        from atoll.islands.remote import status_rows, status_table

        console().print(status_table(status_rows(spec, run_store)))


def _contexts(pairs: list[str]) -> dict[str, str]:
    out = {}
    for p in pairs:
        island, sep, ctx = p.partition("=")
        if not sep or not island or not ctx:
            raise typer.BadParameter(f"--context {p!r}: write ISLAND=KUBE_CONTEXT (or router=CONTEXT)")
        out[island] = ctx
    return out


@app.command()
def submit(job: Path = JobArg,
           target: Optional[str] = typer.Option(None, "--target", help="local | ray | kubernetes (default: the spec's)."),
           context: list[str] = typer.Option([], "--context", help="kubernetes: ISLAND=KUBE_CONTEXT, repeatable."),
           dry_run: bool = typer.Option(False, "--dry-run", help="kubernetes: print the manifests, create nothing."),
           output: str = typer.Option("yaml", "-o", "--output", help="Dry-run format: yaml | json."),
           image: Optional[str] = typer.Option(None, "--image", help="kubernetes: container image repo:tag."),
           s3_secret: Optional[str] = typer.Option(None, "--s3-secret", help="kubernetes: Secret with AWS keys.")):
    """Submits the islands' training to a target: the local Ray, remote Ray clusters, or Kubernetes."""
    spec = _load(job)
    target = target or spec.spec.islands.target
    if target == "local":
        from atoll import pipeline

        pipeline.run(spec, until="router")
    elif target == "kubernetes":
        from atoll import pipeline
        from atoll.islands.kubernetes import submit_kubernetes

        if not dry_run:  # the control plane prepares the shards the islands read
            pipeline.run(spec, until="partition")

        def show(st):
            console().print(st.line(spec.spec.islands.max_retries))

        out = submit_kubernetes(spec, contexts=_contexts(context) or None, dry_run=dry_run, output=output,
                                image=image, s3_secret=s3_secret, on_status=show)
        if dry_run:
            typer.echo(out)
    elif target == "ray":
        from atoll.islands.remote import submit_ray

        if spec.spec.islands.target != "ray" or not spec.spec.islands.islands:
            raise typer.BadParameter("--target ray needs spec.islands.target: ray with islands listed by address")
        submit_ray(spec, on_event=lambda m: console().print(f"[bold]ray[/bold] {m}"))
    else:
        raise typer.BadParameter(f"--target {target!r}: use local, ray or kubernetes")


@app.command()
def logs(job: Path = JobArg,
         expert: Optional[int] = typer.Option(None, "--expert", help="Expert id (0..k-1)."),
         router: bool = typer.Option(False, "--router", help="The router's logs instead of an expert's."),
         tail: int = typer.Option(100, "--tail", help="Print the last N lines of each log (0: all)."),
         follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing until the unit is trained."),
         store: Optional[str] = typer.Option(None, "--store")):
    """Prints a unit's logs: its Ray processes' log files in the run (every target) and, for the ray
    target, its job's Jobs API log."""
    from atoll import pipeline
    from atoll.islands.logs import NoLogs, show
    from atoll.islands.plan import Unit

    spec = _load(job)
    if router == (expert is not None):
        raise typer.BadParameter("give exactly one of --expert K or --router")
    if expert is not None and not 0 <= expert < spec.spec.num_experts:
        raise typer.BadParameter(f"--expert must be in 0..{spec.spec.num_experts - 1}")
    unit = Unit("router", None, "router") if router else Unit("expert", expert, f"experts/{expert:03d}")
    try:
        show(spec, pipeline.open_run(spec, store), unit, tail=tail, follow=follow, echo=typer.echo)
    except NoLogs as e:
        raise pipeline.PipelineError(str(e)) from None


def _train_one(job: Path, role: str, expert: Optional[int], store: Optional[str], attempt: int = 0):
    from atoll import pipeline
    from atoll.islands.local import IslandsFailed, run_units
    from atoll.islands.plan import Unit

    spec = _load(job)
    if role == "expert" and not (expert is not None and 0 <= expert < spec.spec.num_experts):
        raise typer.BadParameter(f"--expert must be in 0..{spec.spec.num_experts - 1}")
    unit = Unit(role, expert, f"experts/{expert:03d}" if role == "expert" else "router")
    out = run_units(spec, pipeline.open_run(spec, store), pipeline.s3_config(spec), [unit], attempt=attempt)
    if out.failed:
        raise IslandsFailed(out.failed)


@app.command("train-expert")
def train_expert(spec: Path = typer.Option(..., "--spec", help="The job spec YAML."),
                 expert: int = typer.Option(..., "--expert", help="Expert id (0..k-1)."),
                 store: Optional[str] = typer.Option(None, "--store"),
                 attempt: int = typer.Option(0, "--attempt", help="The control plane's attempt number (fencing).")):
    """Trains one expert on the Ray cluster this runs on (the entrypoint of a remote island)."""
    _train_one(spec, "expert", expert, store, attempt)


@app.command("train-router")
def train_router(spec: Path = typer.Option(..., "--spec"), store: Optional[str] = typer.Option(None, "--store"),
                 attempt: int = typer.Option(0, "--attempt", help="The control plane's attempt number (fencing).")):
    """Trains the router on the Ray cluster this runs on."""
    _train_one(spec, "router", None, store, attempt)


@app.command()
def sample(run: str = typer.Argument(..., help="A run (./runs/quickstart, s3://bucket/prefix/quickstart) or a job YAML."),
           strategy: str = typer.Option("top1", "--strategy", help="full, top1, top2, ... topN."),
           class_: Optional[str] = typer.Option(None, "--class", help="Class index or name; default: cycle through classes."),
           n: int = typer.Option(16, "-n", help="Number of images."),
           steps: int = typer.Option(32, "--steps", help="Sampler steps."),
           sampler: str = typer.Option("euler", "--sampler", help="euler or heun."),
           guidance: float = typer.Option(1.5, "--guidance", help="Classifier-free guidance scale (1 = off)."),
           seed: int = typer.Option(0, "--seed"),
           output: Optional[Path] = typer.Option(None, "-o", "--output", help="The grid PNG to write (default "
                                                 "grid.png unless --out-dir or --npz is given)."),
           nrow: Optional[int] = typer.Option(None, "--nrow", help="Images per grid row (default: ~sqrt(n))."),
           trace: Optional[Path] = typer.Option(None, "--trace", help="Also write a picture of routing per step."),
           device: str = typer.Option("auto", "--device", help="auto (a GPU if there is one), cpu, cuda, cuda:1, ..."),
           prompt: Optional[str] = typer.Option(None, "--prompt", help="Text prompt (text-conditioned runs)."),
           step: Optional[int] = typer.Option(None, "--step", help="The experts' training snapshot at this step "
                                              "(experts.training.snapshotEvery) instead of the final models."),
           out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Also write one PNG per image (GIF per "
                                                  "clip) and labels.csv here, for scoring with other tools."),
           npz: Optional[Path] = typer.Option(None, "--npz", help="Also write the uint8 images (arr_0, N x H x W x C) "
                                              "and labels (arr_1) as one .npz file.")):
    """Samples images from a trained run's ensemble and writes a grid (and optionally the routing trace)."""
    from atoll.sampling.cli import sample_command

    sample_command(run, strategy=strategy, class_=class_, n=n, steps=steps, sampler=sampler, guidance=guidance,
                   seed=seed, output=output, nrow=nrow, trace=trace, device=device, prompt=prompt, step=step,
                   out_dir=out_dir, npz=npz)


@app.command("serve")
def serve_cmd(run: str = typer.Argument(..., help="A job YAML or a run (./runs/quickstart, s3://bucket/prefix/quickstart)."),
              port: Optional[int] = typer.Option(None, "--port", help="HTTP port on 127.0.0.1 (default: spec.serve.port)."),
              config_out: Optional[Path] = typer.Option(None, "--config-out", help="Write a Serve config file instead."),
              run_uri: Optional[str] = typer.Option(None, "--run-uri", help="Run URI to put in the config file.")):
    """Serves a trained run over HTTP (router + one deployment per expert) on 127.0.0.1."""
    from atoll.serve.cli import serve_command

    os.environ.setdefault("ATOLL_VERBOSE", "1")   # a server's console shows Ray Serve's own logs

    serve_command(run, port=port, config_out=config_out, run_uri=run_uri)


from atoll.lifecycle_cli import register  # noqa: E402  (add-experts, remove-expert, experts, distill)

register(app)


def main() -> None:
    from atoll.errors import user_errors

    try:
        app()
    except user_errors() as e:
        from rich.markup import escape

        console().print(f"[red]error:[/red] {escape(str(e))}")
        sys.exit(2 if e.__class__.__name__ == "SpecError" else 1)
    except KeyboardInterrupt:
        console().print("[yellow]interrupted[/yellow]: run the same command again to resume")
        sys.exit(130)


if __name__ == "__main__":
    main()
