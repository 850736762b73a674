"""The memory plan of each preset on 1, 8 and 64 GPUs of 24, 40 and 80 GiB (docs/scale.md, "The memory plan").

Computed by gptcore's planner (gptcore/memory.py), not measured: GPT-2's 50,257-token vocabulary,
bf16 (FSDP's bf16 compute copies, fp32 masters, gradients and AdamW moments), a micro-batch of
--micro-batch sequences of the preset's context per GPU, DDP's layout on one GPU and FSDP over 8
and 64. A plan "fits" a GPU when it fills at most 90% of it (gptcore.memory.HEADROOM).

    python benchmarks/memory_plan.py [--micro-batch 4]
"""

from __future__ import annotations

import argparse

from gptcore.memory import HEADROOM, Sizes, plan_memory
from gptcore.model import GPTConfig, flops_per_token
from gptcore.presets import PRESETS

GPT2_VOCAB = 50257
GPUS = (1, 8, 64)
MEMORY_GIB = (24, 40, 80)


def cell(total: int) -> str:
    fits = [gib for gib in MEMORY_GIB if total <= HEADROOM * gib * 2**30]
    where = f"fits {'/'.join(map(str, fits))}" if fits else "fits none"
    return f"{total / 2**30:,.1f} GiB ({where})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--micro-batch", type=int, default=4, help="sequences per GPU per micro-step")
    args = parser.parse_args()
    header = [
        "preset",
        "layers x heads x width, context",
        "parameters",
        "FLOPs/token (training)",
        "act. ckpt",
    ]
    header += [f"{n} GPU{'s' if n > 1 else ''} ({'fsdp' if n > 1 else 'one process'})" for n in GPUS]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, shape in PRESETS.items():
        config = GPTConfig(
            GPT2_VOCAB, shape.block_size, shape.n_layer, shape.n_head, shape.n_embd, arch=shape.arch
        )
        sizes = Sizes.of(config)
        table = config.block_size * config.n_embd if config.arch == "gpt2" else 0  # learned positions
        non_embedding = sizes.total - table  # as GPT.num_params()
        flops = flops_per_token(config, non_embedding)
        for checkpointing in (False, True):
            plans = [
                plan_memory(
                    config,
                    args.micro_batch * n,
                    processes=n,
                    parallel="fsdp" if n > 1 else "ddp",
                    bf16=True,
                    checkpointing=checkpointing,
                    sizes=sizes,
                )
                for n in GPUS
            ]
            first = (
                [
                    f"`{name}`",
                    f"{shape.n_layer} x {shape.n_head} x {shape.n_embd}, {shape.block_size}",
                    f"{sizes.total / 1e6:,.1f}M",
                    f"{flops / 1e9:,.2f} G",
                ]
                if not checkpointing
                else ["", "", "", ""]
            )
            row = [*first, "on" if checkpointing else "off", *(cell(p.total) for p in plans)]
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
