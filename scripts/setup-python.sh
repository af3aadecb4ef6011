#!/usr/bin/env bash
# Makes a fresh virtual environment for the Python module's tests (default .venv-tests) with what
# they need besides the module itself: maturin (to build it), pytest, pyarrow, pandas, tqdm,
# Ray Data (tests/test_ray.py) and vllm_rs (the vllm-rs backend's start-up check). Then
# scripts/test-python.sh builds the wheel, installs it there and runs the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv-tests}"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q "maturin>=1.9.4,<2" pytest pyarrow pandas tqdm "ray[data]" vllm_rs==0.8.12
"$venv/bin/python" -m pip list 2>/dev/null | grep -iE "^(maturin|pytest|pyarrow|pandas|ray|vllm.rs) "
