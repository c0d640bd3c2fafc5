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
        self.fences: list[tuple[str, str, dict | None]] = []   # (island, entrypoint, the unit's fence at submit)

    def factory(self, island, address):
        fake = self

        class Client:
            def submit(self, *, entrypoint, submission_id, working_dir, env_vars, metadata=None):
                from atoll import fence

                unit = metadata["atoll_unit"]
                prefix = "router" if unit == "router" else f"experts/{unit[-3:]}"
                fake.fences.append((island, entrypoint, fence.holder(fake.run.sub(prefix))))
                if island in fake.down:
                    raise Unreachable(f"island {island!r} down")
                fake.submitted.append((island, unit, submission_id))
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


def test_every_attempt_is_fenced_before_it_is_submitted_and_carries_its_number(tmp_path):
    j = job(str(tmp_path), retries=2)
    run = open_store(str(tmp_path)).sub("ctl")
    fake = Fake(run, plan={("a", "expert-000"): FAILED}, down={"b"})   # b never answers: expert-001 moves to a
    with pytest.raises(IslandsFailed):
        drive(j, run, fake)
    for island, entry, held in fake.fences:
        n = int(entry.rsplit("--attempt ", 1)[1])
        assert held["attempt"] == n and held["island"] == island, (entry, held)   # claimed first, for that island
        assert held["job_id"].endswith(f"-a{n}")
    e0 = [held["attempt"] for island, _, held in fake.fences if "--expert 0" in _]
    assert e0 == [1, 2, 3]                                    # a retry is a new attempt number
    e1 = [(island, held["attempt"]) for island, _, held in fake.fences if "--expert 1" in _]
    assert e1[0] == ("b", 1) and e1[-1][0] == "a" and e1[-1][1] > 1   # the unreachable try used up its number
    st = control_state.load(run)
    assert st.units["expert-001"].attempt == e1[-1][1]


def test_lost_after_seconds_comes_from_the_spec(tmp_path):
    from atoll.spec import dump, parse

    default = job(str(tmp_path))
    doc = dump(default)
    doc["spec"]["islands"]["lostAfterSeconds"] = 7.5
    run = open_store(str(tmp_path)).sub("ctl")
    assert RayIslands(parse(doc), run, run.uri, client_factory=Fake(run).factory).unreachable_s == 7.5
    assert RayIslands(default, run, run.uri, client_factory=Fake(run).factory).unreachable_s == 30.0


def test_a_silent_island_times_out_instead_of_hanging(tmp_path):
    import socket
    import time

    from atoll.islands.ray_jobs import JobsClient

    with socket.socket() as s:       # accepts connections (kernel backlog) and never answers
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        client = JobsClient("x", f"http://127.0.0.1:{s.getsockname()[1]}", timeout_s=0.5)
        t0 = time.monotonic()
        with pytest.raises(Unreachable, match="island 'x'.*unreachable"):
            client.status("job")
        assert time.monotonic() - t0 < 10
