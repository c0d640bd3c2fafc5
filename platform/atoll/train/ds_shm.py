"""DeepSpeed's CPU shared-memory collectives (``deepspeed_shm_comm``): built safely, or left out.

DeepSpeed JIT-compiles the op with g++ the first time a CPU engine starts. torch's extension loader
guards the build with a bare lock *file* (``<build dir>/lock``, ``torch.utils.file_baton``): a builder
that dies mid-build (a killed worker, a timed-out test, a machine restart) leaves the file behind and
every later engine waits on it forever (seen: four workers of a ZeRO island idle for good in
``FileBaton.wait``). So every Atoll engine loads the op here first, under an ``fcntl`` lock that the
kernel drops when its holder dies: whoever holds it is the only Atoll builder alive, so a baton file it
finds is stale and removed. A build that fails (no compiler) leaves the op out; the engine then uses
torch.distributed's own collectives (gloo), slower on CPU but correct.
"""
from __future__ import annotations

import fcntl
import logging
import os
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)
OP = "deepspeed_shm_comm"


def prepare(world_size: int) -> bool:
    """Before ``deepspeed.initialize``: True when the op is loaded in this process, False when the
    engine will go without it (one rank has nothing to reduce between processes, so nothing is built:
    22 s of g++ on a fresh 2-core machine that every single-worker island used to wait for)."""
    import deepspeed.ops

    if world_size <= 1:
        deepspeed.ops.__compatible_ops__[OP] = False
        return False
    builder = _builder()
    if builder is None or not deepspeed.ops.__compatible_ops__.get(OP, False):
        return False
    try:
        with build_lock(build_dir()):
            builder.load(verbose=False)
        return True
    except Exception as e:  # noqa: BLE001 - any build failure: go on without the op, say why
        log.warning("DeepSpeed's CPU shared-memory collectives could not be built (%s: %s); this island "
                    "reduces through torch.distributed instead. Install g++ and ninja to get them.",
                    type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        deepspeed.ops.__compatible_ops__[OP] = False
        return False


def build_dir() -> Path:
    """Where torch builds and caches the op (``TORCH_EXTENSIONS_DIR``, else torch's default root)."""
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(OP, verbose=False))


@contextmanager
def build_lock(directory: Path):
    """Holds ``directory/.atoll-build.lock`` (an ``fcntl`` lock: released by the kernel if this process
    dies) and, once held, removes torch's baton file ``directory/lock`` left by a builder that died."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / ".atoll-build.lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        baton = directory / "lock"
        if baton.exists():
            log.warning("removed %s, left by an extension build that did not finish", baton)
            baton.unlink(missing_ok=True)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _builder():
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().create_op_builder("ShareMemCommBuilder")
