"""Where a job's run lives in the store: ``<store>/<metadata.name>/``, and how to reach an S3 store.

Below the pipeline and the sampling library (it imports only ``spec`` and
``store``), so both open runs the same way without one importing the other.
"""
from __future__ import annotations

from atoll.spec import JobSpec
from atoll.store import S3Config, Store, open_store


def s3_config(job: JobSpec) -> S3Config | None:
    """The spec's S3 settings (``spec.store.s3``), or None to use the AWS environment."""
    s = job.spec.store.s3
    if not any([s.endpoint_url, s.region, s.access_key_id, s.secret_access_key]):
        return None
    return S3Config(endpoint_url=s.endpoint_url, region=s.region, access_key_id=s.access_key_id,
                    secret_access_key=s.secret_access_key)


def open_run(job: JobSpec, store_uri: str | None = None, s3: S3Config | None = None) -> Store:
    """The run's folder in the store: ``<store>/<metadata.name>`` (``store_uri`` overrides ``spec.store.uri``,
    ``s3`` the spec's S3 settings)."""
    return open_store(store_uri or job.spec.store.uri, s3 if s3 is not None else s3_config(job)).sub(job.name)


def sibling_run(run: Store, name: str) -> Store:
    """Another run in the same store as ``run``: ``<store>/<name>`` (e.g. a distilled run's teacher), opened
    with ``run``'s S3 settings (a prefix view's are its parent's)."""
    config = getattr(run, "config", None) or getattr(getattr(run, "parent", None), "config", None)
    return open_store(f"{run.uri.rstrip('/').rsplit('/', 1)[0]}/{name}", config)
