"""``atoll serve``: run the app locally on 127.0.0.1, or write its Serve config file."""
from __future__ import annotations

import sys
import time
from pathlib import Path


def serve_command(target: str, *, port: int | None, config_out: Path | None, run_uri: str | None) -> None:
    import yaml

    from atoll.progress import console
    from atoll.serve.app import build_app, resolve_target, serve_config
    from atoll.serve.auth import AuthConfigError
    from atoll.serve.runinfo import run_facts
    from atoll.serve.runner import ServeStartError

    out = console()
    source, spec = resolve_target(target)
    facts = run_facts(source.open())
    if config_out is not None:
        is_yaml = target.endswith((".yaml", ".yml"))
        doc = serve_config(run_uri or (None if is_yaml else source.uri), target if is_yaml else None, spec,
                           facts.num_experts, video=facts.is_video)
        config_out.write_text(yaml.safe_dump(doc, sort_keys=False))
        out.print(f"wrote {config_out}: `serve deploy {config_out}` (or a RayService's serveConfigV2)")
        return
    from atoll.serve import runner

    try:
        app = build_app(target)
        out.print(f"starting {spec.mode} serving of {source.uri} ({facts.num_experts} experts) on {runner.LOOPBACK}")
        url = runner.start(app, spec, facts.num_experts, port=port, progress=lambda line: out.print(f"  {line}"))
    except (ServeStartError, AuthConfigError) as e:
        out.print(f"[red]atoll serve: {e}[/red]")
        _shutdown_quietly(runner)
        sys.exit(1)
    auth = f"; API key required (${spec.auth.api_key_env})" if app_needs_key(spec) else ""
    out.print(f"serving {source.uri} ({facts.num_experts} experts, {spec.mode} mode) at [bold]{url}[/bold] "
              f"(docs: {url}/docs{auth}); Ctrl-C stops")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        out.print("stopping")
    finally:
        _shutdown_quietly(runner)


def app_needs_key(spec) -> bool:
    import os

    return bool((os.environ.get(spec.auth.api_key_env) or "").strip())


def _shutdown_quietly(runner) -> None:
    try:
        runner.shutdown()
    except Exception:  # Serve never started
        pass
