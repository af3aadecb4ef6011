"""The vllm-rs backend kind. vllm_rs's wheels are CUDA builds: on a machine without an NVIDIA
GPU, an engine with a vllm-rs backend must refuse to start, saying so, before any task runs."""

import pytest

import tutti
from tutti._vllm_rs import gpu_problem

CONFIG = {
    "simulation": {"seed": 1},
    "orchestrator": {"executor": "sim", "model": "sim", "max_turns": 4,
                     "sim": {"output_tokens": {"p50": 50, "p99": 100}}},
    "tools": [
        {"name": "answer", "description": "Answer.", "aliases": ["local"],
         "prompt": "Problem: {problem}\n{context}\nAnswer the problem."},
    ],
    "aliases": {"local": "qwen"},
    "backends": [
        {"name": "qwen", "kind": "vllm-rs", "model": "/models/Qwen3-0.6B",
         "price_in_per_mtok": 0.0, "price_out_per_mtok": 0.0},
    ],
}


@pytest.mark.skipif(gpu_problem() is None, reason="this machine has a GPU")
def test_without_a_gpu_a_vllm_rs_backend_fails_at_start_up_saying_so():
    with pytest.raises(tutti.TuttiError) as e:
        tutti.Engine(CONFIG)
    message = str(e.value)
    assert "backend `qwen`" in message
    try:
        import vllm_rs  # noqa: F401
    except ImportError:
        assert "pip install vllm_rs" in message
    else:
        assert "needs an NVIDIA GPU" in message
        assert "libcuda.so.1" in message
