"""tutti.Client against a real `tutti serve` (a process of this checkout's binary)."""

import pytest

import tutti
from conftest import by_id, task_table


def test_submit_status_results_cancel_round_trip(server):
    client = tutti.Client(server)
    # A server takes the task columns only (no pass-through columns).
    tasks = task_table(1_000, prefix="job").drop_columns(["source"])
    job = client.submit(tasks, name="from-python")

    final = client.wait(job)
    assert final["state"] == "done"
    assert final["rows"] == 1_000
    assert final["name"] == "from-python"

    results = client.results(job)
    assert sorted(results.column("id").to_pylist()) == tasks.column("id").to_pylist()
    # The same episodes as in-process.
    local = tutti.Engine("toolorchestra-sim").run(tasks, progress=False)
    assert by_id(results) == by_id(local)

    assert [j["job_id"] for j in client.jobs()] == [job]
    assert client.stats(job)["report"]["tasks"] == 1_000
    # Cancelling a finished job changes nothing.
    assert client.cancel(job)["state"] == "done"


def test_cancel_a_running_job(server):
    client = tutti.Client(server)
    job = client.submit(task_table(20_000, prefix="big").drop_columns(["source"]))
    reply = client.cancel(job)
    assert reply["job_id"] == job
    final = client.wait(job)
    assert final["rows"] == 20_000
    # Unless the job had already finished (it ran in simulated time), its tail is cancelled.
    assert final["state"] in ("cancelled", "done")
    if final["state"] == "cancelled":
        statuses = set(client.results(job).column("status").to_pylist())
        assert "cancelled" in statuses


def test_bad_uploads_and_unknown_jobs_raise(server):
    client = tutti.Client(server)
    with pytest.raises(tutti.TuttiError, match="prompt"):
        client.submit(task_table(3).drop_columns(["prompt"]))
    with pytest.raises(tutti.TuttiError):
        client.status("no-such-job")
    with pytest.raises(tutti.TuttiError, match="cannot|connect|127.0.0.1:1"):
        tutti.Client("grpc://127.0.0.1:1").jobs()
