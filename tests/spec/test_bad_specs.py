"""Every bad spec is rejected with the field path and a message that says the fix."""
from __future__ import annotations

import textwrap

import pytest

from atoll.spec import SpecError, loads

GOOD = """\
apiVersion: atoll/v1
kind: Job
metadata: {name: t}
spec:
  data: {source: {type: digits}}
"""


def body(yaml_under_spec: str) -> str:
    """GOOD plus extra sections under ``spec:`` (given unindented)."""
    return GOOD + textwrap.indent(textwrap.dedent(yaml_under_spec).strip("\n"), "  ") + "\n"


# (id, yaml, expected path, fragment of the message)
CASES = [
    ("unknown-top-level-key", GOOD + "extra: 1\n", "extra", "unknown key 'extra'"),
    ("misspelled-nested-key", body("partition: {fineClustres: 8}"),
     "spec.partition.fineClustres", "did you mean 'fineClusters'"),
    ("misspelled-key-in-digits-source", GOOD.replace("{type: digits}", "{type: digits, lmit: 3}"),
     "spec.data.source.lmit", "unknown key 'lmit'"),
    ("misspelled-key-in-tagged-source", GOOD.replace("{type: digits}", "{type: fashion-mnist, splt: all}"),
     "spec.data.source.splt", "did you mean 'split'"),
    ("misspelled-key-in-pca-features", body("partition: {features: {type: pca, dim: 8}}"),
     "spec.partition.features.dim", "did you mean 'dims'"),
    ("wrong-api-version", GOOD.replace("atoll/v1", "atoll/v2"), "apiVersion", "use atoll/v1"),
    ("wrong-kind", GOOD.replace("kind: Job", "kind: Pod"), "kind", "'Job'"),
    ("bad-metadata-name", GOOD.replace("name: t", "name: My_Run"), "metadata.name", "lowercase letters"),
    ("missing-data-section", GOOD.replace("  data: {source: {type: digits}}\n", "  partition: {k: 2}\n"),
     "spec.data", "is required"),
    ("unknown-source-type", GOOD.replace("digits", "cifar10"), "spec.data.source.type", "does not match"),
    ("source-without-type", GOOD.replace("{type: digits}", "{path: /x}"), "spec.data.source", "'type'"),
    ("k-zero", body("partition: {k: 0}"), "spec.partition.k", "greater than or equal to 1"),
    ("k-larger-than-samples", GOOD.replace("{source: {type: digits}}", "{source: {type: digits}, limit: 3}")
     + "  partition: {k: 4, fineClusters: 4}\n", "spec.partition.k", "larger than the number of samples (3)"),
    ("fine-clusters-larger-than-digits", body("partition: {k: 4, fineClusters: 2000}"),
     "spec.partition.fineClusters", "number of samples (1797)"),
    ("fine-clusters-below-k", body("partition: {k: 8, fineClusters: 4}"),
     "spec.partition.fineClusters", "must be >= k"),
    ("batch-not-divisible", body("experts: {training: {batchSize: 10, gradAccum: 2}, scaling: {numWorkers: 2}}"),
     "spec.experts.training.batchSize", "divisible by scaling.numWorkers x training.gradAccum"),
    ("router-batch-not-divisible", body("router: {training: {batchSize: 9}, scaling: {numWorkers: 2}}"),
     "spec.router.training.batchSize", "divisible"),
    ("gpus-without-use-gpu", body("experts: {scaling: {gpusPerWorker: 1}}"),
     "spec.experts.scaling.gpusPerWorker", "useGpu: true"),
    ("ray-target-without-address", body("islands: {target: ray, islands: [{name: a, address: 'http://127.0.0.1:8265'}, {name: b}]}"),
     "spec.islands.islands.1.address", "missing for: b"),
    ("ray-target-without-islands", body("islands: {target: ray}"), "spec.islands.islands", "no islands listed"),
    ("duplicate-island-names", body("islands: {islands: [{name: a}, {name: a}]}"),
     "spec.islands.islands", "repeated: a"),
    ("router-island-unknown", body("islands: {islands: [{name: a}], routerIsland: b}"),
     "spec.islands.routerIsland", "not one of the islands"),
    ("island-expert-id-out-of-range", body("partition: {k: 2, fineClusters: 8}\nislands: {islands: [{name: a, experts: [0, 5]}]}"),
     "spec.islands.islands.0.experts", "ids 0..1"),
    ("unknown-strategy", body("sample: {strategies: [top1, best]}"), "spec.sample.strategies", "unknown strategy 'best'"),
    ("unknown-dit-size", body("experts: {model: DiT-Q/9}"), "spec.experts.model", "unknown DiT size"),
    ("unknown-router-size", body("router: {model: Router-XXL}"), "spec.router.model", "unknown router size"),
    ("missing-recipe-file", body("experts: {recipe: no-such-recipe}"), "spec.experts.recipe", "no recipe file found"),
    ("invalid-yaml", "apiVersion: atoll/v1\nkind: Job\nmetadata: {name: [t\nspec: {}\n", "", "line 4"),
    ("not-a-mapping", "- a\n- b\n", "", "must be a YAML mapping"),
    ("empty-document", "", "", "must be a YAML mapping"),
    ("spec-not-a-mapping", GOOD.split("spec:")[0] + "spec: 5\n", "spec", "valid dictionary"),
    ("s3-uri-without-bucket", body("store: {uri: 's3:///runs'}"), "spec.store.uri", "needs a bucket"),
    ("bad-store-scheme", body("store: {uri: 'gs://bucket/runs'}"), "spec.store.uri", "s3://bucket/prefix"),
    ("num-replicas-neither-int-nor-auto", body("serve: {experts: {numReplicas: many}}"),
     "spec.serve.experts.numReplicas", "'auto'"),
    ("minilm-on-clips", GOOD.replace("{type: digits}", "{type: moving-clips, numClips: 100}")
     + "  partition: {k: 2, fineClusters: 8, features: {type: minilm}}\n",
     "spec.partition.features.type", "use 'pca'"),
    ("duplicate-key", body("partition:\n  k: 2\n  fineClusters: 8\n  k: 3"), "spec.partition.k",
     "duplicate key 'k' (lines 7 and 9)"),
    ("duplicate-key-in-flow-mapping", body("experts: {training: {steps: 3, steps: 4}}"),
     "spec.experts.training.steps", "duplicate key 'steps'"),
    ("duplicate-section", body("sample: {steps: 4}\nsample: {steps: 5}"), "spec.sample", "duplicate key 'sample'"),
    ("duplicate-key-in-a-list-item", body("islands: {islands: [{name: a, name: b}]}"),
     "spec.islands.islands.0.name", "duplicate key 'name'"),
    ("snake-case-key", body("experts: {training: {batch_size: 8}}"), "spec.experts.training.batch_size",
     "spec keys are camelCase, write 'batchSize'"),
    ("snake-case-top-level-section-key", body("partition: {fine_clusters: 8}"), "spec.partition.fine_clusters",
     "write 'fineClusters'"),
    ("top-n-above-k", body("partition: {k: 2, fineClusters: 8}\nsample: {strategies: [top1, top3]}"),
     "spec.sample.strategies", "top3 needs more experts than the job has (partition.k = 2)"),
]


