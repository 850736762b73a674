"""Tiny in-process training runs for the tests: the base params, a train section as params.yaml
holds it, runs that record (and can be stopped at) their evaluations, and weight comparison."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from gptcore.data.token_store import TokenStore
from gptcore.params import TrainParams
from gptcore.train import TrainResult, train

# one layer 16 wide, 20 steps on the CPU in float32: the run every training test varies
BASE = TrainParams(
    init_from=None,
    arch="gpt2",
    tie_embeddings=True,
    qk_norm=False,
    n_layer=1,
    n_head=2,
    n_embd=16,
    block_size=8,
    dropout=0.0,
    bias=False,
    batch_size=4,
    grad_accum_steps=1,
    max_iters=20,
    learning_rate=1.0e-2,
    min_lr=1.0e-3,
    warmup_iters=5,
    weight_decay=0.1,
    beta1=0.9,
    beta2=0.99,
    grad_clip=1.0,
    optimizer="adamw",
    muon_learning_rate=2.0e-2,
    muon_momentum=0.95,
    muon_weight_decay=0.0,
    eval_interval=5,
    eval_iters=2,
    log_interval=5,
    checkpoint_interval=0,
    benchmark_interval=0,
    benchmark_items=200,
    seed=7,
    device="cpu",
    dtype="float32",
    compile=False,
    threads=1,
    nproc_per_node=1,
    nnodes=1,
    rdzv_endpoint="localhost:29500",
    parallel="ddp",
    activation_checkpointing=False,
    preset=None,
)


def train_section(**changes: object) -> dict[str, object]:
    """BASE as the train section of params.yaml, with `changes`: what parse_section reads."""
    return {**dataclasses.asdict(BASE), **changes}


class Interrupted(Exception):
    """Stands in for a kill: raised from the evaluation callback at a chosen step."""


def run(
    p: TrainParams,
    stores: tuple[TokenStore, TokenStore],
    ckpt: Path | None = None,
    stop_at: int | None = None,
) -> tuple[TrainResult | None, list[tuple[int, dict[str, float]]]]:
    """Train, recording every evaluation; stop with Interrupted at evaluation step `stop_at`."""
    evals: list[tuple[int, dict[str, float]]] = []

    def on_eval(step: int, metrics: dict[str, float]) -> None:
        if step == stop_at:
            raise Interrupted
        evals.append((step, metrics))

    try:
        result = train(p, stores[0], stores[1], on_eval=on_eval, progress=False, checkpoint=ckpt)
    except Interrupted:
        return None, evals
    return result, evals


def curve(evals: list[tuple[int, dict[str, float]]]) -> list[tuple[int, float, float, float]]:
    """The logged losses and learning rates: what must not change when a run is resumed."""
    return [(s, m["train/loss"], m["val/loss"], m["lr"]) for s, m in evals]


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
