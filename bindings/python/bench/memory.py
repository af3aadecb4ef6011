"""What handing a task table to tutti costs in memory (zero-copy check), one figure per line.

    python bindings/python/bench/memory.py [ROWS] [long|short]   # default 1,000,000, long
    TUTTI_BENCH_CONFIG=my.toml python bindings/python/bench/memory.py  # another config

Builds a table of ROWS tasks in Arrow memory (no Python objects per row), then runs it on the
simulated workload (SIMULATION: `toolorchestra-sim`, every model simulated) with `run_iter`,
dropping each result batch as it comes, so what is measured is the input's side: the import
through the Arrow C stream interface, validation, chunked decoding and the engine's working set.
Two figures are compared with the table's own size (`Table.nbytes`), each the process's peak
resident memory above what it held before the run: the handover (`run_iter` returns once the
stream is imported and every row validated) and the whole run (which adds the engine's working
set: live episodes, the result cache of the simulated calls, the result store's writer).
Prompts are ~126 bytes (`long`) or ~15 bytes (`short`: the ids then weigh most). For scale, the same table as Python dicts (what a
row-by-row conversion would hold) is measured last, in the same way.
"""

import gc
import json
import os
import sys
import time

import pyarrow as pa
import pyarrow.compute as pc

import tutti


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def reset_peak() -> None:
    # Resets VmHWM (the peak resident set) to the current resident set.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def task_table(rows: int, long: bool = True) -> pa.Table:
    i = pa.array(range(rows), pa.int64()).cast(pa.string())
    ids = pc.binary_join_element_wise("t", pc.utf8_lpad(i, 7, "0"), "")
    question = (
        "Which of the tools in the catalog answers this best, and at what cost? A benchmark "
        "question of the usual length, number "
        if long
        else "Question "
    )
    prompts = pc.binary_join_element_wise(question, i, "")
    return pa.table({"id": ids, "prompt": prompts}).combine_chunks()


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    long = (sys.argv[2] if len(sys.argv) > 2 else "long") == "long"
    tasks = task_table(rows, long)
    engine = tutti.Engine(os.environ.get("TUTTI_BENCH_CONFIG", "toolorchestra-sim"), trajectories=False)
    gc.collect()
    before = status_kib("VmRSS")
    reset_peak()
    started = time.perf_counter()
    results = 0
    run = engine.run_iter(tasks, progress=False)
    handover = status_kib("VmHWM")
    for batch in run:
        results += batch.num_rows
    wall = time.perf_counter() - started
    peak = status_kib("VmHWM")
    assert results == rows, (results, rows)
    table_mib = tasks.nbytes / 2**20
    extra_mib = (peak - before) / 1024
    figures = {
        "rows": rows,
        "mean_prompt_bytes": round(pc.mean(pc.binary_length(tasks["prompt"])).as_py(), 1),
        "table_mib": round(table_mib, 1),
        "rss_before_run_mib": round(before / 1024, 1),
        "handover_peak_above_before_mib": round((handover - before) / 1024, 1),
        "handover_over_table": round((handover - before) / 1024 / table_mib, 2),
        "run_peak_above_before_mib": round(extra_mib, 1),
        "run_over_table": round(extra_mib / table_mib, 2),
        "run_s": round(wall, 1),
        "tasks_per_s": round(rows / wall),
    }
    del engine
    gc.collect()
    before = status_kib("VmRSS")
    reset_peak()
    as_dicts = tasks.to_pylist()
    figures["as_python_dicts_mib"] = round((status_kib("VmHWM") - before) / 1024, 1)
    del as_dicts
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
