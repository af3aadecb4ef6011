"""The `vllm-rs` backend's side in Python: vllm-rs's engine (PyPI ``vllm_rs``), started when a
tutti engine is built and called with one batched ``generate_sync`` per coalesced batch.

vllm_rs's wheels are CUDA builds: importing them works anywhere, but building an engine on a
machine without an NVIDIA driver panics inside vllm_rs. ``start`` checks for a GPU first and
says so plainly instead.
"""

import ctypes
import os
from typing import List, Optional, Sequence, Tuple

__all__ = ["start", "generate", "gpu_problem"]


def gpu_problem() -> Optional[str]:
    """Why this process cannot use an NVIDIA GPU, or None when it can: the driver library must
    load and report at least one device."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError as e:
        return f"the NVIDIA driver library libcuda.so.1 cannot be loaded ({e})"
    rc = cuda.cuInit(0)
    if rc != 0:
        return f"the NVIDIA driver does not start: cuInit returned CUDA error {rc}"
    count = ctypes.c_int(0)
    rc = cuda.cuDeviceGetCount(ctypes.byref(count))
    if rc != 0:
        return f"the NVIDIA driver cannot count devices: CUDA error {rc}"
    if count.value == 0:
        return "the NVIDIA driver reports no device"
    return None


class _Started:
    """A vllm_rs engine and the settings every call shares."""

    def __init__(self, engine, stop: List[str]) -> None:
        self.engine = engine
        self.stop = stop


def start(model: str, chat_template: Optional[str], stop: Sequence[str]) -> _Started:
    """Loads ``model`` (a safetensors model directory, a GGUF file, or a Hugging Face id) into
    vllm-rs's engine on GPU 0. Raises RuntimeError with a message for the user when this cannot
    work here."""
    try:
        import vllm_rs
    except ImportError as e:
        raise RuntimeError(
            "kind `vllm-rs` needs the vllm_rs package in this Python "
            f"(`pip install vllm_rs`): {e}"
        ) from None
    problem = gpu_problem()
    if problem is not None:
        raise RuntimeError(
            "kind `vllm-rs` needs an NVIDIA GPU (vllm_rs's wheels are CUDA builds) and this "
            f"machine has none usable: {problem}. Run this config on a machine with a GPU, or "
            "use kind `native` (the CPU runtime) or `openai` (a vLLM server)"
        )
    if chat_template is not None:
        raise RuntimeError(
            "kind `vllm-rs` applies the model's own chat template; remove `chat_template`"
        )
    path = os.path.expanduser(model)
    if path.endswith(".gguf"):
        where = {"weight_file": path}
    elif os.path.isdir(path):
        where = {"weight_path": path}
    else:
        where = {"model_id": model}
    config = vllm_rs.EngineConfig(**where, device_ids=[0])
    try:
        engine = vllm_rs.Engine(config, "bf16")
    except BaseException as e:  # vllm_rs reports load failures as Rust panics
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise RuntimeError(f"vllm-rs cannot load `{model}`: {e}") from None
    return _Started(engine, list(stop))


def generate(
    started: _Started,
    prompts: List[str],
    max_tokens: List[int],
    temperatures: List[float],
) -> List[Tuple[str, int, int]]:
    """One batched call: each prompt as a user message. Returns (text, prompt tokens, output
    tokens) per prompt, in the order given."""
    import vllm_rs

    params = []
    for limit, temperature in zip(max_tokens, temperatures):
        p = vllm_rs.SamplingParams(temperature=temperature, max_tokens=limit)
        if started.stop:
            p.stop_sequences = started.stop
        params.append(p)
    messages = [[vllm_rs.Message("user", prompt)] for prompt in prompts]
    outputs = started.engine.generate_sync(params, messages)
    # Sequence ids follow the order of submission; the outputs may come in any order.
    outputs = sorted(outputs, key=lambda o: o.seq_id)
    return [(o.decode_output, int(o.prompt_length), int(o.decoded_length)) for o in outputs]
