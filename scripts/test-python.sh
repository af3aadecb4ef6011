#!/usr/bin/env bash
# Builds the Python module's wheel (bindings/python, maturin, the dev profile: it shares target/
# with cargo, so only the module's own crate and pyo3 compile), installs it into the test
# environment that scripts/setup-python.sh made (made here when missing), and runs its pytest
# suite against the `tutti` binary of this checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$(realpath -m "${TUTTI_PY_VENV:-.venv-tests}")"
if [ ! -x "$venv/bin/maturin" ]; then
    bash scripts/setup-python.sh "$venv"
fi
target="${CARGO_TARGET_DIR:-target}"
# The `tutti` binary the tests start, built as `cargo test --workspace` builds it (the same
# features, so nothing is built again after the README's test command).
cargo test --workspace --no-run -q
dist=$(mktemp -d)
trap 'rm -rf "$dist"' EXIT
(cd bindings/python && "$venv/bin/maturin" build --profile dev --strip -o "$dist")
"$venv/bin/python" -m pip install -q --force-reinstall --no-deps "$dist"/tutti-*.whl
# Ray: no dashboard token file in $HOME, no usage report.
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
TUTTI_BIN="$(cd "$target" && pwd)/debug/tutti" "$venv/bin/python" -m pytest -q -p no:cacheprovider bindings/python/tests
