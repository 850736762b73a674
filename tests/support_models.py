"""Tiny models for the tests: every family variant, norms and biases moved off their initial
values, a saved character-level model, a model file forged from it, and a pickle that runs code
when it is loaded."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gptcore.checkpoint import contents_sha256, save_model
from gptcore.model import GPT, GPTConfig
from gptcore.tokenizer import CharTokenizer

VARIANTS = {
    "gpt2": {"arch": "gpt2"},
    "gpt2-untied": {"arch": "gpt2", "tie_embeddings": False},
    "llama": {"arch": "llama"},
    "llama-untied": {"arch": "llama", "tie_embeddings": False},
    "llama-qknorm": {"arch": "llama", "qk_norm": True},
}
# the text the saved tiny model's character vocabulary is built from
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\nROMEO: JULIET:\n"


def perturb_gains_and_biases(net: torch.nn.Module) -> None:
    """Move norm gains off 1 and biases off 0 (their initial values), which would hide a gain or
    bias applied to the wrong tensor, in gptcore's models and transformers' alike."""
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("bias") or "ln_" in name or "norm" in name:
                p.add_(0.2 * torch.randn_like(p))


def save_tiny_model(path: Path, never_eot: bool = False, **config: Any) -> GPT:
    """A 2-layer character-level model saved at `path`; `config` changes its GPTConfig (arch)."""
    tok = CharTokenizer.train([TEXT])
    torch.manual_seed(0)
    shape = {"vocab_size": tok.vocab_size, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 32}
    model = GPT(GPTConfig(**{**shape, **config}))
    if never_eot:
        # <|endoftext|>'s logit becomes 0 while the others spread to about +-30: it is never drawn
        with torch.no_grad():
            model.wte.weight.mul_(300.0)
            model.wte.weight[tok.eot_id] = 0.0
    save_model(path, model, tok, {"steps": 123})
    return model


def forge_model_file(source: Path, target: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    """`source`'s payload changed by `change` and saved with its sha256 recomputed, as anyone can:
    a file that passes the digest check and proves nothing."""
    payload = torch.load(source, map_location="cpu", weights_only=True)
    change(payload)
    payload["sha256"] = contents_sha256(payload)
    torch.save(payload, target)
    return target


class CreatesMarkerWhenUnpickled:
    """An object whose unpickling would run code: opening (creating) a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))
