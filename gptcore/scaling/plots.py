"""The scaling fit's charts (PNG): the IsoFLOP curves with their minima, the loss frontier against
compute, and L(N, D)'s predictions against the measured losses. Same fit, same bytes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gptcore.atomic import atomic_file
from gptcore.reports import _pyplot
from gptcore.scaling.fit import CONFIDENCE, Fit, IsoFlop

HELD_OUT = "tab:red"
LOSS_LABEL = "val loss (nats per token)"


def _save(fig: Any, path: Path | str) -> None:
    with atomic_file(path) as tmp:
        # no timestamp or version in the metadata: the same fit gives the same bytes
        fig.savefig(tmp, format="png", metadata={"Software": None})
    _pyplot().close(fig)


def _span(curve: IsoFlop) -> np.ndarray:
    return np.geomspace(curve.parameters[0] / 1.3, curve.parameters[-1] * 1.3, 100)


def plot_isoflop(fit: Fit, path: Path | str) -> None:
    """Loss against N at each budget: the runs, their parabola, its minimum (a star; hollow when at
    the edge of the sizes run); the held-out budget dashed, in red."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.6), dpi=120)
    colours = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, max(1, len(fit.curves))))
    for curve, colour in zip(fit.curves, colours, strict=True):
        ax.scatter(curve.parameters, curve.losses, color=colour, s=18, zorder=3)
        ax.plot(
            _span(curve),
            curve.fitted(_span(curve)),
            color=colour,
            linewidth=1.3,
            label=f"C = {curve.budget_name}",
        )
        _minimum(ax, curve, colour)
    holdout = fit.holdout
    if holdout is not None:
        runs = sorted(holdout.runs, key=lambda h: h.result.parameters)
        ax.scatter(
            [h.result.parameters for h in runs],
            [h.result.val_loss for h in runs],
            color=HELD_OUT,
            marker="^",
            s=24,
            zorder=3,
            label=f"C = {holdout.best.budget_name} (held out)",
        )
        if holdout.curve is not None:
            span = _span(holdout.curve)
            ax.plot(span, holdout.curve.fitted(span), color=HELD_OUT, linestyle="--", linewidth=1.3)
            _minimum(ax, holdout.curve, HELD_OUT)
    ax.set_xscale("log")
    ax.set_xlabel("parameters N")
    ax.set_ylabel(LOSS_LABEL)
    ax.set_title("IsoFLOP curves (star: minimum; hollow: at the edge of the sizes)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def _minimum(ax: Any, curve: IsoFlop, colour: Any) -> None:
    ax.scatter(
        [curve.n_opt],
        [curve.loss_opt],
        marker="*",
        s=160,
        zorder=4,
        facecolors=colour if curve.inside else "none",
        edgecolors=colour,
        linewidths=1.2,
    )


def plot_frontier(fit: Fit, path: Path | str) -> None:
    """Loss against training compute: every run, each budget's IsoFLOP minimum, and L(N, D) along
    the compute-optimal N_opt(C) with its interval, extended past the held-out budget."""
    plt = _pyplot()
    laws = fit.laws
    fig, ax = plt.subplots(figsize=(7, 4.6), dpi=120)
    flops = [float(r.tokens) * r.flops_per_token for r in fit.results]  # what each run spent
    ax.scatter(flops, [r.val_loss for r in fit.results], color="0.65", s=12, label="runs", zorder=2)
    ax.scatter(
        [c.budget for c in fit.curves],
        [c.loss_opt for c in fit.curves],
        color="tab:blue",
        marker="*",
        s=120,
        zorder=3,
        label="IsoFLOP minima (fitted)",
    )
    top = max(r.budget for r in fit.results)
    budgets = np.geomspace(min(c.budget for c in fit.curves) / 2, top * 4, 80)
    n = laws.n_opt(budgets)
    d = budgets / laws.per_token(n)
    ax.plot(budgets, laws.law.loss(n, d), color="tab:blue", linewidth=1.4, label="L(N_opt(C), D_opt(C))")
    if len(laws.draws):
        e, a, b, alpha, beta = (laws.draws[:, i : i + 1] for i in range(5))
        spread = e + a / np.power(n, alpha) + b / np.power(d, beta)
        lo, hi = np.quantile(spread, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2], axis=0)
        ax.fill_between(
            budgets, lo, hi, color="tab:blue", alpha=0.15, linewidth=0, label=f"{CONFIDENCE:.0%} interval"
        )
    holdout = fit.holdout
    if holdout is not None:
        ax.scatter(
            [holdout.budget],
            [holdout.best.val_loss],
            color=HELD_OUT,
            marker="*",
            s=140,
            zorder=4,
            label="held out: best run measured",
        )
        if holdout.lo is not None and holdout.hi is not None:
            err = [[holdout.loss - holdout.lo], [holdout.hi - holdout.loss]]
        else:
            err = None
        ax.errorbar(
            [holdout.budget],
            [holdout.loss],
            yerr=err,
            color=HELD_OUT,
            marker="o",
            markerfacecolor="none",
            capsize=3,
            linestyle="none",
            zorder=4,
            label="held out: predicted",
        )
    ax.set_xscale("log")
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel(LOSS_LABEL)
    ax.set_title("Loss frontier against compute")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_predicted(fit: Fit, path: Path | str) -> None:
    """L(N, D)'s prediction against the measured loss of each run: fitted runs and held-out ones."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 5), dpi=120)
    fitted = [r for r in fit.results if not r.holdout]
    ax.scatter(
        [r.val_loss for r in fitted],
        [fit.predicted[r.name] for r in fitted],
        color="tab:blue",
        s=18,
        label="fitted runs",
        zorder=3,
    )
    if fit.holdout is not None:
        runs = fit.holdout.runs
        bounds = [(h.lo, h.hi) for h in runs if h.lo is not None and h.hi is not None]
        err: Any = None
        if len(bounds) == len(runs):
            err = [
                [h.predicted - lo for h, (lo, _) in zip(runs, bounds, strict=True)],
                [hi - h.predicted for h, (_, hi) in zip(runs, bounds, strict=True)],
            ]
        ax.errorbar(
            [h.result.val_loss for h in runs],
            [h.predicted for h in runs],
            yerr=err,
            color=HELD_OUT,
            marker="^",
            linestyle="none",
            capsize=3,
            label=f"held-out runs ({CONFIDENCE:.0%} interval)",
            zorder=4,
        )
    values = [r.val_loss for r in fit.results] + list(fit.predicted.values())
    lo, hi = min(values), max(values)
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.5", linewidth=1, linestyle=":")
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel(f"measured {LOSS_LABEL}")
    ax.set_ylabel("predicted by L(N, D)")
    ax.set_title("Predicted against measured")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
