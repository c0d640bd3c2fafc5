"""Loading a run: ensemble and monolith, and clear errors for bad URIs and missing checkpoints."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from atoll.sampling import Ensemble, RunNotFound

from sampling_helpers import save_run


def test_loads_experts_router_and_class_names(saved_runs):
    ens = Ensemble.from_pretrained(str(Path(saved_runs["root"]) / "ens"))
    assert ens.num_experts == 2 and ens.router is not None
    assert ens.class_names[3] == "c3" and ens.num_classes == 4
    res = ens.sample(2, class_labels=[0, 3], strategy="top1", steps=2)
    assert res.images.shape == (2, 1, 8, 8)


def test_loads_from_a_job_yaml(saved_runs, tmp_path):
    job_file = tmp_path / "job.yaml"
    job_file.write_text(f"""
apiVersion: atoll/v1
kind: Job
metadata: {{name: ens}}
spec:
  store: {{uri: "{saved_runs['root']}"}}
  data: {{source: {{type: digits}}}}
  partition: {{k: 2, fineClusters: 16}}
""")
    assert Ensemble.from_pretrained(str(job_file)).num_experts == 2


def test_monolith_has_no_router_and_strategies_collapse(saved_runs):
    ens = Ensemble.from_pretrained("file://" + str(Path(saved_runs["root"]) / "mono"))
    assert ens.num_experts == 1 and ens.router is None
    a = ens.sample(2, class_labels=1, strategy="top1", steps=2, output="float").images
    b = ens.sample(2, class_labels=1, strategy="full", steps=2, output="float").images
    assert torch.equal(a, b)


def test_bad_run_uri_names_the_path_and_the_fix(tmp_path):
    missing = tmp_path / "runs" / "nope"
    with pytest.raises(RunNotFound) as e:
        Ensemble.from_pretrained(str(missing))
    msg = str(e.value)
    assert str(missing) in msg and "atoll run JOB.yaml" in msg
    assert isinstance(e.value, FileNotFoundError)  # the CLI's user-error handler prints it


def test_missing_expert_checkpoint_names_its_path(tmp_path):
    _, run = save_run(str(tmp_path), "broken", 2)
    run.delete("experts/001/model/manifest.json")  # a save that died half way
    with pytest.raises(RunNotFound, match=r"expert 1 \(of 2\) has no committed checkpoint at .*experts/001/model"):
        Ensemble.from_pretrained(str(tmp_path / "broken"))


def test_ensemble_without_router_is_a_clear_error(tmp_path):
    save_run(str(tmp_path), "norouter", 2, router=False)
    with pytest.raises(RunNotFound, match=r"the router has no committed checkpoint at .*norouter/router/model"):
        Ensemble.from_pretrained(str(tmp_path / "norouter"))


def test_run_without_job_json_is_found_by_its_expert_folders(tmp_path, saved_runs):
    dst = tmp_path / "copy"
    shutil.copytree(Path(saved_runs["root"]) / "ens", dst)
    (dst / "job.json").unlink()
    assert Ensemble.from_pretrained(str(dst)).num_experts == 2
