"""`gptcore export`: a model file written as a Hugging Face folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from gptcore.checkpoint import MODEL_FILE, load_model
from gptcore.hf.convert import export_folder


def cmd_export(args: argparse.Namespace) -> None:
    model, tokenizer, _ = load_model(args.model, "cpu")
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
        "export", help="write a model file as a Hugging Face folder (config, safetensors, tokenizer)"
    )
    export.add_argument("--model", type=Path, default=MODEL_FILE, help="model file (default: %(default)s)")
    export.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder to write: a new or empty one, or an earlier export (only its files are replaced)",
    )
    export.add_argument(
        "--force",
        action="store_true",
        help="write into an existing folder of other files too (none of them is replaced or removed)",
    )
    export.set_defaults(run=cmd_export)
