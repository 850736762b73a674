"""The scaling pipeline (scaling/dvc.yaml): its wiring, and end to end on a tiny grid in a temporary
repo: every run trained and fitted, runs forced to run again giving the same bytes, a new size
training only its own runs, a killed sweep continuing where it stopped, and a bad grid stopping
before any run starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from support_pipeline import (
    PLUMBING,
    TINY_TRAIN,
    Repo,
    environment,
    module_path,
    ran,
    stage_imports,
    write_plays,
)

ROOT = Path(__file__).resolve().parents[1]
SCALING_YAML = yaml.safe_load((ROOT / "scaling/dvc.yaml").read_text(encoding="utf-8"))
RESULT_KEYS = {
    "size", "n_layer", "n_head", "n_embd", "budget", "parameters", "flops_per_token", "tokens", "steps",
    "batch_size", "block_size", "flops", "val_loss", "val_bits_per_byte", "train_loss", "holdout",
}  # fmt: skip
# three sizes by three budgets of a 1-layer model on the generated plays: seconds a run
TINY_GRID = {
    "sizes": ["1x16x2", "1x32x2", "2x32x2"],
    # written as YAML 1.1 floats so that the tests' yaml.safe_dump quotes them, as params.yaml must
    "budgets": ["2.0e+9", "4.0e+9", "8.0e+9"],
    "holdout_budget": "8.0e+9",
    "min_steps": 5,
    "evals": 2,
    "dtype": None,
    "compile": None,
    "attention": None,
    "predict_flops": ["1e10"],
    "predict_minutes": [1.0],
    "bootstrap": 20,
}


def run_stage(size: str, budget: str) -> str:
    return f"scaling/dvc.yaml:run@{size}-{budget}"


def test_the_runs_are_a_matrix_of_the_params_sizes_and_budgets_run_from_the_root() -> None:
    run = SCALING_YAML["stages"]["run"]
    assert run["matrix"] == {"size": "${scaling.sizes}", "budget": "${scaling.budgets}"}
    assert run["wdir"] == ".." and run["outs"] == ["scaling/runs/${item.size}-${item.budget}"]
    # a run's own size and budget reach it through cmd, so that a new entry leaves the others' params alone
    assert "scaling.sizes" not in run["params"] and "scaling.budgets" not in run["params"]
    assert "--size ${item.size} --budget ${item.budget}" in run["cmd"]


def test_a_run_stage_lists_every_module_its_script_uses() -> None:
    modules, sections = stage_imports("scaling_run")
    run = SCALING_YAML["stages"]["run"]
    assert not sorted(module_path(m) for m in modules - PLUMBING if module_path(m) not in run["deps"])
    assert sections == {"scaling", "train", "evaluate"}


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("scaling")
    write_plays(base / "plays")
    repo = Repo(base / "repo", environment(base / "dvc-site"))
    repo.env["GPTCORE_CACHE_DIR"] = str(base / "autotune")
    repo.init()
    repo.copy_in(
        "dvc.yaml",
        "params.yaml",
        "stages",
        "gptcore",
        ".gitignore",
        ".dvcignore",
        "scaling/dvc.yaml",
        "scaling/.gitignore",
    )
    repo.edit_params("data", source=str(base / "plays"), include=["**/*.md"], val_fraction=0.2)
    repo.edit_params("vocab", vocab_size=300)
    repo.edit_params("train", **{**TINY_TRAIN, "compile": False, "dtype": "float32", "attention": "sdpa"})
    repo.edit_params("evaluate", train_tokens=2048)
    repo.edit_params("scaling", **TINY_GRID)
    repo.commit("pipeline")
    repo.dvc("repro", "tokenize")
    first = repo.dvc("repro", "scaling/dvc.yaml")
    repo.commit("the grid")
    return {"repo": repo, "first": first.stdout}


@pytest.mark.e2e
def test_every_size_trains_at_every_budget_for_the_flops_it_was_given(grid: dict[str, Any]) -> None:
    repo: Repo = grid["repo"]
    for size in TINY_GRID["sizes"]:
        for budget in TINY_GRID["budgets"]:
            assert ran(grid["first"], run_stage(size, budget))
            folder = repo.path / "scaling/runs" / f"{size}-{budget}"
            result = json.loads((folder / "result.json").read_text(encoding="utf-8"))
            assert set(result) == RESULT_KEYS
            assert result["size"] == size and result["budget"] == float(budget)
            assert result["holdout"] == (budget == TINY_GRID["holdout_budget"])
            step_flops = result["flops_per_token"] * result["batch_size"] * result["block_size"]
            assert result["flops"] <= float(budget) < result["flops"] + step_flops
            assert result["tokens"] == result["steps"] * result["batch_size"] * result["block_size"]
            assert 0 < result["val_loss"] < 6 and result["val_bits_per_byte"] > 0
            assert (folder / "model.pt").is_file() and (folder / "loss.tsv").read_text().startswith("step\t")
            # speed is telemetry, apart from the cached result
            told = repo.read_json(f"reports/telemetry/scaling/{size}-{budget}.json")
            assert told["tokens_per_second"] > 0 and "tokens_per_second" not in result
    # more compute, lower loss, for the smallest size (its runs differ only in length)
    smallest = [
        repo.read_json(f"scaling/runs/{TINY_GRID['sizes'][0]}-{b}/result.json")["val_loss"]
        for b in TINY_GRID["budgets"]
    ]
    assert smallest == sorted(smallest, reverse=True)
    assert json.loads(repo.dvc("status", "scaling/dvc.yaml", "--json").stdout) == {}


@pytest.mark.e2e
def test_forcing_runs_and_the_fit_to_run_again_leaves_their_lock_and_outputs_byte_identical(
    grid: dict[str, Any], tmp_path: Path
) -> None:
    # a fitted budget's run, the held-out budget's and the fit stand for the grid: every run is the
    # same code at another size and budget (tests/test_lock.py does this for the other pipelines)
    repo = grid["repo"].copy(tmp_path / "repo")
    runs = [
        f"{TINY_GRID['sizes'][0]}-{TINY_GRID['budgets'][0]}",
        f"{TINY_GRID['sizes'][-1]}-{TINY_GRID['holdout_budget']}",
    ]
    files = sorted(
        str(path.relative_to(repo.path))
        for run in runs
        for path in (repo.path / "scaling/runs" / run).rglob("*")
        if path.is_file()
    )
    assert len(files) >= 2 * 3  # model.pt, result.json and loss.tsv in each
    kept = ["scaling/dvc.lock", *files]
    before = {rel: (repo.path / rel).read_bytes() for rel in kept}
    for stage in [*(f"scaling/dvc.yaml:run@{run}" for run in runs), "scaling/dvc.yaml:fit"]:
        assert ran(repo.dvc("repro", "--force", "--single-item", stage).stdout, stage)
    assert {rel: (repo.path / rel).read_bytes() for rel in kept} == before
    changed = repo.run("git", "status", "--porcelain", "-uall").stdout.splitlines()
    assert sorted(line[3:] for line in changed) == sorted(
        f"reports/telemetry/scaling/{run}.{ext}" for run in runs for ext in ("json", "tsv")
    )
    assert json.loads(repo.dvc("status", "scaling/dvc.yaml", "--json").stdout) == {}


@pytest.mark.e2e
def test_a_new_size_trains_only_its_own_runs(grid: dict[str, Any], tmp_path: Path) -> None:
    repo = grid["repo"].copy(tmp_path / "repo")
    repo.edit_params("scaling", sizes=[*TINY_GRID["sizes"], "1x24x2"])
    again = repo.dvc("repro", "scaling/dvc.yaml").stdout
    trained = sorted(
        line.split("'")[1]
        for line in again.splitlines()
        if line.startswith("Running stage") and ":run@" in line
    )
    assert trained == sorted(run_stage("1x24x2", b) for b in TINY_GRID["budgets"])


@pytest.mark.e2e
def test_a_killed_sweep_continues_where_it_stopped(grid: dict[str, Any], tmp_path: Path) -> None:
    repo = grid["repo"].copy(tmp_path / "repo")
    repo.edit_params("scaling", budgets=[*TINY_GRID["budgets"][:-1], "5.0e+9", "8.0e+9"])  # three new runs
    new = [run_stage(size, "5.0e+9") for size in TINY_GRID["sizes"]]
    sweep = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro", "scaling/dvc.yaml"],
        cwd=repo.path,
        env=repo.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lock = repo.path / "scaling/dvc.lock"

    def finished(stage: str) -> bool:  # DVC records a stage in the lock once its outputs are cached
        return lock.exists() and f"{stage.split(':', 1)[1]}:" in lock.read_text(encoding="utf-8")

    deadline = time.monotonic() + 300
    second = f"--size {TINY_GRID['sizes'][1]} --budget 5"  # the run after the first new one
    pids: list[int] = []
    while not pids and sweep.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
        found = subprocess.run(["pgrep", "-f", "--", second], capture_output=True, text=True)
        pids = [int(pid) for pid in found.stdout.split()]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)  # the run dies mid-training, as on a lost machine or the OOM killer
    out, _ = sweep.communicate()
    assert pids and sweep.returncode != 0, out
    assert finished(new[0]) and not finished(new[1]) and not finished(new[-1])
    again = repo.dvc("repro", "scaling/dvc.yaml").stdout
    assert not ran(again, new[0])  # done before the kill: kept
    assert ran(again, new[-1])  # not started before the kill: trained now
    assert json.loads(repo.dvc("status", "scaling/dvc.yaml", "--json").stdout) == {}


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"sizes": [*TINY_GRID["sizes"], "1x30x4"]}, "1x30x4: 4 heads do not divide the width 30"),
        ({"budgets": ["1.0e+6", "2.0e+9", "8.0e+9"]}, "1x16x2-1.0e+6: the budget buys 0 steps"),
    ],
)
def test_a_bad_grid_entry_is_named_before_any_run_starts(
    grid: dict[str, Any], tmp_path: Path, changes: dict[str, Any], named: str
) -> None:
    repo = grid["repo"].copy(tmp_path / "repo")
    repo.edit_params("scaling", **changes)
    before = sorted(p.name for p in (repo.path / "scaling/runs").iterdir())
    failed = repo.dvc("repro", "scaling/dvc.yaml", check=False)
    assert failed.returncode != 0
    assert named in failed.stdout + failed.stderr
    assert sorted(p.name for p in (repo.path / "scaling/runs").iterdir()) == before
