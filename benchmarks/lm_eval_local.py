"""Multiple-choice items scored by EleutherAI's lm-evaluation-harness (`lm_eval` 0.4.13), offline, on
local files: the reference gptcore's own scorer is checked against (acc, acc_norm and each choice's
log-likelihood) and timed against (items/s).

Input, per task (what our side produces):

    {"doc_id": int, "requests": [[context, continuation], ...], "gold": int}

Each task is written under `work` as a JSONL file and a task YAML (dataset_path: json) that hand
the harness our strings unchanged: no fewshot examples, no description, `target_delimiter: ""`, and
every field read by its feature name, so no Jinja template touches the text. The model is the
harness's own `hf` backend (HFLM) on a local transformers folder.

Two shapes of item are accepted, as the harness builds them (lm_eval/api/task.py):

- one context, one continuation per choice (hellaswag, arc, piqa): doc_to_text gives the context,
  doc_to_choice the continuations; acc_norm divides each ll by its continuation's characters;
- one continuation, one context per choice (winogrande's partial scoring): the harness's
  "multiple input" form, doc_to_text gives the gold index and doc_to_choice the contexts. There
  acc_norm divides by each *context's* characters, not the continuation's (the harness's rule).

What the hf backend does with a (context, continuation) pair (lm_eval/api/model.py `_encode_pair`,
lm_eval/models/huggingface.py `_loglikelihood_tokens`), which a scorer that is to agree must copy:

- whitespace at the end of the context moves to the front of the continuation before encoding;
- whole = encode(context + continuation), ctx = encode(context), continuation = whole[len(ctx):]:
  a merge across the boundary lands in the continuation;
- encode() keeps the tokenizer's `add_special_tokens` default: a BOS only where the tokenizer's
  post-processor adds one (a Llama tokenizer's does; GPT-2's and gptcore's exports do not);
- an empty context becomes [BOS id, else EOS id];
- input = (ctx + continuation)[-(max_length + 1):][:-1], right-padded, no attention mask, where
  max_length is the config's n_positions, max_position_embeddings or n_ctx, else the tokenizer's
  model_max_length, else 2048; log-softmax in the model's dtype.

Offline (`set_offline`): HF_HUB_OFFLINE, HF_DATASETS_OFFLINE and TRANSFORMERS_OFFLINE are set, and
HF_HOME and HF_DATASETS_CACHE point under `work`, before lm_eval is imported. The libraries read
these once, at import, so for a process that imported them earlier the two module flags they
consult at call time are set as well, and the dataset cache is passed to load_dataset as
`cache_dir`. The model is named by its absolute path (a relative one can parse as a Hub repo id),
and the evaluator API is called directly: `simple_evaluate` also asks the Hub for the model's sha.

    gptcore export --out /tmp/hf   # any transformers folder will do
    python benchmarks/lm_eval_local.py --model /tmp/hf --items items.json --work /tmp/lm_eval
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import yaml

# The harness's default metric for these tasks, spelled out so a version change cannot swap it.
METRICS = [
    {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
    {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
]


def set_offline(work: Path) -> None:
    """Point the Hugging Face libraries at `work` and forbid the network, for the rest of the process.

    The variables take effect in libraries imported after this call: they are read once, at
    import. For libraries imported earlier, the flags they consult at call time are set too;
    without that, datasets sends a HEAD request to S3 (a download count) on every load_dataset."""
    hf_home = work / "hf_home"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["HF_HOME"] = str(hf_home)
    os.environ["HF_DATASETS_CACHE"] = str(hf_home / "datasets")
    import datasets.config
    import huggingface_hub.constants

    datasets.config.HF_HUB_OFFLINE = True
    huggingface_hub.constants.HF_HUB_OFFLINE = True


def task_rows(name: str, items: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The YAML fields that say where each string is, and one dataset row per item.

    Each row keeps `row` (its position in `items`), because the harness may hand samples back in
    any order and our doc_ids need not be 0..n-1."""
    if not items:
        raise ValueError(f"{name}: no items")
    contexts = [{c for c, _ in item["requests"]} for item in items]
    continuations = [{c for _, c in item["requests"]} for item in items]
    for item in items:
        if not 0 <= item["gold"] < len(item["requests"]):
            raise ValueError(f"{name}: doc_id {item['doc_id']}: gold {item['gold']} is not a choice index")
    if all(len(c) == 1 for c in contexts):
        fields = {"doc_to_text": "context", "doc_to_choice": "choices", "doc_to_target": "gold"}
        rows = [
            {
                "row": row,
                "doc_id": item["doc_id"],
                "context": item["requests"][0][0],
                "choices": [cont for _, cont in item["requests"]],
                "gold": item["gold"],
            }
            for row, item in enumerate(items)
        ]
    elif all(len(c) == 1 for c in continuations):
        # The harness's "multiple input" form: an int from doc_to_text is the gold index, and each
        # choice is a context scored with the one continuation doc_to_target gives.
        fields = {"doc_to_text": "gold", "doc_to_choice": "contexts", "doc_to_target": "continuation"}
        rows = [
            {
                "row": row,
                "doc_id": item["doc_id"],
                "contexts": [ctx for ctx, _ in item["requests"]],
                "continuation": item["requests"][0][1],
                "gold": item["gold"],
            }
            for row, item in enumerate(items)
        ]
    else:
        raise ValueError(
            f"{name}: an item's requests must share either their context or their continuation "
            "(the two forms lm_eval's multiple_choice can express)"
        )
    return fields, rows


