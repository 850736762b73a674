"""The fine-tuning pipeline (finetune/dvc.yaml): its wiring, and end to end on a tiny pretrained
model in a temporary repo: `dvc repro finetune/dvc.yaml`, an experiment, the CLI on its models,
and a bad labelled file that stops it with nothing half-written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image
from support_pipeline import (
    GENRES,
    PLUMBING,
    STAGES,
    TINY_TRAIN,
    Repo,
    environment,
    module_path,
    ran,
    stage_imports,
    unchanged,
    write_plays,
)

ROOT = Path(__file__).resolve().parents[1]
FINETUNE_YAML = yaml.safe_load((ROOT / "finetune/dvc.yaml").read_text(encoding="utf-8"))
FINETUNE_STAGES = ["classify_data", "classify", "instruct_data", "instruct"]


def test_finetune_pipeline_is_its_own_and_runs_from_the_root() -> None:
    assert list(FINETUNE_YAML["stages"]) == FINETUNE_STAGES
    main = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))
    assert list(main["stages"]) == STAGES  # the main pipeline stays the seven pretraining stages
    for stage, spec in FINETUNE_YAML["stages"].items():
        assert spec["wdir"] == ".." and spec["cmd"] == f"python -m stages.{stage}"


@pytest.mark.parametrize("stage", FINETUNE_STAGES)
def test_finetune_stage_deps_and_params_match_what_its_script_uses(stage: str) -> None:
    modules, sections = stage_imports(stage)
    spec = FINETUNE_YAML["stages"][stage]
    assert not sorted(module_path(m) for m in modules - PLUMBING if module_path(m) not in spec["deps"])
    assert set(spec["params"]) == sections


@pytest.fixture(scope="module")
def finetune_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("finetune")
    corpus = base / "plays"
    write_plays(corpus)
    repo = Repo(base / "repo", environment(base / "dvc-site"))
    repo.init()
    repo.copy_in("dvc.yaml", "params.yaml", "stages", "gptcore", ".gitignore", ".dvcignore", "finetune")
    repo.edit_params("data", source=str(corpus), include=["**/*.md"], val_fraction=0.2)
    repo.edit_params("vocab", vocab_size=300)
    repo.edit_params("train", **{**TINY_TRAIN, "block_size": 192})  # the Alpaca prompt is long
    repo.edit_params("evaluate", train_tokens=2048)
    repo.edit_params("sample", max_new_tokens=10)
    repo.edit_params("classify_data", passage_chars=120, passages_per_play=8)
    repo.edit_params("classify", epochs=2, batch_size=8, eval_interval=3, learning_rate=3.0e-3, threads=1)
    repo.edit_params("instruct_data", records_per_play=6, max_chars=60)
    repo.edit_params(
        "instruct", epochs=1, batch_size=4, eval_interval=2, samples=2, max_new_tokens=8, threads=1
    )
    repo.commit("pipeline")
    main = repo.dvc("repro")
    first = repo.dvc("repro", "finetune/dvc.yaml")
    second = repo.dvc("repro", "finetune/dvc.yaml")
    repo.commit("fine-tuned")
    return {"repo": repo, "main": main.stdout, "first": first.stdout, "second": second.stdout}


@pytest.fixture
def finetuned(finetune_run: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """`finetune_run`, for one test to read: it fails a test that changed the repository."""
    with unchanged(finetune_run["repo"]):
        yield finetune_run


@pytest.mark.e2e
def test_plain_repro_runs_only_pretraining_and_the_finetune_command_runs_the_rest(
    finetuned: dict[str, Any],
) -> None:
    assert all(ran(finetuned["main"], stage) for stage in STAGES)
    assert not any(f"finetune/dvc.yaml:{stage}" in finetuned["main"] for stage in FINETUNE_STAGES)
    first = finetuned["first"]
    assert all(f"Running stage 'finetune/dvc.yaml:{stage}'" in first for stage in FINETUNE_STAGES), first
    assert not any(ran(first, stage) for stage in STAGES)  # the pretrained model is reused
    assert "Data and pipelines are up to date" in finetuned["second"]


@pytest.mark.e2e
def test_classifier_reports_metrics_baseline_and_confusion(finetuned: dict[str, Any]) -> None:
    repo: Repo = finetuned["repo"]
    data = repo.read_json("reports/classify_data.json")
    assert data["labels"] == list(GENRES)
    for split in ("val", "test"):  # one play of each genre, none of them trained on
        assert len(data["plays"][split]) == 3
    report = repo.read_json("reports/classify.json")
    assert report["train_examples"] == data["train"]["examples"] == 3 * 8
    test = report["test"]
    assert test["examples"] == data["test"]["examples"]
    assert 0.0 <= test["accuracy"] <= 1.0 and 0.0 <= test["macro_f1"] <= 1.0
    assert test["majority_baseline_accuracy"] == pytest.approx(1 / 3, abs=1e-3)  # balanced test plays
    assert set(test["per_class"]) == set(GENRES)
    rows = repo.read_json("reports/classify_confusion.json")["test"]
    assert len(rows) == test["examples"]
    correct = sum(r["actual"] == r["predicted"] for r in rows)
    assert correct / len(rows) == pytest.approx(test["accuracy"], abs=1e-4)
    with Image.open(repo.path / "reports/classify_confusion.png") as image:
        assert image.format == "PNG"


@pytest.mark.e2e
def test_instruct_reports_base_and_finetuned_response_loss_and_samples(finetuned: dict[str, Any]) -> None:
    repo: Repo = finetuned["repo"]
    report = repo.read_json("reports/instruct.json")
    assert report["template"] == "alpaca" and report["test_response_tokens"] > 0
    assert 0 < report["test_response_loss"] < report["base_test_response_loss"]
    samples = (repo.path / "reports/instruct_samples.md").read_text(encoding="utf-8")
    assert samples.count("Reference:") == 2 and samples.count("Model:") == 2
    test_records = (repo.path / "data/finetune/instruct/test.jsonl").read_text(encoding="utf-8").splitlines()
    assert f"## 1. {json.loads(test_records[0])['instruction']}" in samples


@pytest.mark.e2e
def test_metrics_and_plots_show_include_the_finetuning_results(
    finetuned: dict[str, Any], tmp_path: Path
) -> None:
    repo: Repo = finetuned["repo"]
    metrics = json.loads(repo.dvc("metrics", "show", "--json").stdout)[""]["data"]
    assert {"reports/classify_metrics.json", "reports/instruct_metrics.json", "reports/eval.json"} <= set(
        metrics
    )
    assert not {"reports/classify.json", "reports/instruct.json"} & set(metrics)  # details: out of the table
    classify = repo.read_json("reports/classify.json")
    assert metrics["reports/classify_metrics.json"]["data"]["test"] == {
        k: classify["test"][k] for k in ("accuracy", "macro_f1")
    }
    assert (
        metrics["reports/instruct_metrics.json"]["data"]["test_response_loss"]
        == (repo.read_json("reports/instruct.json")["test_response_loss"])
    )
    # -o: the image plots are copied there, not into the repository's dvc_plots/
    shown = json.loads(repo.dvc("plots", "show", "--json", "-o", str(tmp_path / "plots")).stdout)["data"]
    names = set(shown)
    assert {"finetune/dvc.yaml::classify_loss", "finetune/dvc.yaml::instruct_loss"} <= names or {
        "classify_loss",
        "instruct_loss",
    } <= names, names
    confusion = [plots for name, plots in shown.items() if name.endswith("classify_confusion.json")]
    assert confusion and confusion[0][0]["type"] == "vega"
    assert any(name.endswith("classify_confusion.png") for name in names)


@pytest.mark.e2e
def test_the_cli_uses_the_finetuned_models(finetuned: dict[str, Any]) -> None:
    repo: Repo = finetuned["repo"]
    gptcore = [sys.executable, "-m", "gptcore.cli"]
    out = repo.run(*gptcore, "classify", "The king and the crown").stdout.splitlines()
    assert out[0] in GENRES and len(out) == 1 + len(GENRES)
    chat = subprocess.run(
        [*gptcore, "chat", "--model", "models/instruct.pt", "--max-new-tokens", "5", "--seed", "1"],
        cwd=repo.path,
        env=repo.env,
        input="Reply as BEN to ANNE.\n",
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Prompt template alpaca" in chat.stderr


@pytest.mark.e2e
def test_exp_run_trains_the_classifier_from_random_weights(finetuned: dict[str, Any], tmp_path: Path) -> None:
    repo = finetuned["repo"].copy(tmp_path / "repo")
    before = repo.read_json("reports/classify.json")
    proc = repo.dvc("exp", "run", "finetune/dvc.yaml", "-n", "random-init", "-S", "classify.init=random")
    assert "Running stage 'finetune/dvc.yaml:classify'" in proc.stdout
    for stage in ("classify_data", "instruct_data", "instruct"):
        assert f"Running stage 'finetune/dvc.yaml:{stage}'" not in proc.stdout
    after = repo.read_json("reports/classify.json")
    assert after["init"] == "random" and before["init"] == "pretrained"
    assert after["test"] != before["test"] or after["val"] != before["val"]


@pytest.mark.e2e
def test_a_one_class_file_stops_classify_data_with_nothing_written(
    finetuned: dict[str, Any], tmp_path: Path
) -> None:
    repo = Repo(tmp_path / "repo", finetuned["repo"].env)
    shutil.copytree(finetuned["repo"].path, repo.path, symlinks=True)
    shutil.rmtree(repo.path / "data/finetune/classify")
    labelled = repo.path / "spam.tsv"
    labelled.write_text("".join(f"ham\tmessage number {i}\n" for i in range(30)), encoding="utf-8")
    repo.edit_params("classify_data", source="spam.tsv", text_column=1, label_column=0)
    proc = repo.dvc("repro", "finetune/dvc.yaml", check=False)
    assert proc.returncode != 0
    assert "spam.tsv: a classifier needs at least two classes in its training split, found ['ham']" in (
        proc.stdout + proc.stderr
    )
    left = sorted(p.name for p in (repo.path / "data/finetune").iterdir())
    assert "classify" not in left and not [n for n in left if n.endswith(".tmp")]
