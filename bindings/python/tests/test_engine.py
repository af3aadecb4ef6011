"""tutti.Engine: tables in, result tables out, on the simulated workload."""

import json
import signal
import subprocess
import sys
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tutti
from conftest import REPO, SIM_CONFIG, by_id, task_table, tutti_bin


def test_ten_thousand_tasks_give_ten_thousand_rows_in_tutti_runs_schema(tmp_path):
    tasks = task_table(10_000)
    results = tutti.Engine("toolorchestra-sim").run(tasks, progress=False)

    assert results.num_rows == 10_000
    assert sorted(results.column("id").to_pylist()) == tasks.column("id").to_pylist()
    # input_index points back at each row's task, and the extra column comes along.
    for row in results.slice(0, 50).to_pylist():
        i = row["input_index"]
        assert tasks.column("id")[i].as_py() == row["id"]
        assert row["source"] == f"row-{i}"

    # The same tasks through the command line: the same schema and the same episodes.
    pq.write_table(tasks, tmp_path / "tasks.parquet")
    out = tmp_path / "out.parquet"
    subprocess.run(
        [str(tutti_bin()), "run", str(tmp_path / "tasks.parquet"), "-o", str(out),
         "--config", str(SIM_CONFIG), "--quiet"],
        check=True,
    )
    cli = pq.read_table(out)
    assert results.schema.remove_metadata() == cli.schema.remove_metadata()
    assert by_id(results) == by_id(cli)


def test_a_pandas_frame_and_a_list_of_dicts_run_too():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(
        {"id": ["a", "b", "c"], "prompt": ["one", "two", "three"], "budget_usd": [0.5, 1.0, 2.0],
         "label": [1, 2, 3]}
    )
    engine = tutti.Engine("toolorchestra-sim")
    results = engine.run(frame, progress=False)
    assert sorted(results.column("id").to_pylist()) == ["a", "b", "c"]
    labels = {r["id"]: r["label"] for r in results.to_pylist()}
    assert labels == {"a": 1, "b": 2, "c": 3}

    rows = engine.run([{"id": "x", "prompt": "hello"}, {"id": "y", "prompt": "world"}], progress=False)
    assert sorted(rows.column("id").to_pylist()) == ["x", "y"]
    assert set(rows.column("status").to_pylist()) <= {"answered", "max_turns", "budget_exhausted"}


def test_a_bad_column_raises_an_exception_naming_it():
    engine = tutti.Engine("toolorchestra-sim")
    bad_type = pa.table({"id": ["a", "b"], "prompt": ["x", "y"], "budget_usd": ["cheap", "dear"]})
    with pytest.raises(tutti.TaskError) as e:
        engine.run(bad_type, progress=False)
    assert e.value.column == "budget_usd"
    assert "budget_usd" in str(e.value)

    bad_value = pa.table({"id": ["a", "b", "c"], "prompt": ["x", "y", "z"], "max_turns": [3, 2, 0]})
    with pytest.raises(tutti.TaskError) as e:
        engine.run(bad_value, progress=False)
    assert (e.value.row, e.value.column) == (3, "max_turns")
    assert "row 3" in str(e.value) and "max_turns" in str(e.value)

    missing = pa.table({"id": ["a"], "question": ["x"]})
    with pytest.raises(tutti.TaskError) as e:
        engine.run(missing, progress=False)
    assert e.value.column == "prompt"

    duplicate = pa.table({"id": ["a", "a"], "prompt": ["x", "y"]})
    with pytest.raises(tutti.TaskError, match="duplicate id `a`"):
        engine.run(duplicate, progress=False)

    with pytest.raises(TypeError, match="must hold dicts"):
        engine.run([1, 2, 3], progress=False)


def test_a_bad_config_raises_config_error_naming_the_key():
    with pytest.raises(tutti.ConfigError, match="max_turns"):
        tutti.Engine({"orchestrator": {"executor": "sim", "max_turns": "eight"}})
    with pytest.raises(tutti.ConfigError, match="no bundled config `nope`"):
        tutti.Engine("nope")


def test_cancel_from_another_thread_ends_every_task_once(slow_sim_config):
    engine = tutti.Engine(slow_sim_config)
    tasks = task_table(2_000)
    run = engine.run_iter(tasks, progress=False)
    canceller = threading.Thread(target=run.cancel)
    canceller.start()
    canceller.join()
    results = run.to_table()

    assert sorted(results.column("id").to_pylist()) == tasks.column("id").to_pylist()
    statuses = set(results.column("status").to_pylist())
    assert "cancelled" in statuses
    assert run.summary()["report"]["tasks"] == 2_000


def test_engine_cancel_cancels_its_runs(slow_sim_config):
    engine = tutti.Engine(slow_sim_config)
    run = engine.run_iter(task_table(500), progress=False)
    threading.Thread(target=engine.cancel).start()
    results = run.to_table()
    assert results.num_rows == 500
    assert "cancelled" in set(results.column("status").to_pylist())


CTRL_C = """
import sys, tutti
sys.path.insert(0, {tests!r})
from conftest import task_table
engine = tutti.Engine({config!r})
run = engine.run_iter(task_table(1000), progress=False)
try:
    # Inside the try: an interrupt right after the line is printed is caught too.
    print("running", flush=True)
    rows = sum(b.num_rows for b in run)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(3)
print("finished", rows, flush=True)
"""


def test_ctrl_c_cancels_the_run_and_raises_keyboard_interrupt(slow_sim_config):
    script = CTRL_C.format(tests=str(REPO / "bindings" / "python" / "tests"), config=str(slow_sim_config))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "running"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 3, out
    assert out.strip() == "interrupted"


def test_output_is_written_like_tutti_run_and_resume_skips_what_it_has(tmp_path):
    engine = tutti.Engine("toolorchestra-sim")
    tasks = task_table(300)
    out = tmp_path / "out.parquet"
    first = engine.run(tasks.slice(0, 200), output=out, progress=False)
    assert first.num_rows == 200
    assert pq.read_table(out).num_rows == 200

    run = engine.run_iter(tasks, output=out, resume=True, progress=False)
    again = run.to_table()
    assert again.num_rows == 100
    assert run.summary()["rows"] == 300
    merged = pq.read_table(out)
    assert sorted(merged.column("id").to_pylist()) == tasks.column("id").to_pylist()
    assert sorted(merged.column("input_index").to_pylist()) == list(range(300))


def test_run_iter_yields_batches_and_a_summary():
    engine = tutti.Engine("toolorchestra-sim")
    run = engine.run_iter(task_table(5_000), progress=False)
    batches = list(run)
    assert sum(b.num_rows for b in batches) == 5_000
    assert all(b.schema == run.schema for b in batches)
    summary = run.summary()
    assert summary["report"]["tasks"] == 5_000
    assert sum(summary["ledger"]["tasks"].values()) == 5_000
    assert engine.ledger()["tasks"]["answered"] == summary["report"]["statuses"]["answered"]
    json.dumps(summary)


def test_help_reads_well():
    doc = tutti.Engine.__doc__
    assert "bundled config" in doc and "trajectories" in doc
    assert "without a copy" in tutti.Engine.run.__doc__
    assert tutti.Engine.run.__annotations__["return"] is pa.Table
