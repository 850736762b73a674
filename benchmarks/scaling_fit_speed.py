"""Time of the scaling fit (gptcore/scaling/fit.py `fit_grid`): the parametric law's L-BFGS fits
and their bootstrap, on one BLAS thread as the fit runs them, and with the BLAS library's own
thread count for comparison.

The results are generated: the default grid's shape (5 sizes x 4 budgets, the largest held out),
losses from a known law times a seeded 0.3% noise. Each setting is timed `--rounds` times and the
median printed (wall seconds, and this process's CPU seconds: spinning BLAS threads show up there).
The default-threads run does `--threaded-resamples` resamples only, since on a busy machine it can
take minutes; the per-resample figures compare the two.

    python benchmarks/scaling_fit_speed.py
    python benchmarks/scaling_fit_speed.py --resamples 200 --threaded-resamples 20 --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import time
from collections.abc import Iterator

import numpy as np
import threadpoolctl

from gptcore.scaling.fit import Law, Result, fit_grid

SHAPES = {"2x48x2": (2, 48), "2x64": (2, 64), "2x96": (2, 96), "3x128": (3, 128), "3x192": (3, 192)}
BUDGETS = ["1e12", "2e12", "4e12", "8e12"]
LAW = Law(E=1.2, A=30.0, B=60.0, alpha=0.34, beta=0.28)


def results(seed: int = 0) -> list[Result]:
    rng = np.random.default_rng(seed)
    out = []
    for budget in BUDGETS:
        for name, (n_layer, n_embd) in SHAPES.items():
            n = 12 * n_layer * n_embd * n_embd + 100 * n_embd
            per_token = 6 * n + 12 * n_layer * n_embd * 128
            steps = int(float(budget) // (per_token * 4096))
            tokens = steps * 4096
            loss = float(LAW.loss(n, tokens)) * math.exp(rng.normal(0.0, 0.003))
            out.append(
                Result(
                    f"{name}-{budget}",
                    name,
                    budget,
                    n,
                    per_token,
                    tokens,
                    steps,
                    float(budget),
                    loss,
                    budget == "8e12",
                )
            )
    return out


@contextlib.contextmanager
def unlimited() -> Iterator[None]:
    """fit_grid with the BLAS library's own thread count: its one-thread limit made a no-op."""
    limit = threadpoolctl.threadpool_limits
    threadpoolctl.threadpool_limits = lambda *args, **kwargs: contextlib.nullcontext()
    try:
        yield
    finally:
        threadpoolctl.threadpool_limits = limit


def timed(runs: list[Result], resamples: int, rounds: int) -> tuple[float, float]:
    walls, cpus = [], []
    for _ in range(rounds):
        wall, cpu = time.perf_counter(), time.process_time()
        fit_grid(runs, bootstrap=resamples, seed=7)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resamples", type=int, default=200, help="bootstrap resamples (scaling.bootstrap)")
    parser.add_argument(
        "--threaded-resamples", type=int, default=20, help="resamples of the default-threads run"
    )
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    runs = results()
    fit_grid(runs, bootstrap=2, seed=7)  # imports and first calls, untimed
    blas = ", ".join(
        f"{i['internal_api']} {i['num_threads']} threads" for i in threadpoolctl.threadpool_info()
    )
    print(
        f"BLAS: {blas}; load average {os.getloadavg()[0]:.2f}; {len(runs)} runs, {args.rounds} rounds (medians)"
    )
    for label, resamples, context in (
        ("one BLAS thread (as fit_grid runs)", args.resamples, contextlib.nullcontext()),
        ("one BLAS thread (as fit_grid runs)", args.threaded_resamples, contextlib.nullcontext()),
        ("BLAS's own thread count", args.threaded_resamples, unlimited()),
    ):
        with context:
            wall, cpu = timed(runs, resamples, args.rounds)
        print(f"{label:<36} {resamples:>4} resamples: {wall:7.2f} s wall, {cpu:7.2f} s CPU")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
