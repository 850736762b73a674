"""The scaling laws fitted to the grid's runs: IsoFLOP curves and the compute-optimal power laws,
the parametric law L(N, D) with bootstrap intervals, the held-out budget predicted, and what size
to train for a budget of FLOPs or of seconds.

Two of the three approaches of Chinchilla (Hoffmann et al. 2022, "Training Compute-Optimal Large
Language Models"), over the runs of scaling/runs/<size>-<budget>/result.json:

- IsoFLOP curves (`isoflop`): at each budget C, the final val loss as a parabola in ln N; its
  vertex is the compute-optimal size N_opt(C), and D_opt(C) = C / F(N_opt), F being the grid's
  training FLOPs per token as a function of N (`Laws.per_token`: the runs' own flops_per_token,
  6N plus attention, fitted as a power law in N, so that D_opt spends exactly C as the runs do).
  Over the budgets, N_opt = k_N C^a and D_opt = k_D C^b, least squares in log-log.
- The parametric law L(N, D) = E + A / N^alpha + B / D^beta (`fit_law`): the Huber loss (delta
  1e-3) of the residuals in log loss, minimised by L-BFGS over (log A, log B, log E, alpha, beta),
  started from the best points of a grid of starts; its confidence intervals come from refitting
  it to runs resampled with replacement (`bootstrap`).

The runs of the held-out budget (`Result.holdout`) are left out of every fit and predicted by it
(`Holdout`). Everything here is deterministic: the same results and seed give the same numbers,
and the report (`report`) the same bytes. docs/scaling.md explains the method and the report.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gptcore.errors import DataError, GptcoreError
from gptcore.scaling.grid import MIN_BUDGETS, MIN_SIZES

# the pipeline whose run stages write the results, for the errors that ask for them
REPRO = "dvc repro scaling/dvc.yaml"
HUBER_DELTA = 1e-3
CONFIDENCE = 0.9  # the bootstrap intervals' coverage: the 5th to the 95th percentile
# the grid of L-BFGS starts: (log A, log B, log E, alpha, beta); the losses are nats per token of
# small models, so E lies between e^-1 and e^1.5 and the exponents well under 1.5
START_LOG_AB = np.arange(0.0, 25.01, 2.5)
START_LOG_E = np.arange(-1.0, 1.51, 0.5)
START_EXPONENTS = np.array([0.1, 0.2, 0.35, 0.5, 0.75, 1.0])
STARTS = 5  # the best grid points L-BFGS starts from
LAW_NAMES = ("E", "A", "B", "alpha", "beta")
# the result.json keys the fit reads, with their types (the run stage writes more)
INT_KEYS = ("parameters", "flops_per_token", "tokens", "steps")
FLOAT_KEYS = ("budget", "val_loss")
SIGNIFICANT = 6  # digits kept in the report: ample for the fits, and stable across BLAS builds


# ---------------------------------------------------------------------------------------------
# the runs


@dataclass(frozen=True)
class Result:
    """One run of the grid, as its result.json reports it."""

    name: str  # <size>-<budget>, its folder under scaling/runs
    size: str
    budget_name: str  # as scaling.budgets writes it
    parameters: int  # N
    flops_per_token: int
    tokens: int  # D
    steps: int
    budget: float  # C, the grid entry's FLOPs
    val_loss: float
    holdout: bool

    @property
    def tokens_per_step(self) -> int:
        return self.tokens // self.steps


def read_results(folder: Path | str, runs: Iterable[tuple[str, bool]]) -> list[Result]:
    """The result of each run (name, held out) of the grid, from folder/<name>/result.json; an error
    names every run whose result is missing. The held-out flag is the grid's (the current params),
    not the file's: a run's training does not depend on it."""
    folder = Path(folder)
    runs = list(runs)
    missing = [name for name, _ in runs if not (folder / name / "result.json").is_file()]
    if missing:
        raise DataError(
            f"no result for {len(missing)} of the grid's {len(runs)} runs: "
            + ", ".join(str(folder / name / "result.json") for name in missing)
            + f"; run `{REPRO}` first (it trains the runs, then fits)"
        )
    return [read_result(folder / name / "result.json", name, holdout) for name, holdout in runs]


def read_result(path: Path, name: str, holdout: bool) -> Result:
    """A run's result.json, checked: the keys the fit reads, of the right types, finite, and the
    size and budget of the run whose folder holds it."""
    rerun = f"re-run it: dvc repro --force scaling/dvc.yaml:run@{name}"
    try:
        # NaN and Infinity are read, then refused below by the key that holds them: the run stage
        # writes NaN for a figure it could not measure (bits per byte of a corpus without text)
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); {rerun}") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a JSON object, found {type(raw).__name__}; {rerun}")
    values: dict[str, Any] = {}
    for key in INT_KEYS:
        value = raw.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise DataError(f"{path}: {key} is {value!r}, not a whole number > 0; {rerun}")
        values[key] = value
    for key in FLOAT_KEYS:
        value = raw.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DataError(f"{path}: {key} is {value!r}, not a number; {rerun}")
        if not math.isfinite(value) or value <= 0:
            why = " (the run diverged, or its result is corrupt)" if key == "val_loss" else ""
            raise DataError(f"{path}: {key} is {value}, not a finite number > 0{why}; {rerun}")
        values[key] = float(value)
    size = raw.get("size")
    size_text, _, budget_text = name.rpartition("-")
    if size != size_text or _float_or_none(budget_text) != values["budget"]:
        raise DataError(
            f"{path} is the result of {size}-{flops_text(values['budget'])}, not of {name}: a stale folder; {rerun}"
        )
    return Result(name=name, size=size_text, budget_name=budget_text, holdout=holdout, **values)


def _float_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------
# IsoFLOP curves and power laws


@dataclass(frozen=True)
class PowerLaw:
    """y = coefficient * x ** exponent."""

    coefficient: float
    exponent: float

    def __call__(self, x: Any) -> Any:
        return self.coefficient * np.power(x, self.exponent)

    @classmethod
    def fit(cls, x: Sequence[float], y: Sequence[float]) -> PowerLaw:
        """Least squares of ln y on ln x."""
        slope, intercept = np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)
        return cls(float(np.exp(intercept)), float(slope))


def per_token_law(results: Sequence[Result]) -> PowerLaw:
    """Training FLOPs per token as a function of N, from the runs' own counts: what spends a budget
    at a size between the grid's."""
    by_size = {r.parameters: r.flops_per_token for r in results}
    if len(by_size) == 1:  # one size: FLOPs per token proportional to N through it
        (n, per_token), *_ = by_size.items()
        return PowerLaw(per_token / n, 1.0)
    sizes = sorted(by_size)
    return PowerLaw.fit(sizes, [by_size[n] for n in sizes])


