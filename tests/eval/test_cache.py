"""The classifier cache: trained once, reloaded exactly, corruption detected."""
from __future__ import annotations

import numpy as np
import pytest

from atoll.eval.cache import DEFAULT_KEY, WEIGHTS, get_classifier
from atoll.eval.classifier import features, train_classifier
from atoll.eval.errors import EvalError
from atoll.store import join, open_store


@pytest.fixture
def counting_trainer(fmnist_train):
    calls = []

    def train():
        calls.append(1)
        return train_classifier(fmnist_train[0][:300], fmnist_train[1][:300], epochs=1, seed=0,
                                batch_size=100, threads=1)

    return train, calls


def test_second_get_loads_without_retraining(tmp_path, counting_trainer, fmnist_test):
    train, calls = counting_trainer
    store = open_store(str(tmp_path / "cache"))
    first = get_classifier(store, key="eval/c", train_fn=train)
    second = get_classifier(store, key="eval/c", train_fn=train)
    assert len(calls) == 1
    assert store.manifest("eval/c")["files"][WEIGHTS]["bytes"] > 0
    x = fmnist_test[0][:200]
    np.testing.assert_array_equal(features(first, x), features(second, x))
    assert second.meta == first.meta and second.config == first.config
    assert not second.training


def test_default_store_comes_from_the_environment(tmp_path, monkeypatch, counting_trainer):
    train, calls = counting_trainer
    monkeypatch.setenv("ATOLL_EVAL_CACHE", str(tmp_path / "env-cache"))
    get_classifier(train_fn=train)
    get_classifier(train_fn=train)
    assert len(calls) == 1
    assert open_store(str(tmp_path / "env-cache")).manifest(DEFAULT_KEY) is not None


def test_corrupt_weights_are_a_clear_error(tmp_path, counting_trainer):
    train, _ = counting_trainer
    store = open_store(str(tmp_path))
    get_classifier(store, key="k", train_fn=train)
    store.put_bytes(join("k", WEIGHTS), b"garbage")
    with pytest.raises(EvalError, match="does not match its manifest"):
        get_classifier(store, key="k", train_fn=train)


def test_train_fn_must_return_a_classifier(tmp_path):
    with pytest.raises(EvalError, match="must return"):
        get_classifier(open_store(str(tmp_path)), key="k", train_fn=lambda: "not a model")
    assert open_store(str(tmp_path)).manifest("k") is None
