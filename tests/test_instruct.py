"""Instruction fine-tuning: templates, loss masking, overlong records, response loss, chat with a template."""

from __future__ import annotations

import io
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gptcore.checkpoint import load_model, save_model
from gptcore.cli import main as cli_main
from gptcore.finetune import instruct
from gptcore.finetune.data import InstructionRecord
from gptcore.generate import complete
from gptcore.model import GPT, GPTConfig
from gptcore.params import PROMPT_TEMPLATES
from gptcore.sampling import Sampling
from gptcore.tokenizer import CharTokenizer

ALPACA = instruct.TEMPLATES["alpaca"]
GREEDY = Sampling(temperature=0.0, max_new_tokens=12, stop=tuple(ALPACA.stops))
TOKENIZER = CharTokenizer(sorted(set("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ.#:\n<|>")))


def tiny_model(block_size: int = 64) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=TOKENIZER.vocab_size, block_size=block_size, n_layer=1, n_head=2, n_embd=16)
    return GPT(config).eval()


def test_alpaca_prompt_is_the_books_template() -> None:
    assert instruct.render_prompt(ALPACA, "Add the numbers.", "1 and 2") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes "
        "the request.\n\n### Instruction:\nAdd the numbers.\n\n### Input:\n1 and 2\n\n### Response:\n"
    )
    # no input: no input section
    assert instruct.render_prompt(ALPACA, "Say hi.").endswith("### Instruction:\nSay hi.\n\n### Response:\n")


@pytest.mark.parametrize("name", sorted(instruct.TEMPLATES))
def test_template_round_trips_through_a_model_file(tmp_path: Path, name: str) -> None:
    template = instruct.TEMPLATES[name]
    path = tmp_path / "instruct.pt"
    save_model(path, tiny_model(), TOKENIZER, meta={"template": template.to_dict()})
    _, _, meta = load_model(path)
    loaded = instruct.template_of(meta)
    assert loaded == template
    assert instruct.render_prompt(loaded, "x", "y") == instruct.render_prompt(template, "x", "y")
    assert instruct.reply_stops(loaded) == template.stops
    assert instruct.template_of({"steps": 3}) is None  # a pretrained model has none


def test_prompt_and_padding_are_masked_from_the_loss() -> None:
    record = InstructionRecord("Say hi.", "", "hi")
    prompt = TOKENIZER.encode(instruct.render_prompt(ALPACA, "Say hi."))
    enc = instruct.encode_records(TOKENIZER, ALPACA, [record], 1000, mask_prompt=True, overlong="drop")
    seq = prompt + TOKENIZER.encode("hi") + [TOKENIZER.eot_id]
    assert enc.inputs == [seq[:-1]]
    n = len(prompt) - 1
    assert enc.targets[0][:n] == [instruct.IGNORE_INDEX] * n
    # the targets after the prompt are the reply and the end of text
    assert enc.targets[0][n:] == TOKENIZER.encode("hi") + [TOKENIZER.eot_id]

    unmasked = instruct.encode_records(TOKENIZER, ALPACA, [record], 1000, mask_prompt=False, overlong="drop")
    assert unmasked.targets == [seq[1:]]

    short = InstructionRecord("Say hi.", "", "h")
    both = instruct.encode_records(TOKENIZER, ALPACA, [record, short], 1000, True, "drop")
    idx, tgt = instruct.pad_batch(both.inputs, both.targets, TOKENIZER.eot_id)
    assert idx.shape == (2, len(seq) - 1)
    assert idx[1, -1] == TOKENIZER.eot_id and tgt[1, -1] == instruct.IGNORE_INDEX  # padding


def test_overlong_records_are_truncated_or_dropped_and_counted() -> None:
    prompt_len = len(TOKENIZER.encode(instruct.render_prompt(ALPACA, "Say.")))
    records = [
        InstructionRecord("Say.", "", "a" * 5),  # fits
        InstructionRecord("Say.", "", "a" * 50),  # too long: its reply is cut
        InstructionRecord("Say." + "x" * 100, "", "a"),  # the prompt alone fills the context
    ]
    block = prompt_len + 10
    cut = instruct.encode_records(TOKENIZER, ALPACA, records, block, True, "truncate")
    assert (cut.kept, cut.truncated, cut.dropped) == ([0, 1], 1, 1)
    assert len(cut.inputs[1]) == block and len(cut.targets[1]) == block
    dropped = instruct.encode_records(TOKENIZER, ALPACA, records, block, True, "drop")
    assert (dropped.kept, dropped.truncated, dropped.dropped) == ([0], 0, 2)


def test_response_loss_is_the_mean_over_reply_tokens_only() -> None:
    model = tiny_model(block_size=256)
    records = [InstructionRecord("Say hi.", "", "hi there"), InstructionRecord("Go.", "now", "ok")]
    enc = instruct.encode_records(TOKENIZER, ALPACA, records, 256, mask_prompt=False, overlong="truncate")
    assert enc.kept == [0, 1]
    scored = instruct.response_targets(enc, records, TOKENIZER, ALPACA)
    loss, tokens = instruct.masked_loss(
        model, enc.inputs, scored, TOKENIZER.eot_id, torch.device("cpu"), batch_size=1
    )
    assert tokens == len("hi there") + 1 + len("ok") + 1  # reply tokens and each one's end of text
    total = 0.0
    for inputs, targets in zip(enc.inputs, scored, strict=True):
        logits, _ = model(torch.tensor([inputs]))
        logp = F.log_softmax(logits[0], -1)
        total -= sum(logp[j, t].item() for j, t in enumerate(targets) if t != instruct.IGNORE_INDEX)
    assert math.isclose(loss, total / tokens, rel_tol=1e-5)


def test_chat_wraps_each_line_in_the_models_template(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tiny_model(block_size=256)
    path = tmp_path / "instruct.pt"
    save_model(path, model, TOKENIZER, meta={"template": ALPACA.to_dict()})
    monkeypatch.chdir(tmp_path)  # no params.yaml: flags and plain defaults
    monkeypatch.setattr(sys, "stdin", io.StringIO("Say hi.\nSay more.\n"))
    flags = ["--temperature", "0", "--max-new-tokens", "12", "--seed", "1", "--device", "cpu"]
    cli_main(["chat", "--model", str(path), *flags])
    captured = capsys.readouterr()
    assert "Prompt template alpaca: each line is a new instruction" in captured.err
    expected = [
        complete(model, TOKENIZER, instruct.render_prompt(ALPACA, line), GREEDY)
        for line in ("Say hi.", "Say more.")  # each turn alone: the template holds one
    ]
    assert captured.out == "".join(text if text.endswith("\n") else text + "\n" for text in expected)

    monkeypatch.setattr(sys, "stdin", io.StringIO("Hello there\n"))
    cli_main(["chat", "--model", str(path), "--instruction", "Reply as BEN.", *flags])
    reply = complete(
        model,
        TOKENIZER,
        instruct.render_prompt(ALPACA, "Reply as BEN.", "Hello there"),
        GREEDY,
    )
    assert capsys.readouterr().out.rstrip("\n") == reply.rstrip("\n")


def test_instruction_flag_needs_an_instruction_tuned_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "model.pt"
    save_model(path, tiny_model(), TOKENIZER)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO("x\n"))
    with pytest.raises(SystemExit):
        cli_main(["chat", "--model", str(path), "--instruction", "Reply.", "--device", "cpu"])
    assert "--instruction needs an instruction-tuned model" in capsys.readouterr().err


def test_params_know_every_template_by_name() -> None:
    assert tuple(instruct.TEMPLATES) == PROMPT_TEMPLATES
