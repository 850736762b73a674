"""The scaling fit (gptcore.scaling.fit, stages/scaling_fit.py, `gptcore scaling recommend`), on
results generated from a known law: it finds the law again, the IsoFLOP minima where they were
planted, predicts the held-out budget and says how far off it was, recommends sizes, gives the
same bytes twice, and refuses a grid it cannot fit with the reason."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import REPO

from gptcore.cli import main as cli_main
from gptcore.errors import DataError, GptcoreError
from gptcore.scaling.fit import (
    Law,
    PowerLaw,
    Result,
    fit_grid,
    isoflop,
    laws_from_report,
    per_token_law,
    read_results,
    recommend,
    report,
)
from gptcore.scaling.grid import check_fittable

# the grid's shapes (<layers>x<width>), their N as a GPT of a 100-token vocabulary counts them
SHAPES = {"2x48x2": (2, 48), "2x64": (2, 64), "2x96": (2, 96), "3x128": (3, 128), "3x192": (3, 192)}
BUDGETS = ["1e12", "2e12", "4e12", "8e12"]
TOKENS_PER_STEP = 32 * 128
# a law whose IsoFLOP minima fall inside the sizes above at every budget
TRUTH = Law(E=1.2, A=30.0, B=60.0, alpha=0.34, beta=0.28)


def planted(
    law: Law = TRUTH,
    budgets: list[str] = BUDGETS,
    holdout: str | None = "8e12",
    noise: float = 0.0,
    shapes: dict[str, tuple[int, int]] = SHAPES,
    seed: int = 1,
) -> list[Result]:
    """The grid's results as a run stage would report them, their losses from `law` times a
    log-normal noise of `noise`."""
    rng = np.random.default_rng(seed)
    out = []
    for budget in budgets:
        for name, (n_layer, n_embd) in shapes.items():
            n = 12 * n_layer * n_embd * n_embd + 100 * n_embd
            per_token = 6 * n + 12 * n_layer * n_embd * 128
            steps = int(float(budget) // (per_token * TOKENS_PER_STEP))
            tokens = steps * TOKENS_PER_STEP
            loss = (
                float(law.loss(n, tokens)) * math.exp(rng.normal(0.0, noise))
                if noise
                else float(law.loss(n, tokens))
            )
            out.append(
                Result(
                    name=f"{name}-{budget}",
                    size=name,
                    budget_name=budget,
                    parameters=n,
                    flops_per_token=per_token,
                    tokens=tokens,
                    steps=steps,
                    budget=float(budget),
                    val_loss=loss,
                    holdout=budget == holdout,
                )
            )
    return out


def result_json(r: Result) -> dict[str, Any]:
    """The run stage's result.json of `r` (the keys of its contract)."""
    n_layer, n_embd = SHAPES[r.size]
    return {
        "size": r.size,
        "n_layer": n_layer,
        "n_head": 2,
        "n_embd": n_embd,
        "budget": r.budget,
        "parameters": r.parameters,
        "flops_per_token": r.flops_per_token,
        "tokens": r.tokens,
        "steps": r.steps,
        "batch_size": 32,
        "block_size": 128,
        "flops": float(r.flops_per_token * r.tokens),
        "val_loss": round(r.val_loss, 5),
        "val_bits_per_byte": float("nan"),  # as the run stage writes it for a corpus it cannot measure
        "train_loss": round(r.val_loss, 5),
        "holdout": r.holdout,
    }


def write_runs(folder: Path, results: list[Result]) -> None:
    for r in results:
        (folder / r.name).mkdir(parents=True, exist_ok=True)
        (folder / r.name / "result.json").write_text(json.dumps(result_json(r)), encoding="utf-8")


@pytest.fixture(scope="module")
def noisy_fit() -> Any:
    return fit_grid(planted(noise=0.003), bootstrap=60, seed=7)


# --- the fits -----------------------------------------------------------------------------------


