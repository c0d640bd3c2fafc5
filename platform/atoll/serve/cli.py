"""``atoll serve``: run the app locally on 127.0.0.1, or write its Serve config file."""
from __future__ import annotations

import time
from pathlib import Path


def serve_command(target: str, *, port: int | None, config_out: Path | None, run_uri: str | None) -> None:
    import yaml

    from atoll.progress import console
    from atoll.serve.app import build_app, resolve_target, serve_config
    from atoll.serve.runinfo import run_facts

    source, spec = resolve_target(target)
    facts = run_facts(source.open())
    if config_out is not None:
        is_yaml = target.endswith((".yaml", ".yml"))
        doc = serve_config(run_uri or (None if is_yaml else source.uri), target if is_yaml else None, spec,
                           facts.num_experts, video=facts.is_video)
        config_out.write_text(yaml.safe_dump(doc, sort_keys=False))
        console().print(f"wrote {config_out}: `serve deploy {config_out}` (or a RayService's serveConfigV2)")
        return
    from atoll.serve import runner

    url = runner.start(build_app(target), spec, facts.num_experts, port=port)
    console().print(f"serving {source.uri} ({facts.num_experts} experts) at [bold]{url}[/bold] "
                    f"(docs: {url}/docs); Ctrl-C stops")
    try:
        while True:
            time.sleep(3600)
    finally:
        runner.shutdown()
