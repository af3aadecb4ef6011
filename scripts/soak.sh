#!/usr/bin/env bash
# The soak (docs/soak.md): builds `tutti` and runs scripts/soak.py against it with the simulated
# control-plane config. Arguments go to soak.py: `--tasks N` (default 1,000,000), `--out DIR`
# (default /tmp/tutti-soak, must not hold a data directory yet), `--kill-every S` (default 30).
#
#   scripts/soak.sh --tasks 20000 --out /tmp/soak-short
set -euo pipefail
cd "$(dirname "$0")/.."
nice -n 19 cargo build --bin tutti
exec python3 scripts/soak.py --binary target/debug/tutti --config configs/control-plane.toml "$@"
