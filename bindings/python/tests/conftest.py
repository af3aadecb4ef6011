"""Shared fixtures of the Python module's tests. They run against the installed `tutti` wheel
(`.ci/run` builds it and installs it into a fresh virtual environment) and use the `tutti`
binary of the same checkout for the comparisons with the command line and for `tutti serve`."""

import os
import re
import subprocess
import threading
from pathlib import Path

import pyarrow as pa
import pytest

REPO = Path(__file__).resolve().parents[3]
SIM_CONFIG = REPO / "configs" / "toolorchestra-sim.toml"


def tutti_bin() -> Path:
    """The `tutti` binary: $TUTTI_BIN, else the checkout's debug build."""
    path = Path(os.environ.get("TUTTI_BIN") or REPO / "target" / "debug" / "tutti")
    if not path.exists():
        pytest.fail(f"no tutti binary at {path}: build it (cargo build) or set TUTTI_BIN")
    return path


def task_table(n: int, prefix: str = "t") -> pa.Table:
    """`n` tasks with distinct ids and prompts, and one extra column (`source`)."""
    return pa.table(
        {
            "id": [f"{prefix}{i:07}" for i in range(n)],
            "prompt": [f"Question {i}: what is {i} squared?" for i in range(n)],
            "source": [f"row-{i}" for i in range(n)],
        }
    )


def by_id(table: pa.Table, columns=("status", "answer", "turns", "correct")) -> dict:
    """id -> the given columns, for comparing runs whose rows come in different orders."""
    rows = table.select(["id", *columns]).to_pylist()
    return {r["id"]: tuple(r[c] for c in columns) for r in rows}


@pytest.fixture
def slow_sim_config(tmp_path) -> Path:
    """The simulated workload at real time (`time_scale = 1`): a call takes seconds, so a run of
    it is still going when a test cancels it."""
    text = SIM_CONFIG.read_text()
    text = re.sub(r"(?m)^time_scale = .*$", "time_scale = 1.0", text)
    path = tmp_path / "slow-sim.toml"
    path.write_text(text)
    return path


@pytest.fixture
def server(tmp_path):
    """A real `tutti serve` on a free loopback port with the simulated config; yields its URL."""
    proc = subprocess.Popen(
        [
            str(tutti_bin()),
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(tmp_path / "server"),
            "--config",
            str(SIM_CONFIG),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = None
        for line in proc.stderr:
            found = re.search(r"serving Arrow Flight on (grpc://\S+)", line)
            if found:
                url = found.group(1)
                break
        if url is None:
            pytest.fail(f"tutti serve did not start (exit {proc.wait()})")
        # Keep reading what the server says, so that a full pipe never blocks it.
        threading.Thread(target=proc.stderr.read, daemon=True).start()
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)
