"""The control plane's logic with a fake Jobs API (no Ray): retries, lost islands, resume, failure."""
from __future__ import annotations

import textwrap

import pytest

from atoll.islands import control_state
from atoll.islands.local import IslandsFailed
from atoll.islands.ray_jobs import FAILED, SUCCEEDED, Unreachable
from atoll.islands.remote import RayIslands
from atoll.spec import loads
from atoll.store import open_store


def job(store: str, retries: int = 1):
    return loads(textwrap.dedent(f"""
        apiVersion: atoll/v1
        kind: Job
        metadata: {{name: ctl}}
        spec:
          store: {{uri: "{store}"}}
          data: {{source: {{type: digits}}}}
          partition: {{k: 2}}
          islands:
            target: ray
            maxRetries: {retries}
            islands:
              - {{name: a, address: "http://127.0.0.1:1"}}
              - {{name: b, address: "http://127.0.0.1:2"}}
        """))


class Fake:
    """Islands whose jobs end as ``plan[(island, unit)]`` says (default: succeed, committing the unit)."""

    def __init__(self, run, plan=None, down=()):
        self.run, self.plan, self.down, self.submitted = run, dict(plan or {}), set(down), []

    def factory(self, island, address):
        fake = self

        class Client:
            def submit(self, *, entrypoint, submission_id, working_dir, env_vars, metadata=None):
                if island in fake.down:
                    raise Unreachable(f"island {island!r} down")
                fake.submitted.append((island, metadata["atoll_unit"], submission_id))
                return submission_id

            def status(self, job_id):
                if island in fake.down:
                    raise Unreachable(f"island {island!r} down")
                unit = job_id.split("-", 3)[3].rsplit("-", 1)[0]
                result = fake.plan.get((island, unit), SUCCEEDED)
                if result == SUCCEEDED:
                    fake.run.commit("router" if unit == "router" else f"experts/{unit[-3:]}", {"ok": 1})
                return result

            def message(self, job_id):
                return "boom"

        return Client()


def drive(j, run, fake, **kw):
    clock = iter(range(0, 10_000, 5))
    return RayIslands(j, run, run.uri, client_factory=fake.factory, poll_s=0, unreachable_s=10,
                      clock=lambda: next(clock), sleep=lambda s: None, **kw).run()


def test_spread_then_router_and_resume_submits_nothing(tmp_path):
    j = job(str(tmp_path))
    run = open_store(str(tmp_path)).sub("ctl")
    fake = Fake(run)
    st = drive(j, run, fake)
    assert [(i, u) for i, u, _ in fake.submitted] == [("a", "expert-000"), ("b", "expert-001"), ("a", "router")]
    assert st.status == "succeeded" and control_state.load(run).units["expert-001"].island == "b"
    again = Fake(run)
    drive(j, run, again)
    assert again.submitted == []


def test_lost_island_moves_unit_and_failed_job_is_retried_then_named(tmp_path):
    j = job(str(tmp_path), retries=1)
    run = open_store(str(tmp_path)).sub("ctl")
    fake = Fake(run, plan={("a", "expert-000"): FAILED}, down={"b"})
    with pytest.raises(IslandsFailed, match="expert-000.*job FAILED: boom"):
        drive(j, run, fake)
    st = control_state.load(run)
    assert st.status == "failed" and st.units["expert-000"].attempt == 2
    # expert-001's island b never answered: it ran on a instead
    assert st.units["expert-001"].island == "a" and st.units["expert-001"].status == "DONE"
