"""Tiny models for the tests: every family variant, norms and biases moved off their initial
values, a saved character-level model, and a pickle that runs code when it is loaded."""

from __future__ import annotations

from pathlib import Path

import torch

from gptcore.checkpoint import save_model
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


def save_tiny_model(path: Path, never_eot: bool = False) -> GPT:
    tok = CharTokenizer.train([TEXT])
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=32))
    if never_eot:
        # <|endoftext|>'s logit becomes 0 while the others spread to about +-30: it is never drawn
        with torch.no_grad():
            model.wte.weight.mul_(300.0)
            model.wte.weight[tok.eot_id] = 0.0
    save_model(path, model, tok, {"steps": 123})
    return model


class CreatesMarkerWhenUnpickled:
    """An object whose unpickling would run code: opening (creating) a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))
