"""The S3 store (``s3://bucket/prefix``) through boto3.

All boto3 calls of the project live here. Objects are written with one PUT or
one multipart upload (``upload_file`` switches over ``multipart_threshold``);
both are atomic in S3: readers see the old object or the new one, never a part.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from atoll.store.base import NotFound, Store, StoreError, join


@dataclass(frozen=True)
class S3Config:
    """Where and how to reach S3. ``None`` fields fall back to the usual AWS
    environment variables / config files (boto3's own resolution)."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    multipart_threshold: int = 64 * 1024 * 1024
    multipart_chunksize: int = 16 * 1024 * 1024

    @classmethod
    def from_env(cls) -> "S3Config":
        return cls(endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("ATOLL_S3_ENDPOINT_URL"))


def _split(uri: str) -> tuple[str, str]:
    rest = uri[len("s3://"):]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise StoreError(f"{uri!r} has no bucket; write it as s3://BUCKET/PREFIX")
    return bucket, prefix.strip("/")


class S3Store(Store):
    def __init__(self, uri: str, config: S3Config | None = None):
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket, self.prefix = _split(uri)
        self.uri = f"s3://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")
        self.config = config or S3Config.from_env()
        c = self.config
        self.client = boto3.session.Session().client(
            "s3",
            endpoint_url=c.endpoint_url,
            region_name=c.region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
            aws_access_key_id=c.access_key_id,
            aws_secret_access_key=c.secret_access_key,
            config=Config(retries={"max_attempts": 3, "mode": "standard"}, s3={"addressing_style": "path"}),
        )
        self.transfer = TransferConfig(multipart_threshold=c.multipart_threshold,
                                       multipart_chunksize=c.multipart_chunksize)

    # -- helpers ------------------------------------------------------------
    def _k(self, key: str) -> str:
        return join(self.prefix, key)

    def _fail(self, e: Exception, key: str, what: str) -> StoreError:
        from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

        url = self.url(key)
        if isinstance(e, NoCredentialsError):
            return StoreError(f"no S3 credentials to {what} {url}; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                              "or spec.store.s3.accessKeyId/secretAccessKey")
        if isinstance(e, EndpointConnectionError):
            return StoreError(f"cannot reach the S3 endpoint {self.config.endpoint_url or 'AWS'} to {what} {url}; "
                              "check spec.store.s3.endpointUrl and that the server is up")
        if isinstance(e, ClientError):
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                return NotFound(f"{url} does not exist")
            if code == "NoSuchBucket":
                return StoreError(f"bucket {self.bucket!r} does not exist ({what} {url}); create it first")
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "Forbidden"):
                return StoreError(f"S3 refused to {what} {url}: {code}; check the access key and secret "
                                  "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or spec.store.s3)")
            return StoreError(f"S3 error {code} to {what} {url}: {e}")
        return StoreError(f"failed to {what} {url}: {e}")

    # -- primitives ---------------------------------------------------------
    def put_bytes(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data)
        except Exception as e:
            raise self._fail(e, key, "write") from e

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._k(key))["Body"].read()
        except Exception as e:
            raise self._fail(e, key, "read") from e

    def get_range(self, key: str, start: int, stop: int) -> bytes:
        if stop <= start:
            return b""
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._k(key),
                                          Range=f"bytes={start}-{stop - 1}")["Body"].read()
        except Exception as e:
            from botocore.exceptions import ClientError

            if isinstance(e, ClientError) and e.response.get("Error", {}).get("Code") == "InvalidRange":
                return b""  # the object is shorter than ``start``
            raise self._fail(e, key, "read") from e

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._k(key))
            return True
        except Exception as e:
            err = self._fail(e, key, "check")
            if isinstance(err, NotFound):
                return False
            raise err from e

    def list(self, prefix: str = "") -> list[str]:
        full = self._k(prefix)
        n = len(self.prefix) + 1 if self.prefix else 0
        out: list[str] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                for obj in page.get("Contents", []):
                    k = obj["Key"]
                    if full and k != full and not k.startswith(full.rstrip("/") + "/"):
                        continue  # "data/a" must not match "data/ab"
                    out.append(k[n:])
        except Exception as e:
            raise self._fail(e, prefix, "list") from e
        return sorted(out)

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._k(key))
        except Exception as e:
            raise self._fail(e, key, "delete") from e

    def put_file(self, key: str, path: str | Path) -> None:
        try:
            self.client.upload_file(str(path), self.bucket, self._k(key), Config=self.transfer)
        except Exception as e:
            # boto3 wraps the ClientError (bad credentials, missing bucket) in
            # S3UploadFailedError; explain the cause, not the wrapper
            cause = getattr(e, "last_exception", None) or e.__cause__ or e.__context__
            raise self._fail(cause if cause is not None and type(e).__name__ == "S3UploadFailedError" else e,
                             key, "upload") from e

    def get_file(self, key: str, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            self.client.download_file(self.bucket, self._k(key), str(tmp), Config=self.transfer)
        except Exception as e:
            tmp.unlink(missing_ok=True)
            raise self._fail(e, key, "download") from e
        os.replace(tmp, path)
        return path

    def local_path(self, key: str) -> None:
        return None

    def create_bucket(self) -> None:
        """Creates the bucket if missing (used by tests and `atoll` setup helpers)."""
        try:
            self.client.create_bucket(Bucket=self.bucket)
        except Exception as e:
            from botocore.exceptions import ClientError

            if isinstance(e, ClientError) and e.response.get("Error", {}).get("Code") in (
                    "BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return
            raise self._fail(e, "", "create bucket") from e
