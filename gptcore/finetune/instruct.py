"""Instruction fine-tuning: prompt templates, records encoded with the prompt masked from the
loss, response-only loss, and answers.

A record (`instruction`, optional `input`, `output`) becomes one sequence:

    render_prompt(template, instruction, input)  +  output  +  <|endoftext|>
    └──────── targets -100 (mask_prompt) ───────┘  └─ the loss is on these tokens ─┘

padded on the right with <|endoftext|> ids whose targets are -100 too (cross-entropy's
`ignore_index`), so neither the prompt nor padding is learned; the first <|endoftext|> after the
output is a target, so the model learns to end its reply. The template goes into the fine-tuned
model's file (its meta), so `gptcore chat` renders messages with `render_prompt` and ends replies
where `reply_stops` says.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from gptcore.finetune.data import InstructionRecord
from gptcore.generate import complete
from gptcore.model import GPT
from gptcore.sampling import Sampling
from gptcore.tokenizer import Tokenizer

IGNORE_INDEX = -100  # F.cross_entropy's default ignore_index


@dataclass(frozen=True)
class PromptTemplate:
    """How a record becomes a prompt: preamble + instruction (+ input when there is one) +
    response header, after which the model writes its reply. `stops`: text that, if the model
    starts writing another section, ends the reply (besides <|endoftext|>)."""

    name: str
    preamble: str
    instruction: str  # holds {instruction}
    input: str  # holds {input}; left out when the input is empty
    response: str
    stops: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "stops": list(self.stops)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PromptTemplate:
        return cls(**{**d, "stops": tuple(d["stops"])})


TEMPLATES = {
    # Alpaca's (Taori et al. 2023), the book's default
    "alpaca": PromptTemplate(
        name="alpaca",
        preamble=(
            "Below is an instruction that describes a task. "
            "Write a response that appropriately completes the request.\n\n"
        ),
        instruction="### Instruction:\n{instruction}",
        input="\n\n### Input:\n{input}",
        response="\n\n### Response:\n",
        stops=("\n### Instruction:", "\n### Input:", "\n### Response:"),
    ),
    # Phi-3's chat markers as plain text: shorter prompts, more of the context for the reply
    "phi3": PromptTemplate(
        name="phi3",
        preamble="",
        instruction="<|user|>\n{instruction}",
        input="\n{input}",
        response="\n<|assistant|>\n",
        stops=("<|user|>", "<|assistant|>"),
    ),
}


def render_prompt(template: PromptTemplate, instruction: str, input: str = "") -> str:
    """The prompt for one instruction (and its input): everything the model sees before its reply."""
    text = template.preamble + template.instruction.replace("{instruction}", instruction)
    if input.strip():
        text += template.input.replace("{input}", input)
    return text + template.response


def reply_stops(template: PromptTemplate) -> tuple[str, ...]:
    """Where a reply ends, besides <|endoftext|>: text that would open the template's next section."""
    return template.stops


def template_of(meta: dict[str, Any]) -> PromptTemplate | None:
    """The template stored in a model file's meta, or None for a model that was not instruction-tuned."""
    raw = meta.get("template")
    return PromptTemplate.from_dict(raw) if isinstance(raw, dict) else None


@dataclass
class EncodedRecords:
    inputs: list[list[int]]
    targets: list[list[int]]
    kept: list[int]  # index of each encoded record in the records given
    truncated: int = 0
    dropped: int = 0