def test_the_fit_recovers_a_planted_law_and_its_intervals_contain_the_truth(noisy_fit: Any) -> None:
    data = report(noisy_fit)
    law = data["law"]
    for name, truth in zip(("E", "A", "B", "alpha", "beta"), TRUTH.values(), strict=True):
        assert law[name]["lo"] <= truth <= law[name]["hi"], (name, truth, law[name])
        assert law[name]["lo"] <= law[name]["value"] <= law[name]["hi"], name
    # the exponents, which a ladder of five small sizes pins down best, within a few hundredths
    assert law["alpha"]["value"] == pytest.approx(TRUTH.alpha, abs=0.04)
    assert law["beta"]["value"] == pytest.approx(TRUTH.beta, abs=0.02)
    assert law["E"]["value"] == pytest.approx(TRUTH.E, rel=0.1)
    assert data["rmse_log_loss"] < 0.005  # the noise planted is 0.003


def test_a_noiseless_law_is_found_exactly() -> None:
    fit = fit_grid(planted(), bootstrap=0, seed=0)
    for found, truth in zip(fit.laws.law.values(), TRUTH.values(), strict=True):
        assert found == pytest.approx(truth, rel=2e-3)
    assert fit.rmse < 1e-5
    # no resamples, no intervals
    assert report(fit)["law"]["alpha"] == {
        "value": pytest.approx(TRUTH.alpha, rel=2e-3),
        "lo": None,
        "hi": None,
    }


def test_isoflop_finds_the_vertex_of_a_planted_parabola() -> None:
    # loss = 3 + 0.2 (ln N - ln 300k)^2 over sizes from 60k to 1.35M
    runs = [
        replace(r, val_loss=3.0 + 0.2 * math.log(r.parameters / 3e5) ** 2)
        for r in planted(budgets=["4e12"], holdout=None)
    ]
    curve = isoflop(runs, 4e12)
    assert curve.inside and curve.edge == ""
    assert curve.n_opt == pytest.approx(3e5, rel=1e-6)
    assert curve.loss_opt == pytest.approx(3.0, abs=1e-9)
    # D_opt spends the budget at N_opt with the runs' own FLOPs per token
    assert curve.d_opt * per_token_law(runs)(curve.n_opt) == pytest.approx(4e12, rel=1e-9)


@pytest.mark.parametrize(("centre", "edge", "end"), [(3e7, "largest", -1), (2e3, "smallest", 0)])
def test_a_minimum_beyond_the_sizes_is_flagged_and_the_fit_warns(centre: float, edge: str, end: int) -> None:
    def bent(results: list[Result], budget: str) -> list[Result]:
        return [
            replace(r, val_loss=r.val_loss + 0.3 * math.log(r.parameters / centre) ** 2)
            if r.budget_name == budget
            else r
            for r in results
        ]

    results = bent(planted(), "2e12")
    curve = isoflop(results, 2e12)
    assert not curve.inside and curve.edge == edge
    assert curve.n_opt == pytest.approx(sorted({r.parameters for r in results})[end])
    fit = fit_grid(results, bootstrap=0, seed=0)
    (warning,) = fit.warnings
    assert "budget 2e12" in warning and edge in warning and "scaling.sizes" in warning
    assert report(fit)["isoflop"]["2e12"]["minimum"] == f"edge ({edge} size)"
    assert report(fit)["isoflop"]["1e12"]["minimum"] == "inside"


def test_the_power_laws_pass_through_the_isoflop_minima() -> None:
    fit = fit_grid(planted(), bootstrap=0, seed=0)
    for curve in fit.curves:
        assert fit.laws.n_opt(curve.budget) == pytest.approx(curve.n_opt, rel=0.1)
        assert fit.laws.d_opt(curve.budget) == pytest.approx(curve.d_opt, rel=0.1)
    # a larger budget buys a larger model and more tokens
    assert fit.laws.n_opt.exponent > 0 and fit.laws.d_opt.exponent > 0


