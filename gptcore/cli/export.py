"""`gptcore export`: a model file written as a Hugging Face folder, or as a GGUF file for llama.cpp."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gptcore.checkpoint import MODEL_FILE, load_model
from gptcore.errors import DataError, GptcoreError
from gptcore.finetune import lora
from gptcore.finetune.instruct import template_of
from gptcore.hf.convert import export_folder
from gptcore.hf.gguf import DTYPES, check_output_file, export_gguf
from gptcore.model import GPT
from gptcore.tokenizer import Tokenizer


def output_format(args: argparse.Namespace) -> str:
    """--format, else gguf for an --out that ends in .gguf and hf for any other."""
    if args.format is not None:
        return args.format
    return "gguf" if args.out.suffix.lower() == ".gguf" else "hf"


def inputs(args: argparse.Namespace) -> list[Path]:
    """The files the export reads, which --out must never name."""
    return [args.model] if args.adapter is None else [args.model, args.adapter]


def write_gguf(args: argparse.Namespace, model: GPT, tokenizer: Tokenizer, meta: dict[str, Any]) -> None:
    template = template_of(meta)
    done = export_gguf(
        model,
        tokenizer,
        args.out,
        dtype=args.dtype or "f32",
        template=template.to_dict() if template is not None else None,
        name=args.model.stem,
        force=args.force,
        protect=inputs(args),
    )
    chat = f"chat template {template.name}" if template is not None else "no chat template"
    print(
        f"exported {args.model} to {args.out} as GGUF {done.architecture} ({done.dtype}, "
        f"{done.bytes / 2**20:,.1f} MiB, {tokenizer.kind} tokenizer of {tokenizer.vocab_size} ids, {chat}): "
        f"serve it with llama.cpp (llama-server -m {args.out}), Ollama or LM Studio (docs/export.md)"
    )


def with_adapter(args: argparse.Namespace, model: GPT, meta: dict[str, Any]) -> tuple[GPT, dict[str, Any]]:
    """The model with --adapter's LoRA adapters merged into its weights (refused when they were
    trained on another model), and its meta with the adapters' prompt template."""
    adapter = lora.read_adapter(args.adapter)
    if adapter.facts.get("task") != "instruct":
        raise DataError(f"{args.adapter} holds a classifier's adapters: export writes language models")
    merged = lora.merge(lora.attach(model, adapter, lora.Base.of(model, args.model)))
    print(f"merged the LoRA adapters of {args.adapter} into {args.model}")
    template = adapter.facts.get("template")
    return merged, meta if template is None else {**meta, "template": template}


def cmd_export(args: argparse.Namespace) -> None:
    form = output_format(args)
    if form == "hf" and args.dtype not in (None, "f32"):
        raise GptcoreError(f"--dtype {args.dtype} is for --format gguf: a Hugging Face export is float32")
    if form == "gguf":  # refused before the model is read
        check_output_file(args.out, args.force, inputs(args))
    model, tokenizer, meta = load_model(args.model, "cpu")
    if args.adapter is not None:
        model, meta = with_adapter(args, model, meta)
    if form == "gguf":
        write_gguf(args, model, tokenizer, meta)
        return
    export_folder(model, tokenizer, args.out, force=args.force, protect=[args.model])
    config = model.config
    family = {
        "gpt2": "GPT2LMHeadModel",
        "llama": "Qwen3ForCausalLM" if config.qk_norm else "LlamaForCausalLM",
    }
    print(
        f"exported {args.model} to {args.out}/ as {family[config.arch]} "
        f"({'tied' if config.tie_embeddings else 'untied'} head, {tokenizer.kind} tokenizer of "
        f"{tokenizer.vocab_size} ids): load it with transformers' AutoModelForCausalLM.from_pretrained"
    )


def add_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], sampling: argparse.ArgumentParser
) -> None:
    """The `export` command's flags; `sampling` holds the model and sampling flags it may share."""
    export = commands.add_parser(
        "export",
        help="write a model file as a Hugging Face folder (config, safetensors, tokenizer) or a GGUF file",
    )
    export.add_argument("--model", type=Path, default=MODEL_FILE, help="model file (default: %(default)s)")
    export.add_argument(
        "--out",
        type=Path,
        required=True,
        help="hf: folder to write, a new or empty one or an earlier export (only its files are replaced); "
        "gguf: the file to write",
    )
    export.add_argument(
        "--format",
        choices=("hf", "gguf"),
        help="hf: a Hugging Face folder for transformers; gguf: one file for llama.cpp, Ollama, LM Studio "
        "(default: gguf when --out ends in .gguf, else hf)",
    )
    export.add_argument(
        "--dtype",
        choices=DTYPES,
        help="gguf: the matrices' type, f32 (as trained), f16 or q8_0 (8-bit) (default: f32)",
    )
    export.add_argument(
        "--adapter",
        type=Path,
        help="a LoRA adapter folder (models/instruct_adapter) to merge into --model's weights first",
    )
    export.add_argument(
        "--force",
        action="store_true",
        help="hf: write into an existing folder of other files too (none of them is replaced or removed); "
        "gguf: replace an existing file",
    )
    export.set_defaults(run=cmd_export)