@dataclass(frozen=True)
class IsoFlop:
    """The runs of one budget: val loss as a parabola in ln N, and its minimum."""

    budget: float
    budget_name: str  # as scaling.budgets writes it
    parameters: tuple[int, ...]  # the runs' N, ascending
    losses: tuple[float, ...]
    curve: tuple[float, float, float]  # loss = c0 + c1 ln N + c2 (ln N)^2
    n_opt: float
    d_opt: float  # budget / FLOPs per token at n_opt
    loss_opt: float  # the parabola at n_opt
    inside: bool  # the parabola's vertex lies strictly inside the sizes run: a real minimum

    def fitted(self, n: Any) -> Any:
        x = np.log(n)
        return self.curve[0] + self.curve[1] * x + self.curve[2] * x * x

    @property
    def edge(self) -> str:
        """Where the minimum is, when not inside: the smallest or the largest size run."""
        if self.inside:
            return ""
        return "smallest" if self.n_opt < math.sqrt(self.parameters[0] * self.parameters[-1]) else "largest"


def isoflop(results: Sequence[Result], budget: float, per_token: PowerLaw | None = None) -> IsoFlop:
    """The IsoFLOP curve of `budget` (compared as a float) over the runs of that budget, at least
    3 sizes. Its minimum is the parabola's vertex when that lies inside the sizes run; otherwise
    (the vertex beyond the smallest or largest size, or a parabola that opens downwards) it is the
    end of the range the curve falls towards, and `inside` is False: the optimum is a bound there,
    not an estimate. D_opt spends the budget at N_opt with `per_token` (default: fitted to these
    results)."""
    runs = sorted((r for r in results if r.budget == budget), key=lambda r: r.parameters)
    sizes = sorted({r.parameters for r in runs})
    if len(sizes) < MIN_SIZES:
        raise GptcoreError(
            f"budget {flops_text(budget)} has {len(sizes)} size{'s' if len(sizes) != 1 else ''} "
            f"({', '.join(r.name for r in runs) or 'no run'}): an IsoFLOP curve needs at least "
            f"{MIN_SIZES}; list more in scaling.sizes"
        )
    per_token = per_token or per_token_law(results)
    x = np.log([float(r.parameters) for r in runs])
    y = np.array([r.val_loss for r in runs])
    c2, c1, c0 = (float(c) for c in np.polyfit(x, y, 2))
    lo, hi = float(x[0]), float(x[-1])
    vertex = -c1 / (2 * c2) if c2 > 0 else math.nan
    inside = c2 > 0 and lo < vertex < hi
    falls_to = lo if c1 * lo + c2 * lo * lo <= c1 * hi + c2 * hi * hi else hi  # the lower end
    x_opt = vertex if inside else falls_to
    n_opt = math.exp(x_opt)
    return IsoFlop(
        budget=budget,
        budget_name=runs[0].budget_name,
        parameters=tuple(r.parameters for r in runs),
        losses=tuple(float(v) for v in y),
        curve=(c0, c1, c2),
        n_opt=n_opt,
        d_opt=budget / float(per_token(n_opt)),
        loss_opt=c0 + c1 * x_opt + c2 * x_opt * x_opt,
        inside=inside,
    )


