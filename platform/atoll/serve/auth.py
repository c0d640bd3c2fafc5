"""The optional API key of the served app (``serve.auth``): ``Authorization: Bearer <key>``.

The key comes from an environment variable (``serve.auth.apiKeyEnv``, default ``ATOLL_API_KEY``) of
the process that builds the app; on Kubernetes the Helm chart sets it from the Secret named by
``serve.auth.apiKeySecret``. Only its SHA-256 leaves that process (the ingress compares digests in
constant time), and neither the key nor what a client sent is ever logged or echoed.
"""
from __future__ import annotations

import hashlib
import hmac
import os

from atoll.spec.models import AuthSpec


class AuthConfigError(RuntimeError):
    """``serve.auth`` asks for a key that the environment does not hold."""


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def api_key_digest(auth: AuthSpec, environ: dict | None = None) -> str | None:
    """SHA-256 of the API key when one is set; None serves without a key.

    ``AuthConfigError`` when ``serve.auth.apiKeySecret`` (or ``required``) says a key is needed and
    the variable is empty: a deployment meant to be protected never starts open.
    """
    env = os.environ if environ is None else environ
    key = (env.get(auth.api_key_env) or "").strip()
    if key:
        return digest(key)
    if auth.api_key_secret or auth.required:
        why = (f"serve.auth.apiKeySecret is {auth.api_key_secret!r}" if auth.api_key_secret
               else "serve.auth.required is true")
        raise AuthConfigError(f"{why} but ${auth.api_key_env} is empty in the process that builds the app: "
                              f"set {auth.api_key_env} (on Kubernetes the chart sets it from that Secret; check "
                              "that the Secret exists and has the key serve.auth.apiKeySecretKey)")
    return None


def bearer_dependency(expected: str):
    """A FastAPI dependency that lets a request through only with ``Authorization: Bearer <the key>``."""
    from fastapi import Depends
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

    from atoll.serve.schema import RequestError

    scheme = HTTPBearer(auto_error=False, description="The API key (serve.auth): Authorization: Bearer <key>")
    challenge = {"WWW-Authenticate": "Bearer"}

    async def check(credentials: HTTPAuthorizationCredentials | None = Depends(scheme)) -> None:
        if credentials is None or not credentials.credentials:
            raise RequestError("authorization", "this server needs an API key: send the header "
                               "'Authorization: Bearer <key>'", status=401, headers=challenge)
        if not hmac.compare_digest(digest(credentials.credentials), expected):
            raise RequestError("authorization", "the API key is not valid", status=401, headers=challenge)

    return Depends(check)
