"""The evaluation classifier cache: weights + config in an Atoll store, trained once.

Layout under ``key`` (a store prefix)::

    model.safetensors   the state dict
    config.json         {"config": ClassifierConfig, "meta": how it was trained}
    manifest.json       committed last: format, file sizes and sha256

The default store is ``~/.cache/atoll/eval`` (or ``$ATOLL_EVAL_CACHE``, any
store URI). There is no in-process cache: every ``get_classifier`` reads the
store, which takes milliseconds for this model.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable

from atoll.eval.classifier import Classifier, ClassifierConfig
from atoll.eval.errors import EvalError
from atoll.eval.reference import train_fashion_mnist
from atoll.store import Store, join, open_store
from atoll.store.base import sha256_bytes

DEFAULT_CACHE = "~/.cache/atoll/eval"
DEFAULT_KEY = "eval/classifier-fashion-mnist"
FORMAT = "atoll-eval-classifier/1"
WEIGHTS, CONFIG = "model.safetensors", "config.json"


def cache_store(store: Store | str | None = None) -> Store:
    """``store`` itself, the store at that URI, or the default cache (``$ATOLL_EVAL_CACHE`` or ~/.cache/atoll/eval)."""
    if isinstance(store, Store):
        return store
    return open_store(store or os.environ.get("ATOLL_EVAL_CACHE") or os.path.expanduser(DEFAULT_CACHE))


def save_classifier(store: Store, key: str, model: Classifier) -> dict:
    """Writes the classifier under ``key`` and commits its manifest last; returns the manifest."""
    from safetensors.torch import save

    weights = save({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()})
    config = json.dumps({"config": model.config.to_dict(), "meta": model.meta}, indent=2, sort_keys=True).encode()
    files = {WEIGHTS: weights, CONFIG: config}
    for name, data in files.items():
        store.put_bytes(join(key, name), data)
    return store.commit(key, {"format": FORMAT, "files": {n: {"bytes": len(d), "sha256": sha256_bytes(d)}
                                                          for n, d in files.items()}})


def load_classifier(store: Store, key: str) -> Classifier | None:
    """The committed classifier under ``key`` (eval mode), or None if there is none or its format is old.

    Files that do not match the manifest raise EvalError naming the key and the fix.
    """
    from safetensors.torch import load

    manifest = store.manifest(key)
    if manifest is None or manifest.get("format") != FORMAT:
        return None
    data = {}
    for name in (WEIGHTS, CONFIG):
        data[name] = store.get_bytes(join(key, name))
        want = manifest.get("files", {}).get(name, {}).get("sha256")
        if sha256_bytes(data[name]) != want:
            raise EvalError(f"cached classifier file {store.url(join(key, name))} does not match its manifest "
                            f"(corrupt or half-written); delete {store.url(key)} and it will be retrained")
    cfg = json.loads(data[CONFIG])
    model = ClassifierConfig.from_dict(cfg["config"]).build()
    model.load_state_dict(load(data[WEIGHTS]))
    model.meta = cfg.get("meta", {})
    return model.eval()


def get_classifier(store: Store | str | None = None, key: str = DEFAULT_KEY,
                   train_fn: Callable[[], Classifier] | None = None) -> Classifier:
    """The classifier cached under ``key``; trains it with ``train_fn()`` and caches it if absent.

    ``train_fn`` defaults to the Fashion-MNIST reference classifier
    (``atoll.eval.reference.train_fashion_mnist``). A second call with the same store
    and key loads the saved weights and does not call ``train_fn``.
    """
    st = cache_store(store)
    model = load_classifier(st, key)
    if model is not None:
        return model
    model = (train_fn or train_fashion_mnist)()
    if not isinstance(model, Classifier):
        raise EvalError(f"train_fn must return an atoll.eval.classifier.Classifier, got {type(model).__name__}")
    save_classifier(st, key, model)
    return model.eval()
