"""`gptcore info`: parameters, FLOPs, precision and memory of a model or of params.yaml's train section."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import yaml

from gptcore.checkpoint import MODEL_FILE
from gptcore.cli.flags import DEFAULT_PARAMS, params_file_of
from gptcore.data.disk import plan_disk
from gptcore.device import resolve_device
from gptcore.errors import DataError
from gptcore.finetune import lora
from gptcore.hf.convert import load_any
from gptcore.memory import MemoryPlan, Sizes, device_memory, human_bytes, plan_memory
from gptcore.model import GPT, flops_per_token, meta_device
from gptcore.params import FinetuneParams, TrainParams, load_section
from gptcore.tokenizer import load_tokenizer
from gptcore.train import RunPlan, plan_run, planned_config, torch_threads

VOCAB_DIR = Path("data/vocab")
# Tokens given to a model whose vocabulary is not built yet: a byte-level alphabet, the size of
# a char vocabulary of a mostly-ASCII corpus rounded up; only the embedding rows depend on it.
PLACEHOLDER_VOCAB_SIZE = 256


def _flops(n: float) -> str:
    for unit, size in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if n >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n:,.0f} FLOP"


def _scalar(value: object) -> str:
    """A meta value as text; "" for containers, which info leaves out."""
    if isinstance(value, (bool, str)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.6g}"
    return ""


def _table(rows: Sequence[tuple[str, str]]) -> str:
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}".rstrip() for label, value in rows)


def _vocab_from_folder() -> tuple[int, str]:
    """(vocab size, how it was found) from data/vocab, or the placeholder when there is none."""
    if not (VOCAB_DIR / "tokenizer.json").is_file():
        return PLACEHOLDER_VOCAB_SIZE, (
            f"{PLACEHOLDER_VOCAB_SIZE} (placeholder: vocabulary unknown, {VOCAB_DIR}/tokenizer.json not found; "
            "run dvc repro build_vocab)"
        )
    tokenizer = load_tokenizer(VOCAB_DIR)
    return tokenizer.vocab_size, f"{tokenizer.vocab_size} ({tokenizer.kind} tokenizer in {VOCAB_DIR})"


def cmd_info(args: argparse.Namespace) -> None:
    params_file = params_file_of(args)
    train: TrainParams | None = load_section("train", params_file) if params_file else None
    model_path = args.model if args.model is not None else (MODEL_FILE if MODEL_FILE.is_file() else None)
    rows: list[tuple[str, str]] = []
    if model_path is not None:
        model, tokenizer, meta = load_any(model_path, "cpu")
        config = model.config
        rows.append(("model file", str(model_path)))
        # small facts the training run recorded (steps, tokens seen, losses)
        rows += [(f"  {key}", _scalar(value)) for key, value in sorted(meta.items()) if _scalar(value)]
        rows.append(("tokenizer", f"{tokenizer.kind}, {tokenizer.vocab_size} tokens"))
    else:
        if train is None:
            raise DataError(
                f"no model file ({MODEL_FILE} not found) and no {DEFAULT_PARAMS} to size a model from"
            )
        vocab_size, vocab_note = _vocab_from_folder()
        config = planned_config(train, vocab_size)
        # the meta device builds the modules without allocating their weights: exact counts, no memory
        with meta_device():
            model = GPT(config)
        rows.append(("model file", f"none ({MODEL_FILE} not found): sizes from {params_file} train section"))
        rows.append(("vocab_size", vocab_note))

    total = model.num_params(non_embedding=False)
    non_embedding = model.num_params(non_embedding=True)
    rows.append(("config", " ".join(f"{k}={v}" for k, v in config.to_dict().items())))
    rows.append(("parameters (total)", f"{total:,}"))
    rows.append(
        ("parameters (non-embedding)", f"{non_embedding:,} (position table left out; FLOPs use this)")
    )
    fpt_train = flops_per_token(config, non_embedding, training=True)
    fpt_forward = flops_per_token(config, non_embedding, training=False)
    rows.append(("FLOPs per token (training)", f"{fpt_train:,} ({_flops(fpt_train)})"))
    rows.append(("FLOPs per token (forward)", f"{fpt_forward:,} ({_flops(fpt_forward)})"))
    rows.append(("weights (fp32)", f"{4 * total:,} bytes ({human_bytes(4 * total)})"))
    if train is None:
        rows.append(("memory plan", f"unknown: no {DEFAULT_PARAMS} to read train.batch_size from"))
    else:
        tokens_per_step = train.batch_size * config.block_size * train.grad_accum_steps
        rows.append(
            (
                "FLOPs per optimizer step",
                f"{_flops(fpt_train * tokens_per_step)} ({tokens_per_step:,} tokens)",
            )
        )
        if train.preset:
            rows.append(("preset", train.preset))
        device = resolve_device(train.device)
        threads = torch_threads(train, train.nproc_per_node)
        if threads:  # the autotune cache is keyed by the thread count a training process runs with
            torch.set_num_threads(threads)
        # the plan a training run builds (gptcore.train.plan_run), for this model
        plan = plan_run(train, config.vocab_size, device, config=config, measure=args.measure, check=False)
        first, *candidates = _precision_rows(train, plan)
        rows.append(("precision (dtype, compile, attention)", first))
        rows += [("", line) for line in candidates]
        rows += plan.memory.rows()
    if params_file is not None:
        rows += _finetune_rows(model, params_file)
        rows += _disk_rows(params_file)
    print(_table(rows))


def finetune_plan(
    model: GPT, params: FinetuneParams, method: str, batch_size: int, available: int | None, where: str
) -> MemoryPlan:
    """The memory plan of instruction fine-tuning `model` by `method` (full: every weight trains;
    lora: the adapters `params` names alone, with what they keep for the backward pass)."""
    sizes = Sizes.of(model.config)
    if method == "full":
        return plan_memory(
            model.config, batch_size, available=available, where=where, sizes=sizes, trainable=sizes.total
        )
    modules = lora.target_modules(model, params.lora_targets, "all", "instruct.lora_targets")
    adapters = lora.adapter_parameters(model, modules, params.lora_rank)
    return plan_memory(
        model.config,
        batch_size,
        available=available,
        where=where,
        sizes=sizes,
        trainable=adapters,
        adapters=adapters,
        adapter_per_token=lora.activation_bytes_per_token(
            model, modules, params.lora_rank, params.lora_dropout
        ),
    )


def _finetune_rows(model: GPT, params_file: Path) -> list[tuple[str, str]]:
    """The memory plan of instruction fine-tuning this model with the params file's instruct
    section, for both methods: every weight trained, or LoRA adapters alone (what a classifier
    trains is the same, plus its head of n_embd + 1 parameters a class)."""
    sections = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    if not isinstance(sections, dict) or "instruct" not in sections:
        return []  # a file of the train section alone
    params = load_section("instruct", params_file)
    config = model.config
    available, where = device_memory(resolve_device(params.device))
    rows = []
    for method in ("full", "lora"):
        chosen = "the params' method; " if method == params.method else ""
        plan = finetune_plan(model, params, method, params.batch_size, available, where)
        if method == "full":
            what = "every weight trains"
        else:
            what = f"rank {params.lora_rank} adapters on {', '.join(params.lora_targets)} of {config.n_layer} blocks"
        (_, setting), *plan_rows = plan.rows()
        rows.append((f"fine-tuning plan (instruct, method: {method})", f"{chosen}{what}; {setting}"))
        rows += plan_rows
    return rows


def _disk_rows(params_file: Path) -> list[tuple[str, str]]:
    """The disk the data stages will need for the params file's corpus and vocabulary, in the
    repository here (its data/ and .dvc/config); a warning on stderr when it does not fit."""
    sections = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    if not isinstance(sections, dict) or not {"data", "vocab"} <= set(sections):
        return []  # a file of the train section alone
    plan = plan_disk(load_section("data", params_file), load_section("vocab", params_file))
    if plan.fits() is False:
        print(f"warning: the data stages will not fit on this disk: {plan.verdict()}", file=sys.stderr)
    return plan.rows()


def _precision_rows(train: TrainParams, plan: RunPlan) -> list[str]:
    """What train.dtype / train.compile / train.attention resolve to for this shape on the host
    (auto: the cached timings of gptcore.autotune; with --measure, timed now when there are none),
    among the candidates a training run would time."""
    if plan.precision is None:
        return [
            f"auto: not measured yet for this shape on this {plan.device.type} (the first training run "
            "times the candidates; `gptcore info --measure` does it now)"
        ]
    return plan.precision.summary(train.max_iters).splitlines()


def add_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], sampling: argparse.ArgumentParser
) -> None:
    """The `info` command's flags; `sampling` holds the model and sampling flags it may share."""
    info = commands.add_parser(
        "info", help="parameters, FLOPs and memory of a model or of params.yaml's train section"
    )
    info.add_argument("--model", type=Path, help=f"model file (default: {MODEL_FILE} if it exists)")
    info.add_argument("--params", type=Path, help=f"params file (default: {DEFAULT_PARAMS} if it exists)")
    info.add_argument(
        "--measure",
        action="store_true",
        help="time the dtype/compile candidates now if this machine has no figures for them yet",
    )
    info.set_defaults(run=cmd_info)
