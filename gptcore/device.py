"""Device and precision: which device runs, autocast, the GPU peak-FLOPs table and MFU.

What training, evaluation, the CLI and the benchmarks share about the hardware; nothing here
knows about the training loop.
"""

from __future__ import annotations

import contextlib

import torch

from gptcore.errors import GptcoreError
from gptcore.params import device_name_problem


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """`auto` picks cuda, then mps, then cpu; an explicit device that is missing is an error.

    `key` names where the choice came from (a params key or a flag) in the error."""
    problem = device_name_problem(name)
    if problem:
        raise GptcoreError(f"{key} = {name!r} is invalid: {problem}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GptcoreError(f"{key} = {name!r} but no CUDA device is available (use auto or cpu)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise GptcoreError(f"{key} = 'mps' but MPS is not available (use auto or cpu)")
    return torch.device(name)


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on `device`, or nothing when `dtype` is None (plain fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, matched against
# torch.cuda.get_device_name(); the first match wins, so the more specific names come first.
GPU_BF16_PEAKS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10G", 70e12),
    ("L4", 121e12),
    ("RTX 4090", 165e12),
)


def gpu_bf16_peak(name: str) -> float | None:
    """The dense bf16 peak FLOP/s of the GPU called `name` (as CUDA names it), when listed."""
    return next((peak for key, peak in GPU_BF16_PEAKS if key in name), None)


def peak_flops(device: torch.device, dtype: torch.dtype | None) -> float | None:
    """The accelerator's peak FLOP/s for this precision, when known (bf16 on listed GPUs)."""
    if device.type != "cuda" or dtype is not torch.bfloat16:
        return None
    return gpu_bf16_peak(torch.cuda.get_device_name(device))


def model_flops_utilization(
    flops_per_token: int, tokens_per_second: float, peak: float | None
) -> float | None:
    """MFU: the model FLOPs a second achieved, as a fraction of the hardware's peak (PaLM, app. B)."""
    return None if not peak else flops_per_token * tokens_per_second / peak
