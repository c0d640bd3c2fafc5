"""The thin layer over Ray's Jobs API: every ``ray.job_submission`` call of Atoll lives here.

One ``JobsClient`` per island (a Ray cluster's dashboard address). The Ray
client is created lazily, on first use, and again after a connection error, so
an island that is down when the control plane starts is only 'unreachable', not
fatal. Every network failure is raised as ``Unreachable``; everything else the
Jobs API says (unknown job, bad request) as ``JobsError``. Every HTTP request has
a timeout (``timeout_s``; Ray's client sets none), so an island whose packets are
dropped (a cut link, not a refused connection) is unreachable too, not a hang.
"""
from __future__ import annotations

import functools
import os
import re

#: what a job's status can be (ray.job_submission.JobStatus values)
PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED = "PENDING", "RUNNING", "STOPPED", "SUCCEEDED", "FAILED"
TERMINAL = (STOPPED, SUCCEEDED, FAILED)


class JobsError(RuntimeError):
    """The island's Jobs API answered, with an error."""


class Unreachable(JobsError):
    """The island's Jobs API did not answer (connection refused, timeout, DNS)."""


def auth_token(island: str) -> str | None:
    """``ATOLL_RAY_AUTH_TOKEN_<ISLAND>`` (island name upper-cased, '-' -> '_'), else ``RAY_AUTH_TOKEN``."""
    key = "ATOLL_RAY_AUTH_TOKEN_" + re.sub(r"[^A-Z0-9]", "_", island.upper())
    return os.environ.get(key) or os.environ.get("RAY_AUTH_TOKEN") or None


def _network_errors() -> tuple[type[BaseException], ...]:
    errs: list[type[BaseException]] = [ConnectionError, TimeoutError, OSError]
    try:
        import requests

        errs.append(requests.exceptions.RequestException)
    except ImportError:  # pragma: no cover - ray[default] brings requests
        pass
    return tuple(errs)


@functools.lru_cache(maxsize=None)
def _timed_client_class(timeout_s: float):
    """Ray's ``JobSubmissionClient`` with a timeout on every request (its constructor's version check too)."""
    import logging

    from ray.job_submission import JobSubmissionClient

    from atoll.runtime import verbose

    if not verbose():   # "Uploading package gcs://..." on every submit: Ray's INFO, shown with -v
        logging.getLogger("ray.dashboard.modules.dashboard_sdk").setLevel(logging.WARNING)

    class TimedJobSubmissionClient(JobSubmissionClient):
        def _do_request(self, method, endpoint, **kwargs):
            kwargs.setdefault("timeout", timeout_s)
            return super()._do_request(method, endpoint, **kwargs)

    return TimedJobSubmissionClient


class JobsClient:
    """The Jobs API of one island. ``address``: e.g. ``http://127.0.0.1:8265``."""

    def __init__(self, island: str, address: str, token: str | None = None, timeout_s: float = 10.0):
        self.island, self.address, self.timeout_s = island, address, timeout_s
        self.token = token if token is not None else auth_token(island)
        self._client = None

    # -- plumbing -------------------------------------------------------------------
    def _call(self, what: str, fn):
        try:
            if self._client is None:
                headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
                self._client = _timed_client_class(self.timeout_s)(self.address, headers=headers)
            return fn(self._client)
        except _network_errors() as e:
            self._client = None
            raise Unreachable(f"island {self.island!r} ({self.address}) is unreachable ({what}): "
                              f"{type(e).__name__}: {_first_line(e)}") from e
        except Exception as e:
            msg = _first_line(e)
            if "Failed to connect" in msg or "Connection" in type(e).__name__:
                self._client = None
                raise Unreachable(f"island {self.island!r} ({self.address}) is unreachable ({what}): {msg}") from e
            err = JobsError(f"island {self.island!r} ({self.address}): {what} failed: {type(e).__name__}: {msg}")
            err.detail = str(e)
            raise err from e

    # -- the calls ------------------------------------------------------------------
    def submit(self, *, entrypoint: str, submission_id: str, working_dir: str, env_vars: dict[str, str],
               metadata: dict[str, str] | None = None) -> str:
        """Submits a job; a ``submission_id`` already on the island is adopted, not resubmitted."""
        runtime_env = {"working_dir": working_dir, "env_vars": dict(env_vars)}
        try:
            return self._call("submit_job", lambda c: c.submit_job(
                entrypoint=entrypoint, submission_id=submission_id, runtime_env=runtime_env,
                metadata=dict(metadata or {})))
        except JobsError as e:
            if not isinstance(e, Unreachable) and "already exists" in getattr(e, "detail", ""):
                return submission_id
            raise

    def status(self, job_id: str) -> str:
        return str(self._call("get_job_status", lambda c: c.get_job_status(job_id)))

    def message(self, job_id: str) -> str:
        """The Jobs API's own explanation of a job's status (e.g. why it failed)."""
        info = self._call("get_job_info", lambda c: c.get_job_info(job_id))
        return (getattr(info, "message", None) or "").strip()

    def logs(self, job_id: str) -> str:
        return self._call("get_job_logs", lambda c: c.get_job_logs(job_id))

    def stop(self, job_id: str) -> bool:
        return bool(self._call("stop_job", lambda c: c.stop_job(job_id)))

    def ping(self) -> None:
        """Raises ``Unreachable`` unless the island answers."""
        self._call("list_jobs", lambda c: c.list_jobs())


def _first_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return (lines[0] if lines else repr(e))[:400]