def edge_warning(curve: IsoFlop) -> str:
    n = curve.parameters[0] if curve.edge == "smallest" else curve.parameters[-1]
    more = "smaller" if curve.edge == "smallest" else "larger"
    return (
        f"the IsoFLOP curve of budget {curve.budget_name} has no minimum inside its sizes: it keeps "
        f"falling towards the {curve.edge} ({n:,} parameters), so its N_opt is a bound, not an "
        f"estimate; add a {more} size to scaling.sizes"
    )


# ---------------------------------------------------------------------------------------------
# the parametric law


@dataclass(frozen=True)
class Law:
    """L(N, D) = E + A / N^alpha + B / D^beta, in nats per token."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, n: Any, d: Any) -> Any:
        return self.E + self.A / np.power(n, self.alpha) + self.B / np.power(d, self.beta)

    def values(self) -> tuple[float, ...]:
        return (self.E, self.A, self.B, self.alpha, self.beta)

    @classmethod
    def from_theta(cls, theta: np.ndarray) -> Law:
        """From the fit's variables (log A, log B, log E, alpha, beta)."""
        log_a, log_b, log_e, alpha, beta = (float(t) for t in theta)
        return cls(E=math.exp(log_e), A=math.exp(log_a), B=math.exp(log_b), alpha=alpha, beta=beta)

    def theta(self) -> np.ndarray:
        return np.array([math.log(self.A), math.log(self.B), math.log(self.E), self.alpha, self.beta])


