"""One island worker without Ray: ``python -m atoll.train.worker CONFIG.json``.

Runs ``loop.train_island`` with the plain context (``context.plain_context``): alone (world size
1) or as one of ``torchrun --nproc-per-node N -m atoll.train.worker CONFIG.json`` workers, which
set ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. ``CONFIG.json`` is
the loop config Atoll's islands build (``islands.plan.loop_config``: the job as a dict, role,
expert, prefix, run URI). A restarted worker group resumes from the last committed checkpoint,
like a Ray Train restart.
"""
from __future__ import annotations

import json
import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    with open(args[0]) as f:
        cfg = json.load(f)
    import torch.distributed as dist

    from atoll.train.context import plain_context
    from atoll.train.loop import train_island

    ctx = plain_context()
    try:
        train_island(cfg, ctx)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
