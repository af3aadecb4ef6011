"""Tasks/s through Ray Data with 1 and 2 tutti actors, and in one process without Ray.

    python bindings/python/bench/ray_actors.py [TASKS] [CPUS]     # default 20,000 tasks, 2 CPUs

SIMULATION: the `toolorchestra-sim` workload (every model simulated, latencies compressed
1000x; the engine around them real). Each figure is the median of three runs, timed from the
dataset's creation to the last result row collected on the driver.
"""

import json
import statistics
import sys
import time

import pyarrow as pa
import ray

import tutti
import tutti.ray


def tasks(n: int) -> pa.Table:
    return pa.table(
        {"id": [f"t{i:07}" for i in range(n)], "prompt": [f"Question {i}" for i in range(n)]}
    )


def through_ray(table: pa.Table, actors: int, block: int) -> float:
    started = time.perf_counter()
    ds = ray.data.from_arrow([table.slice(i, block) for i in range(0, table.num_rows, block)])
    out = tutti.ray.run(ds, "toolorchestra-sim", actors=actors, batch_size=block, trajectories=False)
    rows = sum(t.num_rows for t in ray.get(out.to_arrow_refs()))
    assert rows == table.num_rows
    return time.perf_counter() - started


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    cpus = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    table = tasks(n)
    engine = tutti.Engine("toolorchestra-sim", trajectories=False)
    local = []
    for _ in range(3):
        started = time.perf_counter()
        engine.run(table, progress=False)
        local.append(time.perf_counter() - started)
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    figures = {"tasks": n, "cpus": cpus, "one_process_tasks_per_s": round(n / statistics.median(local))}
    for actors in (1, 2):
        walls = [through_ray(table, actors, 2_000) for _ in range(3)]
        figures[f"ray_{actors}_actors_tasks_per_s"] = round(n / statistics.median(walls))
    ray.shutdown()
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