def encode_records(
    tokenizer: Tokenizer,
    template: PromptTemplate,
    records: list[InstructionRecord],
    block_size: int,
    mask_prompt: bool,
    overlong: str,
) -> EncodedRecords:
    """Input and target ids of each record. A sequence longer than the context is cut to it
    (`truncate`: the end of the reply is lost) or left out (`drop`); one whose prompt alone fills
    the context leaves nothing to learn and is always dropped. Both are counted."""
    out = EncodedRecords([], [], [])
    prompts = tokenizer.encode_batch([render_prompt(template, r.instruction, r.input) for r in records])
    replies = tokenizer.encode_batch([r.output for r in records])
    for i, (prompt, reply) in enumerate(zip(prompts, replies, strict=True)):
        prompt, reply = prompt.tolist(), reply.tolist()
        seq = prompt + reply + [tokenizer.eot_id]
        if len(seq) - 1 > block_size:
            if overlong == "drop" or len(prompt) >= block_size:
                out.dropped += 1
                continue
            seq = seq[: block_size + 1]
            out.truncated += 1
        targets = seq[1:]
        if mask_prompt:
            # target j predicts seq[j + 1]: the prompt's own tokens are targets 0 .. len(prompt) - 2
            targets[: len(prompt) - 1] = [IGNORE_INDEX] * (len(prompt) - 1)
        out.inputs.append(seq[:-1])
        out.targets.append(targets)
        out.kept.append(i)
    return out


def response_targets(
    encoded: EncodedRecords, records: list[InstructionRecord], tokenizer: Tokenizer, template: PromptTemplate
) -> list[list[int]]:
    """The targets of `encoded` with every prompt token masked, whatever mask_prompt was: what the
    response-only loss scores."""
    prompts = tokenizer.encode_batch(
        [render_prompt(template, records[i].instruction, records[i].input) for i in encoded.kept]
    )
    masked = []
    for targets, prompt in zip(encoded.targets, prompts, strict=True):
        n = len(prompt) - 1
        masked.append([IGNORE_INDEX] * n + targets[n:])
    return masked


def pad_batch(
    inputs: list[list[int]], targets: list[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, longest) inputs (pad_id) and targets (IGNORE_INDEX)."""
    width = max(len(s) for s in inputs)
    idx = torch.full((len(inputs), width), pad_id, dtype=torch.long)
    tgt = torch.full((len(inputs), width), IGNORE_INDEX, dtype=torch.long)
    for row, (x, y) in enumerate(zip(inputs, targets, strict=True)):
        idx[row, : len(x)] = torch.tensor(x, dtype=torch.long)
        tgt[row, : len(y)] = torch.tensor(y, dtype=torch.long)
    return idx, tgt


def batch_loss(
    model: GPT, inputs: list[list[int]], targets: list[list[int]], pad_id: int, device: torch.device
) -> torch.Tensor:
    """Mean cross-entropy over the batch's unmasked targets."""
    idx, tgt = pad_batch(inputs, targets, pad_id)
    _, loss = model(idx.to(device), tgt.to(device))
    return loss


@torch.no_grad()
def masked_loss(
    model: GPT,
    inputs: list[list[int]],
    targets: list[list[int]],
    pad_id: int,
    device: torch.device,
    batch_size: int = 32,
) -> tuple[float, int]:
    """(mean nats per unmasked target token, number of such tokens), over all the records."""
    total, count = 0.0, 0
    for first in range(0, len(inputs), batch_size):
        idx, tgt = pad_batch(inputs[first : first + batch_size], targets[first : first + batch_size], pad_id)
        logits, _ = model(idx.to(device))
        tgt = tgt.to(device)
        total += F.cross_entropy(
            logits.float().view(-1, logits.shape[-1]), tgt.view(-1), reduction="sum"
        ).item()
        count += int((tgt != IGNORE_INDEX).sum())
    return (total / count if count else float("nan")), count


def answer(
    model: GPT,
    tokenizer: Tokenizer,
    template: PromptTemplate,
    instruction: str,
    input: str,
    max_new_tokens: int,
) -> str:
    """The model's greedy reply to one instruction, ended by <|endoftext|> or the template."""
    prompt = render_prompt(template, instruction, input)
    greedy = Sampling(temperature=0.0, max_new_tokens=max_new_tokens, stop=tuple(reply_stops(template)))
    return complete(model, tokenizer, prompt, greedy)
