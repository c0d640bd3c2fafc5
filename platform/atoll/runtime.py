"""Starting and reaching Ray: the only place that calls ``ray.init``.

Atoll starts a local Ray instance itself (bound to 127.0.0.1) unless an address
is given (``ATOLL_RAY_ADDRESS`` or the argument). Usage stats are off.

The console is Atoll's: Ray workers' output is not forwarded to the driver
(islands write theirs to log files in the run, ``islands.worker_logs``) and
Ray's own INFO lines are not shown, unless ``atoll -v`` (``ATOLL_VERBOSE=1``).
The local instance keeps Ray's default token authentication; Ray's notice that
it is on ("Token authentication is enabled ...", every start) shows with ``-v``.
"""
from __future__ import annotations

import logging
import os

LOOPBACK_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # makes a local Ray use 127.0.0.1
    "RAY_TRAIN_V2_ENABLED": os.environ.get("RAY_TRAIN_V2_ENABLED", "1"),
}
#: environment every Ray worker of a local instance gets
WORKER_ENV = {"DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", ""), "HF_HUB_OFFLINE": "1",
              "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def verbose() -> bool:
    """``atoll -v``: Ray's own output (workers, INFO logs) on the console too."""
    return os.environ.get("ATOLL_VERBOSE", "") not in ("", "0")


def set_loopback_env() -> None:
    for k, v in LOOPBACK_ENV.items():
        os.environ.setdefault(k, v)


def ensure_ray(address: str | None = None, num_cpus: int | None = None, **kwargs) -> None:
    """Connects to Ray once per process (a no-op when already connected)."""
    set_loopback_env()
    import ray

    if ray.is_initialized():
        return
    # inside a Ray job (or when the user says so) RAY_ADDRESS names the cluster to join
    address = address or os.environ.get("ATOLL_RAY_ADDRESS") or os.environ.get("RAY_ADDRESS")
    env = {k: v for k, v in WORKER_ENV.items() if v}
    if not env.get("DS_ACCELERATOR"):
        import torch

        if not torch.cuda.is_available():
            env["DS_ACCELERATOR"] = "cpu"
    os.environ.update({k: v for k, v in env.items() if k not in os.environ})
    loud = verbose()
    kwargs.setdefault("log_to_driver", loud)
    kwargs.setdefault("logging_level", logging.INFO if loud else logging.WARNING)
    if address:
        ray.init(address=address, runtime_env={"env_vars": env}, **kwargs)
    else:
        if not loud:   # Ray's notice about its own default (token auth on), not a problem to act on
            logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        # the dashboard serves the state API that Ray Train and Serve query; loopback only
        # address="local": always a new instance of our own, never a `ray start` cluster found on the machine
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                 runtime_env={"env_vars": env}, _node_ip_address="127.0.0.1", **kwargs)


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
