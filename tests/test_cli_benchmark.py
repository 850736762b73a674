"""`gptcore benchmark`: any model gptcore loads, scored on a suite's tasks, with the stage's JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from support_benchmark import SuiteTask, choice_item, continuation_item, write_wheel
from support_cli import run_cli
from support_models import save_tiny_model

from gptcore.benchmark.report import headline, run_tasks
from gptcore.benchmark.suite import Suite
from gptcore.checkpoint import load_model
from gptcore.cli import main
from gptcore.hf.convert import export_folder

TASKS = {
    "hellaswag/rc_0shot": SuiteTask(
        [
            choice_item(f"the {w} sat on the", [" mat.", " hat.", " dog.", " log."], i % 4)
            for i, w in enumerate("abcdefgh")
        ]
    ),
    "hellaswag/rc_5shot": SuiteTask([choice_item("five shots: the cat", [" sat.", " ran."], 0)] * 3),
    "piqa/rc_0shot": SuiteTask(
        [choice_item(f"Goal: {w}\nAnswer:", [" do it the long way round", " no"], 1) for w in "pqrstu"],
        primary="acc_raw",
    ),
    "lambada/bpb_0shot": SuiteTask(
        [continuation_item(f"the {w} and the", " end") for w in "xyz"],
        primary="logits_per_byte",
        uncond=False,
    ),
}


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """models/model.pt and data/benchmarks/<the suite>.whl in a temp folder, the current folder."""
    save_tiny_model(tmp_path / "models" / "model.pt")
    write_wheel(tmp_path / "data" / "benchmarks" / "suite-0.0.0-py3-none-any.whl", TASKS)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_out_holds_the_same_json_as_the_stage_and_the_table_lists_every_task(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(
        [
            "benchmark",
            "--tasks",
            "hellaswag,piqa,lambada",
            "--limit",
            "5",
            "--out",
            "r.json",
            "--items",
            "i.jsonl",
        ]
    )
    printed = capsys.readouterr().out
    written = json.loads(Path("r.json").read_text(encoding="utf-8"))
    model, tokenizer, _ = load_model(workdir / "models" / "model.pt")
    with Suite(workdir / "data" / "benchmarks") as suite:
        expected = headline(
            run_tasks(model, tokenizer, suite, ["hellaswag", "piqa", "lambada"], 5, 64, torch.device("cpu"))
        )
    assert written == expected
    assert set(written) == {"core", "hellaswag", "piqa", "lambada"}
    assert set(written["lambada"]) == {"acc", "bits_per_byte"}
    for task in ("hellaswag", "piqa", "lambada"):
        assert any(line.startswith(task) for line in printed.splitlines()), printed
    assert "core" in printed
    items = [json.loads(line) for line in Path("i.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(r["task"], r["doc_id"]) for r in items] == [
        *(("hellaswag", i) for i in range(5)),
        *(("piqa", i) for i in range(5)),
        *(("lambada", i) for i in range(3)),
    ]


def test_a_hugging_face_folder_scores_as_its_model_file(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, tokenizer, _ = load_model(workdir / "models" / "model.pt")
    export_folder(model, tokenizer, workdir / "hf")
    main(["benchmark", "--tasks", "hellaswag:5shot,piqa", "--out", "file.json"])
    main(["benchmark", "--model", "hf", "--tasks", "hellaswag:5shot,piqa", "--out", "folder.json"])
    capsys.readouterr()
    from_file, from_folder = (
        json.loads(Path(n).read_text(encoding="utf-8")) for n in ("file.json", "folder.json")
    )
    assert set(from_file) == {"core", "hellaswag:rc_5shot", "piqa"}
    for task in ("hellaswag:rc_5shot", "piqa"):
        for metric, value in from_file[task].items():
            assert from_folder[task][metric] == pytest.approx(value, abs=1e-9)


def test_tasks_and_limit_default_to_params_yaml(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    section = {"source": "unused", "tasks": ["piqa"], "limit": 2, "batch_size": 4, "dtype": "float32"}
    Path("params.yaml").write_text(yaml.safe_dump({"benchmark": section}), encoding="utf-8")
    main(["benchmark", "--out", "r.json", "--items", "i.jsonl"])
    capsys.readouterr()
    assert set(json.loads(Path("r.json").read_text(encoding="utf-8"))) == {"core", "piqa"}
    assert len(Path("i.jsonl").read_text(encoding="utf-8").splitlines()) == 2


def test_list_names_the_tasks_and_their_default_variants(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["benchmark", "--list"])
    printed = capsys.readouterr().out.splitlines()
    assert "hellaswag: rc_0shot (default), rc_5shot" in printed
    assert "lambada: bpb_0shot (default)" in printed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tasks", "hellaswag,nosuch"], "unknown benchmark task 'nosuch'"),
        (["--tasks", "piqa:3shot"], "has no single 3shot variant"),
        (["--tasks", "piqa", "--model", "missing.pt"], "no model at missing.pt"),
        (["--tasks", "piqa", "--suite", "nowhere"], "no benchmark suite at nowhere"),
        (["--tasks", "piqa", "--items", "i.jsonl"], "--items needs --out"),
        (["--tasks", "piqa", "--model", "data"], "data/config.json not found: a Hugging Face model folder"),
    ],
)
def test_bad_input_fails_with_a_message_and_writes_nothing(
    workdir: Path, args: list[str], message: str
) -> None:
    proc = run_cli(
        ["benchmark", *args, "--out", "r.json"] if "--items" not in args else ["benchmark", *args], workdir
    )
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not Path("r.json").exists() and not Path("i.jsonl").exists()


def test_an_unknown_task_lists_the_suites_tasks(workdir: Path) -> None:
    proc = run_cli(["benchmark", "--tasks", "nosuch"], workdir)
    assert proc.returncode != 0
    assert "hellaswag, lambada, piqa" in proc.stderr


def test_limit_and_batch_size_must_be_positive(workdir: Path) -> None:
    for flag in ("--limit", "--batch-size"):
        proc = run_cli(["benchmark", "--tasks", "piqa", flag, "0"], workdir)
        assert proc.returncode == 2
        assert "'0' is not a positive whole number" in proc.stderr


def test_a_folder_of_an_unsupported_architecture_says_so(workdir: Path) -> None:
    (workdir / "bert").mkdir()
    (workdir / "bert" / "config.json").write_text('{"model_type": "bert"}', encoding="utf-8")
    proc = run_cli(["benchmark", "--tasks", "piqa", "--model", "bert", "--out", "r.json"], workdir)
    assert proc.returncode != 0
    assert "architecture bert is not supported" in proc.stderr
    assert not (workdir / "r.json").exists()


def test_bfloat16_autocast_scores_close_to_float32(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["benchmark", "--tasks", "hellaswag", "--out", "fp32.json", "--items", "fp32.jsonl"])
    main(
        [
            "benchmark",
            "--tasks",
            "hellaswag",
            "--dtype",
            "bfloat16",
            "--out",
            "bf16.json",
            "--items",
            "bf16.jsonl",
        ]
    )
    capsys.readouterr()
    fp32, bf16 = (
        [json.loads(line) for line in Path(name).read_text(encoding="utf-8").splitlines()]
        for name in ("fp32.jsonl", "bf16.jsonl")
    )
    # bf16 rounds every matmul: the log-likelihoods move, by far less than they differ between choices
    for a, b in zip(fp32, bf16, strict=True):
        assert a["loglikelihoods"] != b["loglikelihoods"] or a["loglikelihoods"] == []
        assert b["loglikelihoods"] == pytest.approx(a["loglikelihoods"], rel=0.05, abs=0.05)


def test_out_and_items_replace_only_an_earlier_result(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["benchmark", "--tasks", "piqa", "--limit", "2", "--out", "r.json", "--items", "i.jsonl"])
    main(["benchmark", "--tasks", "piqa", "--limit", "3", "--out", "r.json", "--items", "i.jsonl"])
    capsys.readouterr()
    assert len(Path("i.jsonl").read_text(encoding="utf-8").splitlines()) == 3  # the second run's
    mine = {"notes.json": '{"mine": 1}\n', "notes.txt": "my notes\n"}
    for name, text in mine.items():
        Path(name).write_text(text, encoding="utf-8")
        for args in (["--out", name], ["--out", "r.json", "--items", name]):
            proc = run_cli(["benchmark", "--tasks", "piqa", *args], workdir)
            assert proc.returncode == 1, proc.stderr
            assert f"{name} exists and is not an earlier result of gptcore benchmark" in proc.stderr
            assert Path(name).read_text(encoding="utf-8") == text
    proc = run_cli(["benchmark", "--tasks", "piqa", "--out", "models"], workdir)
    assert proc.returncode == 1 and "--out models is not a file" in proc.stderr
    proc = run_cli(["benchmark", "--tasks", "piqa", "--out", "r.json", "--items", "./r.json"], workdir)
    assert proc.returncode == 1 and "--out and --items name the same file" in proc.stderr
    assert len(Path("i.jsonl").read_text(encoding="utf-8").splitlines()) == 3
