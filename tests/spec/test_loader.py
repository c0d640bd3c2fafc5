"""Loading is pure, recipes merge the right way round, dump/parse and the JSON Schema agree."""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import jsonschema
import pytest
import yaml

from atoll.spec import JobSpec, SpecError, dump, json_schema, load, loads, parse
from atoll.spec.loader import RECIPES_DIR

REPO = Path(__file__).resolve().parents[2]
JOBS = sorted((REPO / "jobs").rglob("*.yaml")) + sorted((REPO / "jobs").rglob("*.yml"))
QUICKSTART = REPO / "jobs" / "quickstart.yaml"

MINIMAL = """\
apiVersion: atoll/v1
kind: Job
metadata: {name: t}
spec:
  data: {source: {type: digits}}
"""


@pytest.mark.parametrize("path", JOBS, ids=[str(p.relative_to(REPO)) for p in JOBS])
def test_every_job_in_repo_parses(path):
    spec = load(path)
    assert isinstance(spec, JobSpec)
    assert spec.name == yaml.safe_load(path.read_text())["metadata"]["name"]


def test_there_are_jobs():
    assert QUICKSTART in JOBS


def test_quickstart_values():
    spec = load(QUICKSTART)
    assert spec.spec.partition.k == 4 and spec.spec.partition.fine_clusters == 1024
    assert spec.spec.data.source.type == "fashion-mnist"
    assert spec.spec.experts.model == "DiT-XXS/4"  # from the dit-xxs4 recipe
    assert spec.spec.experts.training.lr == 0.003  # recipe value
    assert spec.spec.data.num_samples() == 70000
    assert spec.spec.num_experts == 4


def _listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_loading_has_no_side_effects(tmp_path, monkeypatch):
    work, tmp = tmp_path / "cwd", tmp_path / "tmp"
    work.mkdir(), tmp.mkdir()
    monkeypatch.chdir(work)
    for var in ("TMPDIR", "TEMP", "TMP"):
        monkeypatch.setenv(var, str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    spec_dir = QUICKSTART.parent
    before = (_listing(spec_dir), _listing(RECIPES_DIR), _listing(work), _listing(tmp))
    load(QUICKSTART)
    loads(MINIMAL.replace("{type: digits}", "{type: fashion-mnist}") + "  store: {uri: s3://bkt/runs}\n")
    for bad in ("x: [", MINIMAL + "  experts: {recipe: nope}\n", MINIMAL + "  store: {uri: 'gs://x'}\n"):
        with pytest.raises(SpecError):
            loads(bad)
    after = (_listing(spec_dir), _listing(RECIPES_DIR), _listing(work), _listing(tmp))
    assert after == before
    assert not (work / "runs").exists()


def test_parse_does_not_change_callers_dict():
    doc = yaml.safe_load(QUICKSTART.read_text())
    orig = copy.deepcopy(doc)
    parse(doc, base=QUICKSTART.parent)
    assert doc == orig


def test_recipe_fills_in_and_inline_keys_win(tmp_path):
    (tmp_path / "mine.yaml").write_text(
        "model: DiT-S/2\nconditioning: none\ntraining: {steps: 777, batchSize: 32, lr: 0.002}\n")
    text = MINIMAL + "  experts:\n    recipe: mine.yaml\n    model: DiT-B/2\n    training: {steps: 5}\n"
    spec = loads(text, base=tmp_path).spec.experts
    assert spec.model == "DiT-B/2"            # inline overrides the recipe
    assert spec.training.steps == 5           # nested inline key overrides
    assert spec.training.batch_size == 32     # nested recipe key fills in beside it
    assert spec.training.lr == 0.002
    assert spec.conditioning == "none"        # recipe key fills in
    assert spec.recipe == "mine.yaml"


def test_recipe_by_name_from_experts_folder():
    recipe = yaml.safe_load((RECIPES_DIR / "dit-xs.yaml").read_text())
    spec = loads(MINIMAL + "  experts: {recipe: dit-xs}\n").spec.experts
    assert spec.model == recipe["model"]
    assert spec.training.steps == recipe["training"]["steps"]


def test_recipe_with_unknown_key_is_reported(tmp_path):
    (tmp_path / "r.yaml").write_text("model: DiT-S/2\nmodle: x\n")
    with pytest.raises(SpecError) as info:
        loads(MINIMAL + "  experts: {recipe: r.yaml}\n", base=tmp_path)
    assert [p.path for p in info.value.problems] == ["spec.experts.modle"]


def test_recipe_that_is_not_a_mapping(tmp_path):
    (tmp_path / "r.yaml").write_text("- 1\n")
    with pytest.raises(SpecError) as info:
        loads(MINIMAL + "  experts: {recipe: r.yaml}\n", base=tmp_path)
    assert "must be a mapping" in str(info.value)


@pytest.mark.parametrize("text", [
    None,
    MINIMAL + "  experts: {recipe: dit-xs, training: {steps: 3, gradClip: null}}\n"
              "  islands: {islands: [{name: a, experts: [0, 1]}, {name: b}]}\n"
              "  serve: {mode: distributed, experts: {numReplicas: auto}}\n  store: {uri: s3://bkt/p, s3: {region: eu-west-1}}\n",
], ids=["quickstart", "rich"])
def test_dump_round_trips(text):
    spec = load(QUICKSTART) if text is None else loads(text)
    d = dump(spec)
    assert d["apiVersion"] == "atoll/v1" and "fineClusters" in d["spec"]["partition"]
    again = parse(d)
    assert again == spec
    assert dump(again) == d
    # and through YAML text, as a user would save it
    assert loads(yaml.safe_dump(d)) == spec


def _validator():
    schema = json_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_json_schema_is_valid_and_accepts_the_jobs():
    v = _validator()
    for path in JOBS:
        errors = list(v.iter_errors(yaml.safe_load(path.read_text())))
        assert not errors, [e.message for e in errors]
    assert not list(v.iter_errors(dump(load(QUICKSTART))))


def test_json_schema_forbids_unknown_keys():
    schema = json_schema()
    assert schema["additionalProperties"] is False
    assert all(d.get("additionalProperties") is False for d in schema["$defs"].values() if d.get("type") == "object")
    v = _validator()
    doc = yaml.safe_load(QUICKSTART.read_text())
    doc["spec"]["partition"]["fineClustres"] = doc["spec"]["partition"].pop("fineClusters")
    errors = list(v.iter_errors(doc))
    assert errors and any("fineClustres" in e.message for e in errors)
    doc = yaml.safe_load(QUICKSTART.read_text())
    doc["spec"]["data"]["source"]["splt"] = "all"
    assert list(v.iter_errors(doc))
    doc = yaml.safe_load(QUICKSTART.read_text())
    doc["kind"] = "Pod"
    assert list(v.iter_errors(doc))


def test_json_schema_uses_camel_case():
    props = json_schema()["$defs"]["PartitionSpec"]["properties"]
    assert "fineClusters" in props and "fine_clusters" not in props
