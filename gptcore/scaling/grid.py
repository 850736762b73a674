"""The scaling grid: every model size of `scaling.sizes` trained at every compute budget of
`scaling.budgets`, one DVC `matrix` stage per pair (scaling/dvc.yaml).

A size is `<layers>x<width>` (heads: width / `scaling.head_dim`) or `<layers>x<width>x<heads>`; a
budget is training FLOPs written as a quoted number ("3e12": unquoted, YAML readers disagree on
whether it is a number, and DVC names the stage after the text). A run trains the train section's
model family and settings at its size for as many steps of `train.batch_size x
train.grad_accum_steps x train.block_size` tokens as its budget buys at the model's FLOPs per token
(gptcore.model.flops_per_token: 6N plus attention), with warmup and cosine decay scaled to that
length, so that every run of a budget spends the same compute. The largest budget may be held out
(`scaling.holdout_budget`): its runs are trained like the others and left out of the fit, which
then predicts them.

What each run trains for its budget, and the check of the whole grid before any run starts, are
gptcore.scaling.plan's; this module only reads the grid, so that the fit, which needs no more,
depends on nothing of training.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from gptcore.params import ParamsError, ScalingParams

SIZE = re.compile(r"([1-9][0-9]*)x([1-9][0-9]*)(?:x([1-9][0-9]*))?")
MIN_SIZES = 3  # a parabola through fewer points has no minimum to speak of
MIN_BUDGETS = 2  # a power law through fewer budgets has no slope
BUDGET = re.compile(r"[0-9]+(\.[0-9]+)?([eE][+]?[0-9]+)?")


@dataclass(frozen=True)
class Size:
    name: str  # as written in scaling.sizes
    n_layer: int
    n_embd: int
    n_head: int


@dataclass(frozen=True)
class Run:
    """One entry of the grid: its stage is `run@<size>-<budget>`, its folder scaling/runs/<name>."""

    size: Size
    budget_name: str  # as written in scaling.budgets
    budget: float  # training FLOPs
    holdout: bool  # left out of the fit, predicted by it

    @property
    def name(self) -> str:
        return f"{self.size.name}-{self.budget_name}"


def parse_size(text: str, head_dim: int) -> Size:
    """`<layers>x<width>` (heads: width / head_dim) or `<layers>x<width>x<heads>`."""
    found = SIZE.fullmatch(str(text))
    if found is None:
        raise ParamsError(
            f"scaling.sizes: {text!r} is not a size: write <layers>x<width> (e.g. 4x256, heads "
            f"width / scaling.head_dim) or <layers>x<width>x<heads> (e.g. 4x256x4)"
        )
    n_layer, n_embd = int(found[1]), int(found[2])
    if found[3] is not None:
        n_head = int(found[3])
        if n_embd % n_head:
            raise ParamsError(f"scaling.sizes: {text}: {n_head} heads do not divide the width {n_embd}")
    else:
        if n_embd % head_dim:
            raise ParamsError(
                f"scaling.sizes: {text}: the width {n_embd} is not a multiple of scaling.head_dim "
                f"{head_dim}, so its heads would not divide it (write {text}x<heads>)"
            )
        n_head = n_embd // head_dim
    if (n_embd // n_head) % 2:
        # rotary positions rotate pairs of a head's channels
        raise ParamsError(
            f"scaling.sizes: {text}: a head of {n_embd // n_head} channels; give heads an even width"
        )
    return Size(str(text), n_layer, n_embd, n_head)


def parse_budget(text: str) -> float:
    """A budget in FLOPs from its quoted text ("3e12", "1.5e13")."""
    if not isinstance(text, str) or BUDGET.fullmatch(text) is None:
        raise ParamsError(
            f'scaling.budgets: {text!r} is not a budget: write FLOPs as a quoted number, e.g. "3e12" '
            "(DVC names each run's stage after the text)"
        )
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise ParamsError(f"scaling.budgets: {text!r} must be a positive number of FLOPs")
    return value


def load_grid(scaling: ScalingParams) -> list[Run]:
    """Every (size, budget) entry of the grid, sizes in the order given, then budgets."""
    sizes = [parse_size(s, scaling.head_dim) for s in scaling.sizes]
    budgets = [(b, parse_budget(b)) for b in scaling.budgets]
    for what, names in (("scaling.sizes", [s.name for s in sizes]), ("scaling.budgets", scaling.budgets)):
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ParamsError(f"{what} lists {repeated[0]!r} twice")
    values = [v for _, v in budgets]
    if len(set(values)) != len(values):
        raise ParamsError(f"scaling.budgets: two entries are the same number of FLOPs ({scaling.budgets})")
    holdout = scaling.holdout_budget
    if holdout is not None:
        if holdout not in scaling.budgets:
            raise ParamsError(
                f"scaling.holdout_budget {holdout!r} is not one of scaling.budgets ({', '.join(scaling.budgets)})"
            )
        if parse_budget(holdout) != max(values):
            raise ParamsError(
                f"scaling.holdout_budget {holdout!r} must be the largest budget: the fit is checked on "
                "a budget beyond those it was fitted to"
            )
    return [
        Run(size, name, value, holdout is not None and name == holdout)
        for size in sizes
        for name, value in budgets
    ]


def find_run(scaling: ScalingParams, size: str, budget: str) -> Run:
    """The grid entry of a stage's `--size` and `--budget` (as DVC passes them from the matrix)."""
    for run in load_grid(scaling):
        if run.size.name == size and run.budget_name == budget:
            return run
    hint = ""
    try:
        if any(float(budget) == float(b) for b in scaling.budgets):
            # DVC reads params.yaml as YAML 1.2, where an unquoted 2e9 is a number
            hint = f': DVC read a budget as the number {budget}; quote it in params.yaml ("2e9")'
    except ValueError:
        pass
    raise ParamsError(
        f"no grid entry {size}-{budget}: scaling.sizes is {scaling.sizes}, scaling.budgets "
        f"{scaling.budgets}{hint}"
    )


def check_fittable(sizes: Sequence[str], budgets: Sequence[str], holdout: str | None) -> None:
    """Refuse, before any run trains, a grid the fit could not use: fewer than 3 sizes (no IsoFLOP
    curve has a minimum) or fewer than 2 budgets besides the held-out one (no power law has a slope).
    For gptcore.scaling.grid's checks; `fit_grid` refuses the same in the results themselves."""
    fitted = [b for b in budgets if b != holdout]
    if len(sizes) < MIN_SIZES:
        raise ParamsError(
            f"scaling.sizes lists {len(sizes)} size{'s' if len(sizes) != 1 else ''}: the fit's IsoFLOP "
            f"curves need at least {MIN_SIZES}"
        )
    if len(fitted) < MIN_BUDGETS:
        raise ParamsError(
            f"scaling.budgets lists {len(fitted)} budget{'s' if len(fitted) != 1 else ''} besides the "
            f"held-out one (scaling.holdout_budget): the fit's power laws need at least {MIN_BUDGETS}"
        )
