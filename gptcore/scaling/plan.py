"""What each run of the scaling grid trains (gptcore.scaling.grid reads the grid): the train
section at the run's size, for as many steps as its FLOPs budget buys, with its schedule scaled to
them; and the check of every entry before any run starts, which names each that cannot run: a
budget too small for `scaling.min_steps` steps of its size, a model whose memory plan does not fit
the machine, a grid the fit could not use."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from gptcore.autotune import RULE_OUT, matmul_slowdown
from gptcore.errors import GptcoreError
from gptcore.model import GPT, flops_per_token, meta_device
from gptcore.params import ScalingParams, TrainParams
from gptcore.scaling.grid import Run, check_fittable, load_grid
from gptcore.train import memory_plan, model_config

# scaling keys that, when not null, replace the train section's for every run
OVERRIDES = ("dtype", "compile", "attention", "threads", "batch_size")


@dataclass(frozen=True)
class PlannedRun:
    """A run with its training params worked out: what it trains and for how long."""

    run: Run
    params: TrainParams  # the train section at this size, steps and schedule
    parameters: int  # N: non-position parameters, as flops_per_token counts them
    flops_per_token: int
    steps: int

    @property
    def tokens(self) -> int:
        return self.steps * tokens_per_step(self.params)

    @property
    def flops(self) -> float:
        return float(self.flops_per_token) * self.tokens


def tokens_per_step(params: TrainParams) -> int:
    return params.batch_size * params.grad_accum_steps * params.block_size


def plan(run: Run, train: TrainParams, scaling: ScalingParams, vocab_size: int) -> PlannedRun:
    """The run's train params: the train section's, at the run's size, for the steps its budget buys,
    with warmup a fixed share of them and the cosine decay ending at the last."""
    precision = {k: getattr(scaling, k) for k in OVERRIDES if getattr(scaling, k) is not None}
    shaped = dataclasses.replace(
        train,
        **precision,
        preset=None,
        init_from=None,
        n_layer=run.size.n_layer,
        n_head=run.size.n_head,
        n_embd=run.size.n_embd,
    )
    config = model_config(shaped, vocab_size)
    with meta_device():  # counted without allocating the weights
        parameters = GPT(config).num_params()
    per_token = flops_per_token(config, parameters)
    steps = int(run.budget // (per_token * tokens_per_step(shaped)))
    evals = min(scaling.evals, max(1, steps))
    params = dataclasses.replace(
        shaped,
        max_iters=max(1, steps),
        warmup_iters=round(scaling.warmup_fraction * steps),
        eval_interval=max(1, steps // evals),
        checkpoint_interval=max(1, steps // evals),
        benchmark_interval=0,
    )
    return PlannedRun(run, params, parameters, per_token, steps)


def check_grid(
    scaling: ScalingParams, train: TrainParams, vocab_size: int, device: torch.device
) -> list[PlannedRun]:
    """Every run planned, or one error naming every entry that cannot run and why."""
    check_fittable(scaling.sizes, scaling.budgets, scaling.holdout_budget)
    problems: list[str] = []
    planned = []
    for run in load_grid(scaling):
        entry = plan(run, train, scaling, vocab_size)
        planned.append(entry)
        if entry.steps < scaling.min_steps:
            need = entry.flops_per_token * tokens_per_step(entry.params) * scaling.min_steps
            problems.append(
                f"{run.name}: the budget buys {entry.steps} steps of this size, fewer than "
                f"scaling.min_steps ({scaling.min_steps}; {need:.2g} FLOPs would buy them)"
            )
        memory = memory_plan(entry.params, model_config(entry.params, vocab_size), device)
        if memory.fits is False:
            problems.append(f"{run.name}: its memory plan does not fit ({memory.verdict()})")
    if problems:
        raise GptcoreError(
            f"the scaling grid has {len(problems)} entr{'y' if len(problems) == 1 else 'ies'} that cannot "
            "run; no run started:\n  " + "\n  ".join(problems)
        )
    return planned


def slow_bf16_warning(planned: list[PlannedRun], device: torch.device) -> str | None:
    """A warning when the grid trains in bf16 on a device whose bf16 matmuls run RULE_OUT times
    slower than fp32's (a CPU without bf16 instructions emulates them), where the grid would take that
    much longer than it need; None otherwise. `auto` rules bf16 out by the same measurement."""
    if not planned or planned[0].params.dtype != "bfloat16" or device.type != "cpu":
        return None
    width = max(p.params.n_embd for p in planned)
    slowdown = matmul_slowdown(device, width)
    if slowdown < RULE_OUT:
        return None
    return (
        f"bf16 autocast matmuls run {slowdown:.0f}x slower than fp32 on this machine, and the grid "
        "trains in bf16 (scaling.dtype): set scaling.dtype to float32, or to null for train's "
        "(auto leaves bf16 out here), or expect the runs to take that much longer"
    )
