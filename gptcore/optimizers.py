"""The optimizer of a training run: AdamW alone, or Muon for the hidden matrices and AdamW for the rest.

`train.optimizer: adamw` is GPT-2's recipe: AdamW with weight decay on matrices (Linear weights,
embeddings) and none on biases and normalisation gains.

`train.optimizer: muon` (Jordan et al. 2024, https://kellerjordan.github.io/posts/muon/) updates
each 2-D weight matrix inside the transformer blocks (attention and feed-forward projections) with
momentum orthogonalised by Newton-Schulz iterations, PyTorch's own `torch.optim.Muon`. Muon is
defined for hidden matrices only: the token and position embeddings, the output head (tied to the
token embedding or not) and every 1-D gain and bias stay with AdamW, at `train.learning_rate`,
while the Muon group has its own `train.muon_learning_rate`. Both follow the same warmup and cosine
schedule (`lr_ratio` in each group scales the schedule's AdamW rate).

Every parameter lands in exactly one group of exactly one optimizer, asserted at construction:
a parameter missed here would silently never train.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gptcore.params import TrainParams


class Optimizers:
    """Several torch optimizers stepped, zeroed, saved and restored as one."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [group for opt in self.optimizers.values() for group in opt.param_groups]

    def set_lr(self, lr: float) -> None:
        """Set each group's rate to `lr` (the schedule's AdamW rate) times the group's ratio."""
        for group in self.param_groups:
            group["lr"] = lr * group["lr_ratio"]

    def step(self) -> None:
        for opt in self.optimizers.values():
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != set(self.optimizers):
            raise ValueError(
                f"the saved optimizer state holds {sorted(state)}, this run uses {sorted(self.optimizers)}"
            )
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])


def hidden_matrices(model: nn.Module) -> set[str]:
    """Names of the 2-D weights inside the transformer blocks: what Muon may update. Embeddings
    and the output head are matrices too, but they map tokens, not hidden states (Muon's paper)."""
    return {name for name, p in model.named_parameters() if p.dim() == 2 and name.startswith("h.")}


def configure_optimizer(
    model: nn.Module, params: TrainParams, device: torch.device, fused: bool | None = None
) -> Optimizers:
    """AdamW (and Muon with `train.optimizer: muon`) over every trainable parameter of `model`.

    The one place the training optimizer is built: the loop, gptcore.autotune and
    benchmarks/train_speed.py call it. `fused` None takes AdamW's fused kernel where torch has
    it (CUDA, CPU); False asks for foreach."""
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    muon = sorted(hidden_matrices(model) & set(named)) if params.optimizer == "muon" else []
    rest = [n for n in named if n not in muon]
    decay = [n for n in rest if named[n].dim() >= 2]
    no_decay = [n for n in rest if named[n].dim() < 2]
    # every parameter in exactly one group: a silent miss here costs a whole run
    groups = (muon, decay, no_decay)
    assert sum(len(g) for g in groups) == len(named) == len(set().union(*groups))
    adamw_groups = [
        {"params": [named[n] for n in decay], "weight_decay": params.weight_decay, "lr_ratio": 1.0},
        {"params": [named[n] for n in no_decay], "weight_decay": 0.0, "lr_ratio": 1.0},
    ]
    # the fused kernel: one pass over each tensor for the whole update (docs/results.md, "Training speed against nanoGPT")
    if fused is None:
        fused = device.type in ("cuda", "cpu")
    extra = {"fused": True} if fused else {"foreach": True}
    optimizers: dict[str, torch.optim.Optimizer] = {
        "adamw": torch.optim.AdamW(
            adamw_groups, lr=params.learning_rate, betas=(params.beta1, params.beta2), **extra
        )
    }
    if muon:
        optimizers["muon"] = torch.optim.Muon(
            [
                {
                    "params": [named[n] for n in muon],
                    "lr_ratio": params.muon_learning_rate / params.learning_rate,
                }
            ],
            lr=params.muon_learning_rate,
            weight_decay=params.muon_weight_decay,
            momentum=params.muon_momentum,
        )
    return Optimizers(optimizers)
