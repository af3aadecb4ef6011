#!/usr/bin/env bash
# Every device check, on the GPU machine, from the binaries `scripts/build-device.sh` made here:
# the CUDA kernels against their CPU references (TUTTI_REQUIRE_GPU: a missing GPU fails instead
# of skipping) and the policy-head figures. Prints everything; exits non-zero when a test fails.
# Run from the repository root (the binaries are looked for in target/device/).
set -uo pipefail
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
# NVRTC from the machine's Python wheels (PyTorch brings them) or a CUDA toolkit.
dirs=$(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null || true)
for f in $(find $dirs /usr/local/cuda/lib64 /usr/lib/x86_64-linux-gnu -name 'libnvrtc.so*' 2>/dev/null); do
    LD_LIBRARY_PATH="$(dirname "$f"):${LD_LIBRARY_PATH:-}"
done
export LD_LIBRARY_PATH
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
export TUTTI_REQUIRE_GPU=1
status=0
target/device/cuda-tests --test-threads=1 --nocapture || status=1
target/device/gpu-head || status=1
exit $status
