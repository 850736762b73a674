"""`gptcore export`: a model file written as a Hugging Face folder."""

from __future__ import annotations

import argparse

from gptcore.checkpoint import load_model
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