def _huber(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The Huber loss of residuals `r` over delta, and its derivative: quadratic inside delta,
    linear beyond, so a few bad runs do not pull the fit. (Dividing by delta leaves the minimum
    where it was and gives L-BFGS gradients of order 1.)"""
    small = np.abs(r) <= HUBER_DELTA
    return (
        np.where(small, r * r / (2 * HUBER_DELTA), np.abs(r) - HUBER_DELTA / 2),
        np.where(small, r / HUBER_DELTA, np.sign(r)),
    )


def _objective(
    theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray, weights: np.ndarray
) -> tuple[float, np.ndarray]:
    """The weighted Huber loss of ln L(N, D) - ln loss, and its gradient in theta. ln L is the
    log-sum-exp of (log A - alpha ln N, log B - beta ln D, log E), computed stably."""
    log_a, log_b, log_e, alpha, beta = theta
    terms = np.stack([log_a - alpha * log_n, log_b - beta * log_d, np.full_like(log_n, log_e)])
    top = terms.max(axis=0)
    shares = np.exp(terms - top)
    total = shares.sum(axis=0)
    shares /= total  # each term's share of L: d ln L / d term
    h, dh = _huber(top + np.log(total) - log_loss)
    g = weights * dh
    gradient = np.array(
        [
            (g * shares[0]).sum(),
            (g * shares[1]).sum(),
            (g * shares[2]).sum(),
            -(g * shares[0] * log_n).sum(),
            -(g * shares[1] * log_d).sum(),
        ]
    )
    return float((weights * h).sum()), gradient


def _start_grid() -> np.ndarray:
    """Every combination of the starting values, one row each (log A, log B, log E, alpha, beta)."""
    axes = (START_LOG_AB, START_LOG_AB, START_LOG_E, START_EXPONENTS, START_EXPONENTS)
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 5)


def _best_starts(log_n: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray, k: int) -> np.ndarray:
    """The k points of the start grid with the lowest objective, evaluated all at once."""
    grid = _start_grid()
    log_a, log_b, log_e, alpha, beta = (grid[:, i : i + 1] for i in range(5))
    terms = np.stack(
        [log_a - alpha * log_n, log_b - beta * log_d, np.broadcast_to(log_e, (len(grid), len(log_n)))]
    )
    h, _ = _huber(np.logaddexp.reduce(terms, axis=0) - log_loss)
    return grid[np.argsort(h.sum(axis=1), kind="stable")[:k]]


def _minimise(
    starts: Iterable[np.ndarray],
    log_n: np.ndarray,
    log_d: np.ndarray,
    log_loss: np.ndarray,
    weights: np.ndarray,
) -> np.ndarray:
    """L-BFGS from each start; the lowest minimum found (the first of equals)."""
    from scipy.optimize import minimize

    best_value, best = math.inf, None
    for start in starts:
        found = minimize(
            _objective,
            start,
            args=(log_n, log_d, log_loss, weights),
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": 2000, "ftol": 1e-12, "gtol": 1e-8},
        )
        if found.fun < best_value:
            best_value, best = float(found.fun), np.asarray(found.x, float)
    assert best is not None
    return best


@dataclass(frozen=True)
class LawFit:
    law: Law
    draws: np.ndarray  # (resamples, 5): E, A, B, alpha, beta of each bootstrap refit


def fit_law(
    parameters: Sequence[float], tokens: Sequence[float], losses: Sequence[float], bootstrap: int, seed: int
) -> LawFit:
    """L(N, D) fitted to the runs (N, D, loss), and refitted to `bootstrap` resamples of them drawn
    with replacement by a generator seeded with `seed`. A resample's fit starts from the full fit's
    solution: the same basin, found in a fraction of the steps a grid start takes."""
    # imported here: scipy.optimize takes longer to import than the rest of a `gptcore scaling
    # recommend`, which reads a fit and never fits; before the limit below, which covers the BLAS
    # libraries loaded when it is set
    import scipy.optimize  # noqa: F401
    from threadpoolctl import threadpool_limits

    log_n, log_d = np.log(np.asarray(parameters, float)), np.log(np.asarray(tokens, float))
    log_loss = np.log(np.asarray(losses, float))
    ones = np.ones_like(log_n)
    # one BLAS thread: L-BFGS on 5 variables makes thousands of tiny BLAS calls, and waking a
    # second thread for each costs far more than the call (docs/scaling.md, "How long the fit takes")
    with threadpool_limits(limits=1, user_api="blas"):
        starts = _best_starts(log_n, log_d, log_loss, STARTS)
        theta = _minimise(starts, log_n, log_d, log_loss, ones)
        rng = np.random.default_rng(seed)
        draws = np.empty((bootstrap, 5))
        for i in range(bootstrap):
            # a resample as counts per run: the same objective as the repeated runs, fewer terms
            counts = np.bincount(rng.integers(0, len(log_n), len(log_n)), minlength=len(log_n)).astype(float)
            refit = _minimise([theta], log_n, log_d, log_loss, counts)
            draws[i] = Law.from_theta(refit).values()
    return LawFit(Law.from_theta(theta), draws)


# ---------------------------------------------------------------------------------------------
# the fit of a grid


@dataclass(frozen=True)
class Laws:
    """What a prediction needs: the parametric law and its bootstrap draws, the compute-optimal
    power laws, FLOPs per token, and the grid's sizes. `report` writes it, `laws_from_report`
    reads it back (the `gptcore scaling recommend` command)."""

    law: Law
    draws: np.ndarray = field(compare=False)  # (resamples, 5); none: no intervals
    n_opt: PowerLaw
    d_opt: PowerLaw
    per_token: PowerLaw
    sizes: dict[str, int]  # the grid's sizes and their N
    tokens_per_step: int

    def loss(self, n: float, d: float) -> tuple[float, float | None, float | None]:
        """L(n, d), and the bounds of its confidence interval (None without draws)."""
        value = float(self.law.loss(n, d))
        if not len(self.draws):
            return value, None, None
        e, a, b, alpha, beta = self.draws.T
        spread = e + a / np.power(n, alpha) + b / np.power(d, beta)
        lo, hi = np.quantile(spread, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
        return value, float(lo), float(hi)

    def nearest_size(self, n: float) -> str:
        """The grid size whose N is nearest to n (in ratio)."""
        return min(self.sizes, key=lambda s: (abs(math.log(self.sizes[s] / n)), s))


@dataclass(frozen=True)
class HeldOut:
    """A run of the held-out budget, and what the fit predicted for it."""

    result: Result
    predicted: float
    lo: float | None
    hi: float | None

    @property
    def error(self) -> float:
        return self.predicted - self.result.val_loss

    @property
    def error_pct(self) -> float:
        return 100 * self.error / self.result.val_loss


@dataclass(frozen=True)
class Holdout:
    """The held-out budget: each run predicted by L(N, D), and its compute-optimal point predicted
    by the power law N_opt(C) (the loss there by L) against the best run measured."""

    budget: float
    runs: list[HeldOut]
    best: Result  # the run of lowest measured loss
    curve: IsoFlop | None  # the budget's own IsoFLOP curve, when it has enough sizes
    n_opt: float  # predicted
    loss: float  # predicted loss at the predicted optimum
    lo: float | None
    hi: float | None

    @property
    def error(self) -> float:
        return self.loss - self.best.val_loss

    @property
    def error_pct(self) -> float:
        return 100 * self.error / self.best.val_loss


@dataclass(frozen=True)
class Fit:
    """Everything fitted to a grid's results, and the held-out budget's comparison."""

    laws: Laws
    curves: list[IsoFlop]  # one per fitted budget, ascending
    results: list[Result]  # every run, held-out ones included
    predicted: dict[str, float]  # L(N, D) of each run, by name
    rmse: float  # of ln L(N, D) - ln loss over the fitted runs
    holdout: Holdout | None
    bootstrap: int
    seed: int
    warnings: list[str]


def fit_grid(results: Sequence[Result], bootstrap: int, seed: int) -> Fit:
    """Every fit of the grid's results: the runs not held out are fitted, the held-out ones predicted.
    Refuses, before fitting anything, a grid without 2 fitted budgets of 3 sizes each."""
    fitted = [r for r in results if not r.holdout]
    held = [r for r in results if r.holdout]
    budgets = sorted({r.budget for r in fitted})
    if len(budgets) < MIN_BUDGETS:
        raise GptcoreError(
            f"the fit needs runs at {MIN_BUDGETS} budgets or more besides the held-out one, and has "
            f"{len(budgets)} ({', '.join(flops_text(b) for b in budgets) or 'none'}): list more in scaling.budgets"
        )
    short = {b: sorted({r.size for r in fitted if r.budget == b}) for b in budgets}
    short = {b: sizes for b, sizes in short.items() if len(sizes) < MIN_SIZES}
    if short:
        raise GptcoreError(
            f"an IsoFLOP curve needs runs of at least {MIN_SIZES} sizes at its budget: "
            + "; ".join(f"budget {flops_text(b)} has {len(s)} ({', '.join(s)})" for b, s in short.items())
            + "; list more in scaling.sizes"
        )

    per_token = per_token_law(results)
    curves = [isoflop(fitted, b, per_token) for b in budgets]
    warnings = [edge_warning(c) for c in curves if not c.inside]
    n_opt = PowerLaw.fit(budgets, [c.n_opt for c in curves])
    d_opt = PowerLaw.fit(budgets, [c.d_opt for c in curves])
    law_fit = fit_law(
        [r.parameters for r in fitted],
        [r.tokens for r in fitted],
        [r.val_loss for r in fitted],
        bootstrap,
        seed,
    )
    law = law_fit.law
    laws = Laws(
        law=law,
        draws=law_fit.draws,
        n_opt=n_opt,
        d_opt=d_opt,
        per_token=per_token,
        sizes={r.size: r.parameters for r in sorted(results, key=lambda r: r.parameters)},
        tokens_per_step=min(r.tokens_per_step for r in results),
    )
    predicted = {r.name: float(law.loss(r.parameters, r.tokens)) for r in results}
    residuals = [math.log(predicted[r.name] / r.val_loss) for r in fitted]
    rmse = math.sqrt(sum(v * v for v in residuals) / len(residuals))
    holdout = _holdout(laws, held) if held else None
    if holdout is not None and holdout.curve is not None and not holdout.curve.inside:
        warnings.append("held out: " + edge_warning(holdout.curve))
    return Fit(laws, curves, list(results), predicted, rmse, holdout, bootstrap, seed, warnings)


def _holdout(laws: Laws, held: Sequence[Result]) -> Holdout:
    budget = max(r.budget for r in held)
    runs = [r for r in held if r.budget == budget]
    predictions = [HeldOut(r, *laws.loss(r.parameters, r.tokens)) for r in runs]
    curve = isoflop(runs, budget, laws.per_token) if len({r.parameters for r in runs}) >= MIN_SIZES else None
    n = float(laws.n_opt(budget))
    loss, lo, hi = laws.loss(n, budget / float(laws.per_token(n)))
    best = min(runs, key=lambda r: (r.val_loss, r.name))
    return Holdout(budget, predictions, best, curve, n, loss, lo, hi)


# ---------------------------------------------------------------------------------------------
# recommendations


@dataclass(frozen=True)
class Recommendation:
    """What to train for a budget: N, tokens, the FLOPs they cost, and the loss L(N, D) predicts."""

    flops: float
    seconds: float | None  # a wall-clock budget: the seconds it was for
    parameters: float
    tokens: float
    loss: float
    lo: float | None
    hi: float | None
    nearest_size: str  # the grid size nearest in N
    steps: int  # of the grid's tokens per step
    tokens_per_second: float | None  # the speed model's, at N
    at_edge: bool  # a wall-clock budget's best N at the end of the sizes searched: a bound

    def to_dict(self) -> dict[str, Any]:
        out = {
            "flops": self.flops,
            "parameters": self.parameters,
            "tokens": self.tokens,
            "tokens_per_parameter": self.tokens / self.parameters,
            "steps": self.steps,
            "nearest_size": self.nearest_size,
            "loss": self.loss,
            "loss_lo": self.lo,
            "loss_hi": self.hi,
        }
        if self.seconds is not None:
            out.update(seconds=self.seconds, tokens_per_second=self.tokens_per_second, at_edge=self.at_edge)
        return _rounded(out)


# sizes searched for a wall-clock budget: from a tenth of the smallest N run to ten times the largest
SEARCH_SPAN = 10.0
SEARCH_POINTS = 241


def recommend(
    fit: Laws, flops: float | None = None, seconds: float | None = None, speed: PowerLaw | None = None
) -> Recommendation:
    """For a budget of `flops`: N from the power law N_opt(C), the tokens that spend the budget at
    that N, and L there. For a budget of `seconds` (`speed`: tokens per second as a power law in N,
    `speed_law`): the N among sizes around the grid's that minimises L(N, speed(N) x seconds)."""
    if (flops is None) == (seconds is None):
        raise ValueError("give flops or seconds")
    if flops is not None:
        n = float(fit.n_opt(flops))
        return _recommendation(fit, n, flops / float(fit.per_token(n)), seconds=None, speed=None)
    if speed is None:
        raise GptcoreError("a wall-clock budget needs a speed model: the runs' measured tokens/s")
    assert seconds is not None
    sizes = sorted(fit.sizes.values())
    candidates = np.geomspace(sizes[0] / SEARCH_SPAN, sizes[-1] * SEARCH_SPAN, SEARCH_POINTS)
    losses = fit.law.loss(candidates, speed(candidates) * seconds)
    best = int(np.argmin(losses))
    n = float(candidates[best])
    return _recommendation(
        fit, n, float(speed(n)) * seconds, seconds, speed, at_edge=best in (0, len(candidates) - 1)
    )


def _recommendation(
    fit: Laws, n: float, d: float, seconds: float | None, speed: PowerLaw | None, at_edge: bool = False
) -> Recommendation:
    loss, lo, hi = fit.loss(n, d)
    return Recommendation(
        flops=float(fit.per_token(n)) * d,
        seconds=seconds,
        parameters=n,
        tokens=d,
        loss=loss,
        lo=lo,
        hi=hi,
        nearest_size=fit.nearest_size(n),
        steps=max(1, round(d / fit.tokens_per_step)),
        tokens_per_second=None if speed is None else float(speed(n)),
        at_edge=at_edge,
    )


def speed_law(telemetry: Sequence[dict[str, Any]], sizes: dict[str, int], where: str) -> PowerLaw:
    """Tokens per second as a power law in N, through the median of each size's runs, from the
    run stage's telemetry (`size`, `tokens_per_second`); `where` names the telemetry in errors."""
    speeds: dict[int, list[float]] = {}
    for entry in telemetry:
        size, value = entry.get("size"), entry.get("tokens_per_second")
        if size not in sizes:
            continue  # a run of a size no longer in the grid
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise DataError(f"{where}: tokens_per_second of a {size} run is {value!r}, not a speed > 0")
        speeds.setdefault(sizes[size], []).append(float(value))
    if len(speeds) < 2:
        raise DataError(
            f"{where}: measured speeds of {len(speeds)} of the grid's sizes; a speed model needs 2 or "
            f"more (they are written where the runs trained, by `{REPRO}`)"
        )
    ns = sorted(speeds)
    return PowerLaw.fit(ns, [float(np.median(speeds[n])) for n in ns])


def read_telemetry(folder: Path | str) -> list[dict[str, Any]]:
    """The run stage's telemetry files in `folder` (<size>-<budget>.json), in name order; none when
    the folder does not exist (the runs were restored from the cache, or trained elsewhere)."""
    folder = Path(folder)
    entries = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, RecursionError) as exc:
            raise DataError(f"{path} is not valid JSON: {exc}") from None
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def parse_flops(text: str | float, key: str) -> float:
    """A budget in FLOPs ("1e15", 1e15), or an error naming `key`."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise GptcoreError(f"{key}: {text!r} is not a budget: write FLOPs as a number > 0, e.g. 1e15")
    return value


# ---------------------------------------------------------------------------------------------
# the report


def _sig(value: float) -> float:
    return float(f"{value:.{SIGNIFICANT}g}")


def _rounded(value: Any) -> Any:
    """Floats to SIGNIFICANT digits, through dicts and lists."""
    if isinstance(value, float):
        return _sig(value)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value


def _interval(values: np.ndarray) -> tuple[float | None, float | None]:
    if not len(values):
        return None, None
    lo, hi = np.quantile(values, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return float(lo), float(hi)


def flops_text(flops: float) -> str:
    """FLOPs as budgets are written: 1e12, 2.5e13."""
    return f"{flops:g}".replace("e+", "e")


def report(fit: Fit) -> dict[str, Any]:
    """The fit as reports/scaling/fit.json: every constant with its interval, the power laws, each
    IsoFLOP curve, the held-out comparison, and what `laws_from_report` needs to predict."""
    laws = fit.laws
    law = {}
    for i, name in enumerate(LAW_NAMES):
        lo, hi = _interval(laws.draws[:, i])
        law[name] = {"value": laws.law.values()[i], "lo": lo, "hi": hi}
    out: dict[str, Any] = {
        "law": law,
        "confidence": CONFIDENCE,
        "bootstrap": fit.bootstrap,
        "seed": fit.seed,
        "rmse_log_loss": fit.rmse,
        "optimum": {
            "a": laws.n_opt.exponent,
            "k_N": laws.n_opt.coefficient,
            "b": laws.d_opt.exponent,
            "k_D": laws.d_opt.coefficient,
        },
        "flops_per_token": {"coefficient": laws.per_token.coefficient, "exponent": laws.per_token.exponent},
        "isoflop": {c.budget_name: _curve_report(c) for c in fit.curves},
        "warnings": fit.warnings,
        "sizes": laws.sizes,
        "tokens_per_step": laws.tokens_per_step,
        "draws": laws.draws.tolist(),
    }
    if fit.holdout is not None:
        out["holdout"] = _holdout_report(fit.holdout)
    return _rounded(out)


def _curve_report(curve: IsoFlop) -> dict[str, Any]:
    return {
        "sizes": len(curve.parameters),
        "n_opt": curve.n_opt,
        "d_opt": curve.d_opt,
        "loss_opt": curve.loss_opt,
        "minimum": "inside" if curve.inside else f"edge ({curve.edge} size)",
        "curve": list(curve.curve),
    }


def _holdout_report(holdout: Holdout) -> dict[str, Any]:
    runs = [
        {
            "name": h.result.name,
            "parameters": h.result.parameters,
            "tokens": h.result.tokens,
            "measured": h.result.val_loss,
            "predicted": h.predicted,
            "lo": h.lo,
            "hi": h.hi,
            "error": h.error,
            "error_pct": h.error_pct,
        }
        for h in holdout.runs
    ]
    out: dict[str, Any] = {
        "budget": holdout.budget,
        "error": holdout.error,
        "error_pct": holdout.error_pct,
        "predicted": {"n_opt": holdout.n_opt, "loss": holdout.loss, "lo": holdout.lo, "hi": holdout.hi},
        "best_run": {
            "name": holdout.best.name,
            "parameters": holdout.best.parameters,
            "loss": holdout.best.val_loss,
        },
        "mean_abs_error": float(np.mean([abs(h.error) for h in holdout.runs])),
        "mean_abs_error_pct": float(np.mean([abs(h.error_pct) for h in holdout.runs])),
        "runs": runs,
    }
    if holdout.curve is not None:
        out["measured_curve"] = _curve_report(holdout.curve)
    return out


# what `dvc metrics show` lists (12 figures); fit.json holds the rest
HEADLINE = (
    "law.alpha.value",
    "law.alpha.lo",
    "law.alpha.hi",
    "law.beta.value",
    "law.beta.lo",
    "law.beta.hi",
    "law.E.value",
    "optimum.a",
    "optimum.b",
    "rmse_log_loss",
    "holdout.error",
    "holdout.error_pct",
)


def laws_from_report(data: Any, where: str) -> Laws:
    """The laws of a fit.json `report` wrote; an error naming `where` when it is not one."""
    try:
        law = Law(**{name: float(data["law"][name]["value"]) for name in LAW_NAMES})
        draws = np.array(data["draws"], dtype=float).reshape(-1, 5)
        optimum, per_token = data["optimum"], data["flops_per_token"]
        sizes = {str(k): int(v) for k, v in data["sizes"].items()}
        laws = Laws(
            law=law,
            draws=draws,
            n_opt=PowerLaw(float(optimum["k_N"]), float(optimum["a"])),
            d_opt=PowerLaw(float(optimum["k_D"]), float(optimum["b"])),
            per_token=PowerLaw(float(per_token["coefficient"]), float(per_token["exponent"])),
            sizes=sizes,
            tokens_per_step=int(data["tokens_per_step"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DataError(
            f"{where} is not a scaling fit ({type(exc).__name__}: {exc}): run `{REPRO}`"
        ) from None
    if not sizes or laws.tokens_per_step <= 0:
        raise DataError(f"{where} is not a scaling fit (no sizes): run `{REPRO}`")
    return laws


def runs_table(fit: Fit) -> str:
    """reports/scaling/runs.tsv: one row per run, with L(N, D)'s prediction."""
    lines = ["name\tsize\tparameters\tbudget\ttokens\tval_loss\tpredicted_loss\tholdout"]
    for r in sorted(fit.results, key=lambda r: (r.budget, r.parameters)):
        lines.append(
            f"{r.name}\t{r.size}\t{r.parameters}\t{r.budget_name}\t{r.tokens}\t{r.val_loss:.5f}\t"
            f"{fit.predicted[r.name]:.5f}\t{str(r.holdout).lower()}"
        )
    return "\n".join(lines) + "\n"


