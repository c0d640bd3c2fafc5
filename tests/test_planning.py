"""``atoll plan`` / ``atoll.planning``: costs before anything runs, checked against the code that runs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from atoll import planning, spec
from atoll.cli import app
from atoll.models.dit import DiTConfig
from atoll.sampling import Ensemble
from atoll.training_memory import state_bytes_per_param, training_memory

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "jobs" / "quickstart.yaml"


def _variant(path: Path, **router) -> spec.JobSpec:
    doc = spec.dump(spec.load(path))
    doc["spec"]["router"] = {**doc["spec"]["router"], **router}
    return spec.parse(doc)


def test_shipped_quickstart_plan_honours_the_router_rule():
    out = CliRunner().invoke(app, ["plan", str(QUICKSTART), "--json"])
    assert out.exit_code == 0, out.output
    p = json.loads(out.output)
    inf = p["inference"]
    assert inf["top1_over_monolith"] <= 1.10
    assert inf["router_share_per_step"] <= planning.ROUTER_SHARE_LIMIT
    assert set(inf["gflops_per_image"]) == {"full", "top1", "top2", "top3"}
    assert p["models"]["router"]["conditioning"] == "class" and p["data"]["origin"] == "source"
    tf = p["training_flops"]
    assert tf["total"] == tf["experts_total"] + tf["router"] and len(tf["experts"]) == 4


def test_inference_costs_equal_the_ensembles_own_count():
    job = spec.load(QUICKSTART)
    expert_cfg, router_cfg = planning.model_configs(job, planning.data_shape(job))
    ens = Ensemble([expert_cfg.build() for _ in range(4)], router_cfg.build())
    p = planning.plan(job)
    s = job.spec.sample
    for strategy, g in p["inference"]["gflops_per_image"].items():
        assert g == pytest.approx(ens.gflops_per_image(strategy, steps=s.steps, guidance=s.guidance))
    mono = Ensemble([expert_cfg.build()]).gflops_per_image("top1", steps=s.steps, guidance=s.guidance)
    assert p["inference"]["monolith_gflops_per_image"] == pytest.approx(mono)


def test_training_flops_are_what_the_islands_report():
    from atoll.train.report import flops_per_sample

    job = spec.load(QUICKSTART)
    expert_cfg, router_cfg = planning.model_configs(job, planning.data_shape(job))
    p = planning.plan(job)
    tr, rt = job.spec.experts.training, job.spec.router.training
    assert p["training_flops"]["experts"]["expert-000"] == flops_per_sample(None, expert_cfg) * tr.batch_size * tr.steps
    assert p["training_flops"]["router"] == flops_per_sample(None, router_cfg) * rt.batch_size * rt.steps
    mono = planning.plan(spec.load(ROOT / "jobs" / "monolith.yaml"))
    assert mono["num_experts"] == 1 and mono["models"]["router"] is None
    assert mono["inference"]["top1_over_monolith"] == 1.0


def test_validate_warns_about_an_expensive_router():
    job = _variant(QUICKSTART, model="Router-S")
    msg = planning.router_warning(job)
    assert msg and "router.model Router-S" in msg and "37%" in msg and "Router-XS@16" in msg
    assert planning.router_warning(spec.load(QUICKSTART)) is None
    out = CliRunner().invoke(app, ["validate", str(QUICKSTART)])
    assert out.exit_code == 0 and "warning" not in out.output


def test_ddm_router_is_at_the_limit_by_the_same_count():
    """DDM: a DiT-B/2 router next to DiT-XL/2 experts (256px, 32x32x4 latents), CFG on: ~10% per step."""
    xl, b = DiTConfig("DiT-XL/2", 32, 4, num_classes=1000), DiTConfig("DiT-B/2", 32, 4, num_classes=1000)
    share = planning.router_share(xl, b, cfg=True)
    assert 0.09 < share <= planning.ROUTER_SHARE_LIMIT
    assert planning.router_share(xl, b, cfg=False) == pytest.approx(2 * share)


def test_unconditional_router_option():
    job = _variant(QUICKSTART, conditioning="none")
    _, router = planning.model_configs(job, planning.data_shape(job))
    assert router.num_classes == 0
    with pytest.raises(spec.SpecError, match="router.conditioning"):
        doc = spec.dump(spec.load(ROOT / "jobs" / "quickstart-text.yaml"))
        doc["spec"]["router"]["conditioning"] = "class"
        spec.parse(doc)


def test_image_folder_shape_is_assumed_unless_known(tmp_path):
    doc = spec.dump(spec.load(QUICKSTART))
    doc["spec"]["data"] = {"source": {"type": "image-folder", "path": str(tmp_path)}}
    job = spec.parse(doc)
    assert planning.data_shape(job).origin == "assumed"
    shape = planning.data_shape(job, {"image_shape": [1, 28, 28], "num_classes": 10})
    assert (shape.channels, shape.size, shape.num_classes, shape.origin) == (1, 28, 10, "store")


def test_memory_follows_the_zero_layout():
    per0 = state_bytes_per_param(0, bf16=True, world=4, ema=False)
    assert per0 == {"weights": 2, "gradients": 2, "master": 4, "adam": 8, "ema": 0}
    per3 = state_bytes_per_param(3, bf16=True, world=4, ema=True)
    assert sum(per3.values()) == pytest.approx((2 + 2 + 4 + 8 + 4) / 4)
    assert state_bytes_per_param(2, bf16=False, world=2, ema=False)["gradients"] == 2.0
    cfg = DiTConfig("DiT-XXS/4", 28, 1, num_classes=10)
    params = sum(p.numel() for p in cfg.build().parameters())
    job = spec.load(QUICKSTART)
    one = training_memory(params, cfg, job.spec.experts.training, job.spec.experts.scaling)
    four = training_memory(params, cfg, job.spec.experts.training.model_copy(update={"zero_stage": 3}),
                           job.spec.experts.scaling.model_copy(update={"num_workers": 4}))
    assert four["micro_batch"] == one["micro_batch"] // 4
    assert four["total_bytes"] < one["total_bytes"] / 3.5


def test_plan_table_renders(tmp_path):
    out = CliRunner().invoke(app, ["plan", str(QUICKSTART)], env={"COLUMNS": "100"})
    assert out.exit_code == 0, out.output
    for word in ("training FLOPs", "sampling cost", "top-1 / monolith", "memory per worker", "Router-XS@16"):
        assert word in out.output
    assert torch.get_default_device().type == "cpu"  # building models on the meta device left no trace
