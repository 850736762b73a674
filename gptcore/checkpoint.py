"""The model file: weights, model config and tokenizer in one dict, saved and loaded safely.

`models/model.pt` holds plain containers and tensors only, so it loads with
`torch.load(..., weights_only=True)`: a file from elsewhere is data, never code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gptcore.atomic import atomic_file
from gptcore.errors import DataError
from gptcore.model import GPT, GPTConfig
from gptcore.tokenizer import Tokenizer, tokenizer_from_dict

MODEL_FORMAT = "gptcore.model"
MODEL_VERSION = 1


def save_model(
    path: Path | str, model: GPT, tokenizer: Tokenizer, meta: dict[str, Any] | None = None
) -> None:
    """Write the model file atomically; `meta` holds small facts about the run (steps, tokens)."""
    raw = getattr(model, "_orig_mod", model)  # a torch.compile wrapper prefixes every key
    state = {k: v.detach().to("cpu").clone() for k, v in raw.state_dict().items()}
    state.pop("lm_head.weight", None)  # tied to wte.weight: stored once
    payload = {
        "format": MODEL_FORMAT,
        "version": MODEL_VERSION,
        "config": raw.config.to_dict(),
        "state_dict": state,
        "tokenizer": tokenizer.to_dict(),
        "meta": meta or {},
    }
    # saved through a file object: given a path, torch names the zip's records after the file, and
    # the temporary name would make every save of the same weights a different file
    with atomic_file(path) as tmp, open(tmp, "wb") as fh:
        torch.save(payload, fh)


def read_model_file(path: Path | str) -> dict[str, Any]:
    """Load and check the model file's payload without building the model."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} not found: run the train stage first (dvc repro train)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and unpickler errors all mean "not a model file of ours"
        raise DataError(f"{path} is not a gptcore model file: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise DataError(f"{path} is not a gptcore model file (no '{MODEL_FORMAT}' marker)")
    if payload.get("version") != MODEL_VERSION:
        raise DataError(
            f"{path} has model format version {payload.get('version')}, this gptcore reads {MODEL_VERSION}"
        )
    for key in ("config", "state_dict", "tokenizer"):
        if not isinstance(payload.get(key), dict):
            raise DataError(f"{path} is missing '{key}' or it is not a mapping")
    return payload


def load_model(path: Path | str, device: torch.device | str = "cpu") -> tuple[GPT, Tokenizer, dict[str, Any]]:
    """Rebuild (model in eval mode, tokenizer, meta) from a model file."""
    payload = read_model_file(path)
    try:
        config = GPTConfig(**payload["config"])
    except TypeError as exc:
        raise DataError(f"{path} has an invalid model config: {exc}") from None
    model = GPT(config)
    state = dict(payload["state_dict"])
    state["lm_head.weight"] = state.get("wte.weight")
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError) as exc:
        raise DataError(f"{path}: weights do not match the model config: {exc}") from None
    tokenizer = tokenizer_from_dict(payload["tokenizer"])
    if tokenizer.vocab_size != config.vocab_size:
        raise DataError(
            f"{path}: tokenizer has {tokenizer.vocab_size} tokens but the model expects {config.vocab_size}"
        )
    return model.to(device).eval(), tokenizer, payload.get("meta", {})
