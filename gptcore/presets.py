"""Named model sizes for `train.preset`: GPT-2's four and the seeds' two.

A preset fixes the model's shape (the keys below) and its family; everything else (batch,
schedule, dropout, precision) stays in params.yaml. GPT-2's shapes are those of the released
checkpoints (Radford et al. 2019, table 2, with the corrected parameter counts of the released
models); with GPT-2's 50,257-token vocabulary and the output head tied to the token embedding
they have 124M, 355M, 774M and 1.56B parameters.

The seeds' two models (a Pile-trained GPT in the seeds, "Train LLM From Scratch"):
- `seed-13m` is the seed's 13M configuration exactly: 1 block, 8 heads, width 128, context 128.
  The seed counts 13M with an untied output head: with GPT-2's vocabulary the shape has 13.1M
  parameters under `train.tie_embeddings: false`, and 6.6M tied (the head's 6.4M are shared).
- `seed-2b` keeps the seed's width 2048, 16 heads and context 512, with 40 blocks: the seed's own
  configuration has 64 blocks, which is 3.3B parameters, not the 2B it is named for; 40 blocks
  is the nearest depth to 2B (2.1B with GPT-2's vocabulary).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Preset:
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    arch: str = "gpt2"  # the model family

    def keys(self) -> dict[str, int | str]:
        """The train keys the preset sets, by name."""
        return asdict(self)


PRESETS: dict[str, Preset] = {
    "seed-13m": Preset(n_layer=1, n_head=8, n_embd=128, block_size=128),
    "gpt2-124m": Preset(n_layer=12, n_head=12, n_embd=768, block_size=1024),
    "gpt2-350m": Preset(n_layer=24, n_head=16, n_embd=1024, block_size=1024),
    "gpt2-774m": Preset(n_layer=36, n_head=20, n_embd=1280, block_size=1024),
    "gpt2-1.5b": Preset(n_layer=48, n_head=25, n_embd=1600, block_size=1024),
    "seed-2b": Preset(n_layer=40, n_head=16, n_embd=2048, block_size=512),
}

# the train keys a preset decides (each one a field of `Preset`)
SHAPE_KEYS = ("arch", "n_layer", "n_head", "n_embd", "block_size")