@pytest.mark.parametrize("text,path,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_spec_names_field_and_fix(text, path, fragment):
    with pytest.raises(SpecError) as info:
        loads(text, "job.yaml")
    err = info.value
    paths = [p.path for p in err.problems]
    assert path in paths, f"expected a problem at {path!r}, got {err.problems}"
    problem = next(p for p in err.problems if p.path == path)
    assert fragment in problem.message, problem.message
    text = str(err)
    assert text.startswith("job.yaml: ")
    assert fragment in text and "Traceback" not in text
    # each problem appears once in the text, with its path
    assert f"  - {path or '<root>'}: " in text


def test_at_least_fourteen_cases():
    assert len(CASES) >= 14


def test_many_errors_are_reported_at_once():
    text = """\
kind: Job
metadata: {name: Bad_Name}
spec:
  data: {source: {type: digits}, shardSize: 1}
  partition: {k: 0, fineClustres: 3}
  experts: {model: DiT-Q/9, recipe: no-such-recipe}
  sample: {strategies: [nope]}
  oops: true
"""
    with pytest.raises(SpecError) as info:
        loads(text)
    paths = {p.path for p in info.value.problems}
    assert {"apiVersion", "metadata.name", "spec.data.shardSize", "spec.partition.k",
            "spec.partition.fineClustres", "spec.experts.model", "spec.experts.recipe",
            "spec.sample.strategies", "spec.oops"} <= paths, paths
    assert len(info.value.problems) == len(paths), "no problem reported twice"
    assert f"{len(info.value.problems)} problems in the job spec" in str(info.value)


def test_wrong_api_version_is_reported_once():
    with pytest.raises(SpecError) as info:
        loads(GOOD.replace("atoll/v1", "v0"))
    assert [p.path for p in info.value.problems] == ["apiVersion"]
    assert info.value.problems[0].value == "v0"


def test_problem_carries_the_bad_value():
    with pytest.raises(SpecError) as info:
        loads(body("partition: {k: 0}"))
    (p,) = info.value.problems
    assert p.has_value and p.value == 0
    assert "(got 0)" in str(p)


def test_unknown_key_lists_allowed_keys_when_nothing_is_close():
    with pytest.raises(SpecError) as info:
        loads(body("partition: {zzzz: 1}"))
    (p,) = info.value.problems
    assert "allowed keys here:" in p.message and "fineClusters" in p.message


def test_non_utf8_file_is_a_spec_error(tmp_path):
    from atoll.spec import load

    f = tmp_path / "job.yaml"
    f.write_bytes(b"\xff\xfe\x00 not text")
    with pytest.raises(SpecError) as info:
        load(f)
    assert "UTF-8" in str(info.value)


def test_missing_file_is_a_spec_error(tmp_path):
    from atoll.spec import load

    with pytest.raises(SpecError) as info:
        load(tmp_path / "nope.yaml")
    assert "file not found" in str(info.value)