def test_the_held_out_budget_is_predicted_and_the_error_is_measured_against_it() -> None:
    # held-out runs that came out 0.05 nats worse than the law: each is over-optimistically predicted
    results = [replace(r, val_loss=r.val_loss + 0.05) if r.holdout else r for r in planted()]
    fit = fit_grid(results, bootstrap=0, seed=0)
    holdout = report(fit)["holdout"]
    assert holdout["budget"] == 8e12
    assert {run["name"] for run in holdout["runs"]} == {f"{s}-8e12" for s in SHAPES}
    for run in holdout["runs"]:
        truth = float(TRUTH.loss(run["parameters"], run["tokens"]))
        assert run["predicted"] == pytest.approx(truth, abs=1e-3)
        assert run["error"] == pytest.approx(-0.05, abs=1e-3)
        assert run["error_pct"] == pytest.approx(100 * run["error"] / run["measured"], rel=1e-4)
    assert holdout["mean_abs_error"] == pytest.approx(0.05, abs=1e-3)
    # the optimum: the law at the power law's N_opt against the best run measured
    best = min(holdout["runs"], key=lambda run: run["measured"])
    assert holdout["best_run"] == {
        "name": best["name"],
        "parameters": best["parameters"],
        "loss": best["measured"],
    }
    n = fit.laws.n_opt(8e12)
    predicted = float(TRUTH.loss(n, 8e12 / fit.laws.per_token(n)))
    assert holdout["predicted"]["loss"] == pytest.approx(predicted, abs=1e-3)
    assert holdout["error"] == pytest.approx(predicted - best["measured"], abs=1e-3)
    # the held-out runs are in no fit: the law came out exactly as without them
    without = fit_grid([r for r in results if not r.holdout], bootstrap=0, seed=0)
    assert without.laws.law.values() == fit.laws.law.values()
    assert "holdout" not in report(without)


def test_the_held_out_runs_are_the_grids_not_what_result_json_says(tmp_path: Path) -> None:
    results = planted()
    write_runs(tmp_path, results)
    # the grid holds out nothing now (scaling.holdout_budget: null), whatever the files recorded
    read = read_results(tmp_path, [(r.name, False) for r in results])
    assert not any(r.holdout for r in read)
    assert [(r.parameters, r.tokens, r.budget) for r in read] == [
        (r.parameters, r.tokens, r.budget) for r in results
    ]


def test_the_fit_is_deterministic_to_the_byte() -> None:
    results = planted(noise=0.003)

    def fitted(seed: int) -> str:
        return json.dumps(report(fit_grid(results, bootstrap=10, seed=seed)), sort_keys=True)

    first = fitted(7)
    assert fitted(7) == first
    assert fitted(8) != first  # the seed is what draws the resamples


# --- recommendations ----------------------------------------------------------------------------


def test_a_flops_budget_gets_the_power_laws_size_and_the_tokens_that_spend_it(noisy_fit: Any) -> None:
    laws = noisy_fit.laws
    rec = recommend(laws, flops=1e14)
    assert rec.parameters == pytest.approx(laws.n_opt(1e14))
    assert rec.tokens * laws.per_token(rec.parameters) == pytest.approx(1e14)
    assert rec.flops == pytest.approx(1e14)
    assert rec.loss == pytest.approx(float(laws.law.loss(rec.parameters, rec.tokens)))
    assert rec.lo is not None and rec.hi is not None and rec.lo < rec.loss < rec.hi
    assert rec.steps == round(rec.tokens / TOKENS_PER_STEP)
    # the grid size nearest in N
    assert rec.nearest_size == min(laws.sizes, key=lambda s: abs(math.log(laws.sizes[s] / rec.parameters)))
    # more compute: a larger model, a lower loss
    assert recommend(laws, flops=1e15).parameters > rec.parameters
    assert recommend(laws, flops=1e15).loss < rec.loss


def test_a_wall_clock_budget_gets_the_size_that_minimises_the_law_along_the_speed(noisy_fit: Any) -> None:
    laws = noisy_fit.laws
    speed = PowerLaw(2e9, -1.0)  # tokens/s falling as 1/N, as FLOPs per token grow with N
    rec = recommend(laws, seconds=600, speed=speed)
    assert rec.seconds == 600 and not rec.at_edge
    assert rec.tokens == pytest.approx(speed(rec.parameters) * 600)
    assert rec.tokens_per_second == pytest.approx(speed(rec.parameters))
    # no size nearby does better in the same time
    for factor in (0.8, 1.25):
        n = rec.parameters * factor
        assert laws.law.loss(n, speed(n) * 600) > rec.loss
    # twice the time: at least as large a model
    assert recommend(laws, seconds=1200, speed=speed).parameters >= rec.parameters


# --- bad input ----------------------------------------------------------------------------------


def test_fewer_than_three_sizes_at_a_budget_is_an_error_naming_it() -> None:
    results = [r for r in planted() if not (r.budget_name == "2e12" and r.size in ("2x96", "3x128", "3x192"))]
    with pytest.raises(GptcoreError, match=r"budget 2e12 has 2 \(2x48x2, 2x64\).*scaling\.sizes"):
        fit_grid(results, bootstrap=0, seed=0)


