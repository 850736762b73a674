"""Stage scaling/dvc.yaml:fit: the scaling laws fitted to the grid's runs (gptcore.scaling.fit).

Reads scaling/runs/<size>-<budget>/result.json of every run of the current grid (the held-out
budget's runs included, which the fit leaves out and predicts) and writes reports/scaling/:
fit.json (every constant with its bootstrap interval, the power laws, each IsoFLOP curve, the
held-out comparison, and what `gptcore scaling recommend` predicts from), fit_metrics.json (its
headline, for `dvc metrics show`), runs.tsv and isoflop.tsv (one row per run, for `dvc plots`),
isoflop.png, frontier.png and predicted.png, and recommend.json (a size and token count for each
budget of scaling.predict_flops). The same results and params give the same bytes.

It prints the fit and, where the runs' telemetry is (reports/telemetry/scaling/, not outputs:
speeds differ from run to run), what to train in each of scaling.predict_minutes: printed only,
since it holds only for the machine that measured the speeds.
"""

from __future__ import annotations

from pathlib import Path

from gptcore.atomic import write_json, write_text
from gptcore.errors import DataError, run_main
from gptcore.params import load_section
from gptcore.reports import headline
from gptcore.scaling import plots
from gptcore.scaling.fit import (
    HEADLINE,
    fit_grid,
    isoflop_table,
    parse_flops,
    read_results,
    read_telemetry,
    recommend,
    recommendation_table,
    report,
    runs_table,
    speed_law,
    summary,
)
from gptcore.scaling.grid import load_grid

RUNS_DIR = Path("scaling/runs")
TELEMETRY_DIR = Path("reports/telemetry/scaling")
OUT_DIR = Path("reports/scaling")
REPORT = OUT_DIR / "fit.json"
METRICS = OUT_DIR / "fit_metrics.json"
RECOMMEND = OUT_DIR / "recommend.json"


def main() -> None:
    scaling = load_section("scaling")
    budgets = {text: parse_flops(text, "scaling.predict_flops") for text in scaling.predict_flops}
    results = read_results(RUNS_DIR, [(run.name, run.holdout) for run in load_grid(scaling)])
    fit = fit_grid(results, bootstrap=scaling.bootstrap, seed=scaling.seed)
    recommendations = {text: recommend(fit.laws, flops=flops) for text, flops in budgets.items()}

    data = report(fit)
    write_json(REPORT, data)
    write_json(METRICS, headline(data, HEADLINE))
    write_text(OUT_DIR / "runs.tsv", runs_table(fit))
    write_text(OUT_DIR / "isoflop.tsv", isoflop_table(fit))
    plots.plot_isoflop(fit, OUT_DIR / "isoflop.png")
    plots.plot_frontier(fit, OUT_DIR / "frontier.png")
    plots.plot_predicted(fit, OUT_DIR / "predicted.png")
    write_json(RECOMMEND, {text: rec.to_dict() for text, rec in recommendations.items()})

    print(summary(fit))
    table = {f"{text} FLOPs": rec for text, rec in recommendations.items()}
    note = ""
    if scaling.predict_minutes:
        try:
            speed = speed_law(read_telemetry(TELEMETRY_DIR), fit.laws.sizes, str(TELEMETRY_DIR))
        except DataError as exc:  # the outputs are written: missing speeds only cost the minutes
            note = f"no wall-clock recommendation: {exc}"
        else:
            for minutes in scaling.predict_minutes:
                table[f"{minutes:g} min"] = recommend(fit.laws, seconds=60 * minutes, speed=speed)
            note = "wall-clock budgets: from the tokens/s the runs measured, for the machine they trained on alone"
    print("recommendations:")
    print(recommendation_table(table))
    if note:
        print(note)
    for warning in fit.warnings:  # last, where they are seen
        print(f"WARNING: {warning}")


if __name__ == "__main__":
    run_main(main)