def write_task(name: str, items: list[dict[str, Any]], work: Path) -> None:
    """`work`/<name>.jsonl and `work`/<name>.yaml: a task the TaskManager finds by scanning `work`."""
    fields, rows = task_rows(name, items)
    data = (work / f"{name}.jsonl").resolve()
    with data.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    config = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {
            "data_files": {"test": str(data)},
            "cache_dir": str((work / "hf_home" / "datasets").resolve()),
            # the file is rewritten on every call: never reuse an Arrow copy of an older one
            "download_mode": "force_redownload",
        },
        "test_split": "test",
        "output_type": "multiple_choice",
        **fields,
        "target_delimiter": "",  # our continuations carry their own leading space
        "fewshot_delimiter": "",
        "description": "",
        "num_fewshot": 0,
        "metric_list": METRICS,
        "metadata": {"version": 0},
    }
    (work / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))


def score_with_lm_eval(
    model_dir: Path,
    tasks: dict[str, list[dict[str, Any]]],
    work: Path,
    batch_size: int = 32,
    device: str = "cpu",
    dtype: str = "float32",
) -> dict[str, dict[str, Any]]:
    """Score every task's items with lm_eval's hf backend on the transformers folder `model_dir`.

    Returns, per task: acc and acc_norm (the harness's own figures), items, loglikelihoods (one
    list per item, one ll per request, both in input order) and seconds (the harness's evaluation
    of that task: building requests, running the model, metrics; not loading the model or data).
    """
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    set_offline(work)
    # Imported here, after set_offline: the Hugging Face libraries read its variables at import.
    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    for name, items in tasks.items():
        write_task(name, items, work)
    lm = HFLM(pretrained=str(Path(model_dir).resolve()), device=device, dtype=dtype, batch_size=batch_size)
    # include_defaults=False: our task names shadow the built-in hellaswag, piqa, ..., and
    # scanning the harness's thousands of YAMLs takes seconds.
    manager = TaskManager(include_path=str(work), include_defaults=False)

    scores = {}
    for name, items in tasks.items():
        loaded = manager.load([name])
        start = time.perf_counter()
        # bootstrap_iters=0: no stderr resampling, which would dominate the time of small tasks
        out = evaluate(lm=lm, task_dict=loaded, bootstrap_iters=0, log_samples=True)
        seconds = time.perf_counter() - start
        if out is None:
            raise RuntimeError("lm_eval returned no results (not rank 0?)")
        metrics = out["results"][name]
        lls: list[list[float] | None] = [None] * len(items)
        for sample in out["samples"][name]:
            # filtered_resps: one (loglikelihood, is_greedy) per request of the doc, in request order
            lls[sample["doc"]["row"]] = [float(ll) for ll, _ in sample["filtered_resps"]]
        missing = [items[row]["doc_id"] for row, ll in enumerate(lls) if ll is None]
        if missing:
            raise RuntimeError(f"{name}: lm_eval returned no sample for doc_ids {missing[:10]}")
        scores[name] = {
            "acc": float(metrics["acc,none"]),
            "acc_norm": float(metrics["acc_norm,none"]),
            "items": len(items),
            "loglikelihoods": lls,
            "seconds": seconds,
        }
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a transformers model folder")
    parser.add_argument("--items", type=Path, required=True, help="JSON: task name -> list of items")
    parser.add_argument("--work", type=Path, required=True, help="folder for task files and caches")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()

    tasks = json.loads(args.items.read_text(encoding="utf-8"))
    scores = score_with_lm_eval(args.model, tasks, args.work, args.batch_size, args.device, args.dtype)
    for name, s in scores.items():
        print(
            f"{name}: {s['items']} items, acc {s['acc']:.4f}, acc_norm {s['acc_norm']:.4f}, "
            f"{s['seconds']:.2f} s, {s['items'] / s['seconds']:.1f} items/s"
        )
    n = sum(s["items"] for s in scores.values())
    seconds = sum(s["seconds"] for s in scores.values())
    print(f"all: {n} items in {seconds:.2f} s, {n / seconds:.1f} items/s")


if __name__ == "__main__":
    main()