def test_fewer_than_two_fitted_budgets_is_an_error() -> None:
    with pytest.raises(GptcoreError, match=r"2 budgets or more besides the held-out one, and has 1 \(1e12\)"):
        fit_grid(planted(budgets=["1e12", "8e12"]), bootstrap=0, seed=0)


@pytest.mark.parametrize(
    ("sizes", "budgets", "complaint"),
    [
        (["2x64", "2x96"], BUDGETS, r"scaling.sizes lists 2 sizes: the fit's IsoFLOP curves need at least 3"),
        (list(SHAPES), ["1e12", "8e12"], r"scaling.budgets lists 1 budget besides the held-out one"),
    ],
)
def test_a_grid_the_fit_cannot_use_is_refused_before_it_trains(
    sizes: list[str], budgets: list[str], complaint: str
) -> None:
    with pytest.raises(GptcoreError, match=complaint):
        check_fittable(sizes, budgets, "8e12")
    check_fittable(list(SHAPES), BUDGETS, "8e12")  # the default's shape
    check_fittable(list(SHAPES), ["1e12", "2e12"], None)  # nothing held out: two budgets fit


def test_missing_results_are_named_with_the_command_that_makes_them(tmp_path: Path) -> None:
    results = planted()
    write_runs(tmp_path, results)
    (tmp_path / "2x64-4e12" / "result.json").unlink()
    with pytest.raises(DataError) as exc:
        read_results(tmp_path, [(r.name, r.holdout) for r in results])
    message = str(exc.value)
    assert "1 of the grid's 20 runs" in message
    assert str(tmp_path / "2x64-4e12" / "result.json") in message
    assert "dvc repro scaling/dvc.yaml" in message


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"val_loss": float("nan")}, r"val_loss is nan, not a finite number > 0 \(the run diverged"),
        ({"val_loss": -1.0}, r"val_loss is -1.0, not a finite number > 0"),
        ({"tokens": "many"}, r"tokens is 'many', not a whole number > 0"),
        ({"size": "3x192"}, r"is the result of 3x192-4e12, not of 2x64-4e12: a stale folder"),
        ({"budget": 8e12}, r"is the result of 2x64-8e12, not of 2x64-4e12"),
    ],
)
def test_a_bad_result_is_an_error_naming_the_file_and_the_run_to_redo(
    tmp_path: Path, change: dict[str, Any], complaint: str
) -> None:
    results = planted()
    write_runs(tmp_path, results)
    path = tmp_path / "2x64-4e12" / "result.json"
    path.write_text(json.dumps({**json.loads(path.read_text(encoding="utf-8")), **change}), encoding="utf-8")
    with pytest.raises(DataError, match=complaint) as exc:
        read_results(tmp_path, [(r.name, r.holdout) for r in results])
    assert str(path) in str(exc.value)
    assert "dvc repro --force scaling/dvc.yaml:run@2x64-4e12" in str(exc.value)


def test_a_result_that_is_not_json_is_an_error(tmp_path: Path) -> None:
    results = planted()
    write_runs(tmp_path, results)
    (tmp_path / "2x64-4e12" / "result.json").write_text('{"size": "2x64", ', encoding="utf-8")
    with pytest.raises(DataError, match=r"2x64-4e12/result.json is not valid JSON"):
        read_results(tmp_path, [(r.name, r.holdout) for r in results])


# --- the stage and the command ------------------------------------------------------------------


