"""Retiring an expert (``atoll remove-expert``, ``experts/registry.json``): a new version serves the others with
the router renormalised over them, in the library, the serving replica and the CLI; no weights move."""
from __future__ import annotations

import json

import pytest
import torch
from sampling_helpers import save_run
from typer.testing import CliRunner

from atoll.cli import app
from atoll.experts_registry import REGISTRY, RegistryError, load, retire
from atoll.sampling import Ensemble


@pytest.fixture
def three(tmp_path):
    return save_run(str(tmp_path), "three", 3)


def files_of(run, prefix: str) -> dict[str, bytes]:
    return {k: run.get_bytes(k) for k in run.list(prefix)}


def test_a_retired_expert_leaves_the_others_served_with_the_routers_renormalised_probabilities(three):
    job, run = three
    before = Ensemble.from_pretrained(run.uri)
    weights = files_of(run, "experts")
    reg = retire(run, 1, num_experts=3, reason="stale data")
    assert reg["version"] == 2 and reg["router"] == "router/versions/v2/model"
    assert [e["state"] for e in reg["experts"]] == ["active", "retired", "active"]
    assert reg["history"][-1]["action"] == "retire" and reg["history"][-1]["reason"] == "stale data"
    assert files_of(run, "experts") == {**weights, REGISTRY: run.get_bytes(REGISTRY)}  # no weights moved
    assert run.manifest("router/model") is not None  # the version-1 router stays

    after = Ensemble.from_pretrained(run.uri)
    assert after.num_experts == 2 and after.router.config.num_experts == 2
    for new, old in zip(after.experts, [before.experts[0], before.experts[2]]):
        assert all(torch.equal(a, b) for a, b in zip(new.state_dict().values(), old.state_dict().values()))
    x, t = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.linspace(0.1, 0.9, 6)
    p_old = before.route(x, t)[:, [0, 2]]
    assert torch.allclose(after.route(x, t), p_old / p_old.sum(1, keepdim=True), atol=1e-6)
    y = torch.arange(6) % 4
    v, trace = after.velocity(x, t, y, guidance=2.0, strategy="full")
    w = p_old / p_old.sum(1, keepdim=True)
    want = sum(w[:, i, None, None, None] * before.expert_velocity(k, x, t, y, 2.0) for i, k in enumerate([0, 2]))
    assert torch.allclose(v, want, atol=1e-5)


def test_the_serving_replica_and_its_facts_serve_the_active_experts(three):
    from atoll.serve.deployments import EnsembleReplica
    from atoll.serve.runinfo import RunSource, experts_summary, run_facts

    _, run = three
    retire(run, 0, num_experts=3)
    facts = run_facts(run)
    assert facts.num_experts == 2 and facts.expert_ids == (1, 2) and facts.version == 2
    rows = experts_summary(run, facts)
    assert [(r["id"], r["expert"], r["deployment"]) for r in rows] == [(0, 1, "Expert-000"), (1, 2, "Expert-001")]
    rep = EnsembleReplica(RunSource(run.uri))  # the plain class: no Ray, no Serve
    lib = Ensemble.from_pretrained(run.uri)
    assert rep.engine.num_experts == 2
    x, t = torch.randn(3, 1, 8, 8), torch.full((3,), 0.5)
    assert torch.allclose(rep.engine.router(x, t), lib.router(x, t))


def test_retiring_down_to_one_expert_serves_it_alone_and_retraining_starts_over(three):
    from atoll import pipeline

    job, run = three
    retire(run, 2, num_experts=3)
    reg = retire(run, 0, num_experts=3)
    assert reg["version"] == 3 and [e["id"] for e in reg["experts"] if e["state"] == "active"] == [1]
    ens = Ensemble.from_pretrained(run.uri)
    assert ens.num_experts == 1 and ens.router is None
    with pytest.raises(RegistryError, match="last active expert"):
        retire(run, 1, num_experts=3)
    with pytest.raises(RegistryError, match="already retired.*version 2"):
        retire(run, 2, num_experts=3)
    with pytest.raises(RegistryError, match=r"has experts \[0, 1, 2\]"):
        retire(run, 7, num_experts=3)
    pipeline.forget(run, job, "router")  # `atoll run --from router`: the retrained run is version 1 again
    assert not run.exists(REGISTRY) and not run.list("router/versions")
    assert load(run, 3)["version"] == 1


