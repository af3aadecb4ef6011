"""tutti.ray on a local Ray cluster: every id once, the same episodes as one process."""

import pyarrow as pa
import pytest

import tutti
from conftest import by_id, task_table

ray = pytest.importorskip("ray")
import tutti.ray  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_map_batches_with_two_actors_equals_one_process(cluster):
    tasks = task_table(20_000)
    # Blocks of 2,000 tasks, so that both actors get work.
    ds = ray.data.from_arrow([tasks.slice(i, 2_000) for i in range(0, tasks.num_rows, 2_000)])
    out = tutti.ray.run(ds, "toolorchestra-sim", actors=2, batch_size=2_000, trajectories=False)
    results = pa.concat_tables(ray.get(out.to_arrow_refs()))

    ids = results.column("id").to_pylist()
    assert len(ids) == 20_000
    assert sorted(ids) == tasks.column("id").to_pylist()

    local = tutti.Engine("toolorchestra-sim", trajectories=False).run(tasks, progress=False)
    assert by_id(results) == by_id(local)
