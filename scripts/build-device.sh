#!/usr/bin/env bash
# Builds what the GPU machine runs (it has no Rust toolchain): the CUDA kernel tests and the
# policy-head bench, copied to target/device/, which `scripts/device-check.sh` runs there (the
# device tool carries the folder: carry ["target/device"]).
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/device
rm -rf "$out"
mkdir -p "$out"
executable() {
    python3 -c '
import json, sys
name = sys.argv[1]
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == name and m.get("executable"):
        print(m["executable"])
' "$1"
}
cp "$(cargo test -p tutti-kernels --test cuda --no-run --message-format=json | executable cuda)" "$out/cuda-tests"
cp "$(cargo bench -p tutti-kernels --bench gpu_head --no-run --message-format=json | executable gpu_head)" "$out/gpu-head"
cp scripts/device-check.sh "$out/"
ls -la "$out"
