"""What a model file or folder may ask for: the size limits of a model config, finite values, and
the memory a model needs against what the machine has; each checked before anything is allocated.

A model file or a Hugging Face folder comes from anywhere, and its config decides allocations no
weight vouches for: a llama model has no position table, so nothing but a limit bounds the context
length its rotary tables (and a server's KV cache) are sized by, and a config read without its
weights (`gptcore info` with train.init_from) sizes a plan from its depth and width alone. So each
size has a limit well above the largest real models of the families gptcore reads (the shapes of
Llama 3.1 405B, Qwen3, GPT-2 1.5B) and well below what would exhaust a machine; floats must be
finite; and the bytes a model will hold are compared with the memory available before it is built."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from gptcore.errors import DataError
from gptcore.model import GPT, GPTConfig, meta_device

# the most each size of a model config may be (GPTConfig's fields, by name); each lies well above
# the largest real model of the families gptcore reads and well below a model no machine could hold
MAX_POSITIONS = 1 << 20  # context length (block_size)
MAX_LAYERS = 1024
MAX_WIDTH = 1 << 16  # n_embd
MAX_HEADS = 1024
MAX_FFN = 1 << 18  # the feed-forward's hidden width (llama's intermediate_size)
MAX_VOCAB = 1 << 21
# a folder's config.json or shard index, read whole: small for any real model
MAX_JSON_BYTES = 1 << 24
SIZE_LIMITS: dict[str, int] = {
    "vocab_size": MAX_VOCAB,
    "block_size": MAX_POSITIONS,
    "n_layer": MAX_LAYERS,
    "n_head": MAX_HEADS,
    "n_embd": MAX_WIDTH,
    "intermediate_size": MAX_FFN,
}

# the float fields of a model config, the range each must lie in, and the rule as the error says it:
# a NaN or infinite one would load and then turn the first token's activations into NaN
_FLOAT_RULES: tuple[tuple[str, Any, str], ...] = (
    ("norm_eps", lambda v: v >= 0.0, "must be a finite number >= 0"),
    # a base below 1 inverts the rotary frequencies, and near 0 they overflow to infinity
    ("rope_theta", lambda v: v >= 1.0, "must be a finite number >= 1"),
    ("dropout", lambda v: 0.0 <= v < 1.0, "must lie in [0, 1)"),
)


def check_config_values(where: str, values: Mapping[str, Any], keys: Mapping[str, str] | None = None) -> None:
    """Refuse a model config, given as GPTConfig's fields by name (integers and numbers, as a file
    holds them, before a GPTConfig is made of them), whose sizes lie outside 1..their limit or
    whose floats are not finite and in range. `keys` spells each field as the file does
    (`max_position_embeddings` for block_size), so that the error names what to fix."""
    keys = keys or {}
    for field, limit in SIZE_LIMITS.items():
        value = values.get(field)
        if value is None:
            continue
        if value < 1:
            raise DataError(f"{where}: {keys.get(field, field)} = {value} must be >= 1")
        if value > limit:
            raise DataError(f"{where}: {keys.get(field, field)} = {value} exceeds the limit {limit}")
    for field, in_range, rule in _FLOAT_RULES:
        if field in values and not (_is_finite(values[field]) and in_range(values[field])):
            raise DataError(f"{where}: {keys.get(field, field)} = {values[field]!r} {rule}")


def _is_finite(value: Any) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def check_finite(where: str, tensors: Mapping[str, torch.Tensor]) -> None:
    """Refuse weights with a NaN or an infinity, naming the first tensor that holds one: such a
    model loads and then computes NaN for every token it reads."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise DataError(f"{where}: tensor {name} holds NaN or infinite values")


def model_bytes(config: GPTConfig) -> int:
    """Bytes a model of `config` holds once built: its parameters (float32, a tied head once) and
    buffers (llama's rotary tables). Counted on the meta device, which allocates nothing."""
    with meta_device():
        model = GPT(config)
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def check_memory(where: str, needed: int, what: str) -> None:
    """Refuse to allocate `needed` bytes for `what` when the machine has less available, saying
    how much is needed and how much there is."""
    available, source = available_memory()
    if available is not None and needed > available:
        # in MB as gptcore.errors says sizes (gptcore.memory's units would make every stage that
        # loads a model depend on the memory plan)
        raise DataError(
            f"{where}: {what} needs {needed / 1e6:,.1f} MB of memory, but {available / 1e6:,.1f} MB "
            f"is available ({source})"
        )


def available_memory() -> tuple[int | None, str]:
    """(bytes this process may allocate now, what they are): what the kernel counts as available
    without swapping (page cache included, which it reclaims), capped by the memory limit of a
    container the process runs in; the host's RAM where the kernel does not say; None where
    nothing is known."""
    try:
        found = re.search(r"^MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
    except OSError:
        found = None
    if found:
        available, source = int(found.group(1)) * 1024, "available memory"
    else:
        try:
            available, source = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's RAM"
        except (AttributeError, ValueError, OSError):
            return None, "unknown"
    # cgroup v2, then v1: "max" or a huge number where there is no limit
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            limit = int(Path(limit_file).read_text())
        except (OSError, ValueError):
            continue
        if limit < available:
            available, source = limit, "this container's memory limit"
    return available, source


def check_kv_cache(
    where: str, config: GPTConfig, rows: int, dtype: torch.dtype, device: torch.device
) -> None:
    """Refuse a KV cache of `rows` x the context length that host memory cannot hold: no weight
    bounds a llama model's context, so a small model file can ask for a cache of gigabytes."""
    if device.type != "cpu":  # a GPU's allocator refuses for itself
        return
    itemsize = torch.empty(0, dtype=dtype).element_size()
    needed = 2 * config.n_layer * rows * config.n_head * config.block_size * config.head_dim * itemsize
    check_memory(where, needed, f"a KV cache of {rows} row(s) x {config.block_size:,} positions")