def stage_params(path: Path, **scaling: Any) -> None:
    """The repository's params.yaml with the scaling section changed by `scaling`."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["scaling"].update(sizes=list(SHAPES), budgets=BUDGETS, holdout_budget="8e12", **scaling)
    path.write_text(yaml.safe_dump(params), encoding="utf-8")


OUTPUTS = [
    "fit.json",
    "fit_metrics.json",
    "runs.tsv",
    "isoflop.tsv",
    "isoflop.png",
    "frontier.png",
    "predicted.png",
    "recommend.json",
]


@pytest.mark.slow
def test_the_stage_writes_every_output_the_same_twice_and_prints_the_comparison(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from stages import scaling_fit

    monkeypatch.chdir(tmp_path)
    stage_params(
        tmp_path / "params.yaml", bootstrap=20, seed=3, predict_flops=["1e14"], predict_minutes=[8.0]
    )
    write_runs(tmp_path / "scaling" / "runs", planted(noise=0.003))
    scaling_fit.main()
    printed = capsys.readouterr().out
    out = tmp_path / "reports" / "scaling"
    first = {name: (out / name).read_bytes() for name in OUTPUTS}
    assert "held out: budget 8e12" in printed and "off by" in printed
    assert "1e14 FLOPs" in printed
    assert "no wall-clock recommendation: reports/telemetry/scaling: measured speeds of 0" in printed

    metrics = json.loads(first["fit_metrics.json"])
    assert set(metrics) == {"law", "optimum", "rmse_log_loss", "holdout"}
    assert sum(len(v) if isinstance(v, dict) else 1 for v in metrics["law"].values()) == 7
    runs = (out / "runs.tsv").read_text(encoding="utf-8").splitlines()
    assert runs[0].split("\t") == [
        "name",
        "size",
        "parameters",
        "budget",
        "tokens",
        "val_loss",
        "predicted_loss",
        "holdout",
    ]
    assert len(runs) == 1 + len(SHAPES) * len(BUDGETS)
    assert json.loads(first["recommend.json"])["1e14"]["flops"] == pytest.approx(1e14)

    # telemetry, where this machine trained the runs: a wall-clock recommendation, printed only
    telemetry = tmp_path / "reports" / "telemetry" / "scaling"
    telemetry.mkdir(parents=True)
    for r in planted():
        (telemetry / f"{r.name}.json").write_text(
            json.dumps(
                {
                    "size": r.size,
                    "budget": r.budget,
                    "tokens_per_second": 3e10 / r.parameters,
                    "wall_seconds": 1.0,
                }
            ),
            encoding="utf-8",
        )
    scaling_fit.main()
    assert "8 min" in capsys.readouterr().out
    assert {name: (out / name).read_bytes() for name in OUTPUTS} == first


def test_the_recommend_command_reads_the_fit_and_the_telemetry(
    tmp_path: Path, noisy_fit: Any, capsys: pytest.CaptureFixture
) -> None:
    fit_file = tmp_path / "fit.json"
    fit_file.write_text(json.dumps(report(noisy_fit)), encoding="utf-8")
    laws = laws_from_report(json.loads(fit_file.read_text(encoding="utf-8")), str(fit_file))
    telemetry = tmp_path / "telemetry"
    cli_main(
        ["scaling", "recommend", "--flops", "1e14", "--fit", str(fit_file), "--telemetry", str(telemetry)]
    )
    printed = capsys.readouterr().out
    rec = recommend(laws, flops=1e14)
    assert "1e14 FLOPs" in printed and f"{rec.loss:.4f}" in printed and rec.nearest_size in printed

    # minutes need this machine's speeds
    with pytest.raises(SystemExit) as exc:
        cli_main(
            ["scaling", "recommend", "--minutes", "8", "--fit", str(fit_file), "--telemetry", str(telemetry)]
        )
    assert exc.value.code == 1
    assert f"no telemetry in {telemetry}" in capsys.readouterr().err
    telemetry.mkdir()
    for size, n in laws.sizes.items():
        (telemetry / f"{size}-1e12.json").write_text(
            json.dumps({"size": size, "budget": 1e12, "tokens_per_second": 3e10 / n}), encoding="utf-8"
        )
    cli_main(
        ["scaling", "recommend", "--minutes", "8", "--fit", str(fit_file), "--telemetry", str(telemetry)]
    )
    speed = PowerLaw(3e10, -1.0)
    rec = recommend(laws, seconds=480, speed=speed)
    assert f"{rec.loss:.4f}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--flops", "lots"], "'lots' is not a budget"),
        (["--minutes", "-2"], "'-2' is not a number of minutes > 0"),
        ([], "give a budget"),
    ],
)
def test_the_recommend_command_refuses_a_bad_budget(
    tmp_path: Path, args: list[str], complaint: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli_main(["scaling", "recommend", *args, "--fit", str(tmp_path / "fit.json")])
    assert exc.value.code != 0
    assert complaint in capsys.readouterr().err


def test_the_recommend_command_without_a_fit_says_how_to_make_one(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit):
        cli_main(["scaling", "recommend", "--flops", "1e14", "--fit", str(tmp_path / "fit.json")])
    assert "run `dvc repro scaling/dvc.yaml` first" in capsys.readouterr().err