def isoflop_table(fit: Fit) -> str:
    """reports/scaling/isoflop.tsv, for a `dvc plots` scatter: each run's log10 N and loss with its
    budget, and the budget's parabola at that N."""
    curves = list(fit.curves)
    if fit.holdout is not None and fit.holdout.curve is not None:
        curves.append(fit.holdout.curve)
    by_budget = {c.budget: c for c in curves}
    lines = ["budget\tsize\tparameters\tlog10_parameters\tval_loss\tparabola\tholdout"]
    for r in sorted(fit.results, key=lambda r: (r.budget, r.parameters)):
        curve = by_budget.get(r.budget)
        parabola = f"{float(curve.fitted(r.parameters)):.5f}" if curve is not None else ""
        lines.append(
            f"{r.budget_name}\t{r.size}\t{r.parameters}\t{math.log10(r.parameters):.5f}\t{r.val_loss:.5f}\t"
            f"{parabola}\t{str(r.holdout).lower()}"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# the printed tables


def count_text(value: float) -> str:
    """A count as 852k, 4.80M, 1.23G."""
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:.3g}"


def _range(lo: float | None, hi: float | None) -> str:
    return "" if lo is None or hi is None else f"[{lo:.4g}, {hi:.4g}]"


def _columns(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def summary(fit: Fit) -> str:
    """The fit as the stage prints it: the law with its intervals, the IsoFLOP curves, the power
    laws, the held-out comparison. (The warnings: `Fit.warnings`, which the stage prints last.)"""
    laws = fit.laws
    fitted = [r for r in fit.results if not r.holdout]
    names = ", ".join(c.budget_name for c in fit.curves)
    intervals = f"{fit.bootstrap} bootstrap resamples (seed {fit.seed}), {CONFIDENCE:.0%} intervals"
    lines = [
        f"scaling fit: {len(fitted)} runs at {len(fit.curves)} budgets ({names}); "
        + (intervals if fit.bootstrap else "no bootstrap, no intervals"),
        "L(N, D) = E + A / N^alpha + B / D^beta",
    ]
    rows = []
    for i, name in enumerate(LAW_NAMES):
        lo, hi = _interval(laws.draws[:, i])
        rows.append([name, f"{laws.law.values()[i]:.4g}", _range(lo, hi)])
    lines += [_columns(rows), f"  RMSE of ln(loss) over the fitted runs: {fit.rmse:.4f}", "IsoFLOP curves"]
    rows = [["budget", "sizes", "N_opt", "D_opt", "tokens/N", "loss at N_opt", "minimum"]]
    curves = fit.curves + ([fit.holdout.curve] if fit.holdout and fit.holdout.curve else [])
    for c in curves:
        held = " (held out)" if c not in fit.curves else ""
        rows.append(
            [
                c.budget_name + held,
                str(len(c.parameters)),
                count_text(c.n_opt),
                count_text(c.d_opt),
                f"{c.d_opt / c.n_opt:.1f}",
                f"{c.loss_opt:.4f}",
                "inside" if c.inside else f"EDGE ({c.edge} size)",
            ]
        )
    lines.append(_columns(rows))
    lines.append(
        f"compute-optimal: N_opt = {laws.n_opt.coefficient:.4g} C^{laws.n_opt.exponent:.4f}, "
        f"D_opt = {laws.d_opt.coefficient:.4g} C^{laws.d_opt.exponent:.4f}"
    )
    if fit.holdout is not None:
        lines += _holdout_lines(fit.holdout)
    return "\n".join(lines)


def _holdout_lines(holdout: Holdout) -> list[str]:
    budget = holdout.best.budget_name
    lines = [f"held out: budget {budget}, predicted by the fit of the smaller budgets"]
    rows = [["run", "N", "D", "measured", "predicted", f"{CONFIDENCE:.0%} interval", "error (nats)", "error"]]
    for h in sorted(holdout.runs, key=lambda h: h.result.parameters):
        rows.append(
            [
                h.result.name,
                count_text(h.result.parameters),
                count_text(h.result.tokens),
                f"{h.result.val_loss:.4f}",
                f"{h.predicted:.4f}",
                _range(h.lo, h.hi),
                f"{h.error:+.4f}",
                f"{h.error_pct:+.2f}%",
            ]
        )
    lines.append(_columns(rows))
    mean = sum(abs(h.error) for h in holdout.runs) / len(holdout.runs)
    mean_pct = sum(abs(h.error_pct) for h in holdout.runs) / len(holdout.runs)
    lines.append(f"  mean |error| over its {len(holdout.runs)} runs: {mean:.4f} nats ({mean_pct:.2f}%)")
    measured = ""
    if holdout.curve is not None:
        measured = f"; its own IsoFLOP curve puts N_opt at {count_text(holdout.curve.n_opt)}"
    lines.append(
        f"  optimum: predicted N_opt {count_text(holdout.n_opt)}, loss {holdout.loss:.4f} "
        f"{_range(holdout.lo, holdout.hi)}; best run {holdout.best.name} ({count_text(holdout.best.parameters)}) "
        f"measured {holdout.best.val_loss:.4f}: off by {holdout.error:+.4f} nats ({holdout.error_pct:+.2f}%)"
        + measured
    )
    return lines


def recommendation_table(recommendations: dict[str, Recommendation]) -> str:
    """One row per budget (its label: "1e15 FLOPs", "8 min")."""
    rows = [
        ["budget", "N", "nearest size", "tokens", "tokens/N", "steps", "FLOPs", "predicted loss", "interval"]
    ]
    notes = []
    for label, rec in recommendations.items():
        rows.append(
            [
                label,
                count_text(rec.parameters),
                rec.nearest_size,
                count_text(rec.tokens),
                f"{rec.tokens / rec.parameters:.1f}",
                f"{rec.steps:,}",
                flops_text(float(f"{rec.flops:.3g}")),
                f"{rec.loss:.4f}",
                _range(rec.lo, rec.hi),
            ]
        )
        if rec.tokens_per_second is not None:
            notes.append(f"  {label}: {rec.tokens_per_second:,.0f} tokens/s at that size (the speed model)")
        if rec.at_edge:
            notes.append(
                f"  {label}: the best N is at the end of the sizes searched (a tenth of the smallest "
                "to ten times the largest run): a bound, and far outside what was measured"
            )
    return "\n".join([_columns(rows), *notes])