def test_the_cli_lists_and_retires_experts(three):
    _, run = three
    r = CliRunner().invoke(app, ["remove-expert", run.uri, "--expert", "1", "--reason", "old"])
    assert r.exit_code == 0 and "version 2 serves experts [0, 2]" in r.output, r.output
    r = CliRunner().invoke(app, ["experts", run.uri, "--json"])
    reg = json.loads(r.output)
    assert reg["version"] == 2 and reg["experts"][1]["reason"] == "old"
    r = CliRunner().invoke(app, ["experts", run.uri])
    assert r.exit_code == 0 and "retired" in r.output and "version 2" in r.output
    r = CliRunner().invoke(app, ["remove-expert", run.uri, "--expert", "1"])
    assert r.exit_code != 0 and "already retired" in str(r.exception or r.output)


def test_a_grown_registry_is_served_whole_and_numbers_the_next_expert_after_it(three):
    """A registry with an expert the job's partition.k does not know (as ``atoll add-experts`` leaves it): it is
    loaded with the version's router, and the run's expert count (the next id) comes from the registry."""
    from tiny_runs import grow_by_hand

    from atoll.models.checkpoint import from_pretrained
    from atoll.sampling.runs import inspect_run

    job, run = three
    grow_by_hand(run, 3)
    info = inspect_run(run)
    assert (info.num_experts, info.total_experts, info.expert_ids) == (4, 4, [0, 1, 2, 3])
    ens = Ensemble.from_pretrained(run.uri)
    x, t = torch.randn(2, 1, 8, 8), torch.full((2,), 0.3)
    assert torch.allclose(ens.router(x, t)[:, :3], from_pretrained(run, "router/model")(x, t))  # old rows kept
    assert ens.num_experts == 4 and retire(run, 3, num_experts=info.total_experts)["version"] == 3


def test_a_replica_serves_a_new_version_next_and_finishes_the_requests_in_flight_on_the_old(three):
    """``EnsembleReplica.reload_if_changed`` (what its registry watcher runs): a request in flight when the
    version changes ends with the old version's images; the next one gets the new version's, as the library
    gives them."""
    import asyncio

    from tiny_runs import grow_by_hand

    from atoll.serve.deployments import EnsembleReplica, ReplicaOptions
    from atoll.serve.runinfo import RunSource
    from atoll.serve.scheduler import Work

    _, run = three
    rep = EnsembleReplica(RunSource(run.uri), ReplicaOptions(registry_poll_s=0.0))
    v1 = Ensemble.from_pretrained(run.uri)
    work = Work(2, label=1, steps=100, guidance=2.0, seed=5, strategy="full")  # long: still running at the swap

    async def scenario():
        in_flight = asyncio.ensure_future(rep.generate(work))
        await asyncio.sleep(0)  # admitted: its first tick runs
        assert await rep.reload_if_changed() == 1  # nothing new yet
        grow_by_hand(run, 3)
        assert await rep.reload_if_changed() == 2
        assert not in_flight.done()  # the reload did not wait for it
        after = await rep.generate(work)
        return await in_flight, after

    old, new = asyncio.run(scenario())
    v2 = Ensemble.from_pretrained(run.uri)
    assert v2.num_experts == 4 and rep.engine.num_experts == 4 and rep.stats()["registry_version"] == 2
    want = dict(class_labels=1, steps=100, guidance=2.0, seed=5, strategy="full")
    assert torch.equal(old.images, v1.sample(2, **want).images)
    assert torch.equal(new.images, v2.sample(2, **want).images)
    assert not torch.equal(old.images, new.images) and len(new.expert_rows) == 4 and rep.reloads == 1
