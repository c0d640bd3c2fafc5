"""Duplicate keys, snake_case keys and strategies that ask for more experts than the job trains."""
from __future__ import annotations

import pytest

from atoll.spec import SpecError, loads
from atoll.spec.loader import safe_load_unique
from atoll.spec.models import TrainingSpec

BASE = """\
apiVersion: atoll/v1
kind: Job
metadata: {name: t}
spec:
  data: {source: {type: digits}}
  partition: {k: 4, fineClusters: 16}
"""


def test_duplicate_keys_are_all_reported_with_their_paths_even_when_the_spec_is_otherwise_valid():
    text = BASE + "  experts:\n    training:\n      steps: 5\n      lr: 0.1\n      steps: 6\n  sample: {seed: 1, seed: 1}\n"
    with pytest.raises(SpecError) as info:
        loads(text, "job.yaml")
    got = {p.path: p.message for p in info.value.problems}
    assert set(got) == {"spec.experts.training.steps", "spec.sample.seed"}
    assert "lines 9 and 11" in got["spec.experts.training.steps"]


def test_the_same_key_in_two_different_mappings_is_fine():
    job = loads(BASE + "  experts: {training: {steps: 5}}\n  router: {training: {steps: 7}}\n")
    assert job.spec.experts.training.steps == 5 and job.spec.router.training.steps == 7


def test_yaml_aliases_and_merge_keys_are_not_duplicates():
    doc, dups = safe_load_unique("a: &x {p: 1}\nb: *x\nc:\n  <<: *x\n  q: 2\n")
    assert dups == [] and doc["c"] == {"p": 1, "q": 2}


def test_a_recipe_with_a_duplicate_key_names_the_recipe_file(tmp_path):
    (tmp_path / "r.yaml").write_text("model: DiT-XXS/4\ntraining: {steps: 1, steps: 2}\n")
    with pytest.raises(SpecError) as info:
        loads(BASE + "  experts: {recipe: r.yaml}\n", base=tmp_path)
    (p,) = info.value.problems
    assert p.path == "spec.experts.recipe" and "r.yaml" in p.message and "training.steps" in p.message


def test_snake_case_keys_are_rejected_with_the_camel_case_spelling_but_python_may_use_field_names():
    with pytest.raises(SpecError) as info:
        loads(BASE + "  experts: {scaling: {num_workers: 2, cpus_per_worker: 1}}\n")
    msgs = {p.path: p.message for p in info.value.problems}
    assert "write 'numWorkers'" in msgs["spec.experts.scaling.num_workers"]
    assert "write 'cpusPerWorker'" in msgs["spec.experts.scaling.cpus_per_worker"]
    assert TrainingSpec(batch_size=8).batch_size == 8           # building models in code is unchanged


def test_top_n_up_to_k_is_valid_and_a_monolith_accepts_every_strategy():
    assert loads(BASE + "  sample: {strategies: [top4, full]}\n").spec.sample.strategies == ["top4", "full"]
    mono = loads(BASE + "  experts: {mode: monolith}\n  sample: {strategies: [top2]}\n")
    assert mono.spec.num_experts == 1
