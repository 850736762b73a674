"""The run plan and the one training step: what the run builds is what `auto` times and what
`gptcore info` shows, and the precision probe takes the run's own step."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pytest
import torch
import yaml
from support_train import BASE, train_section

from gptcore import autotune
from gptcore.autotune import Choice, Timing, TrainingProbe
from gptcore.cli import main
from gptcore.hf.convert import export_folder
from gptcore.model import GPT, GPTConfig
from gptcore.tokenizer import CharTokenizer
from gptcore.train import model_config, plan_run, train

CPU = torch.device("cpu")
WIDTH = 96  # the folder's SwiGLU width; the params' shape (n_embd 16) would give 64


def llama_folder(folder: Path, vocab_size: int) -> Path:
    config = GPTConfig(
        vocab_size=vocab_size,
        block_size=16,
        n_layer=1,
        n_head=2,
        n_embd=16,
        arch="llama",
        bias=False,
        tie_embeddings=True,
        intermediate_size=WIDTH,
    )
    torch.manual_seed(0)
    tokenizer = CharTokenizer(list("abcdefghij"))
    assert tokenizer.vocab_size <= vocab_size
    return export_folder(GPT(config), tokenizer, folder)


def imported(folder: Path, **changes: object):
    return dataclasses.replace(
        BASE, init_from=str(folder), arch="llama", bias=False, max_iters=2, eval_interval=2, **changes
    )


def test_with_init_from_the_plan_autotune_and_info_use_the_folders_shape(
    stores, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    folder = llama_folder(tmp_path / "hf", stores[0].vocab_size)
    p = imported(folder, dtype="auto", compile=False, attention="sdpa")
    assert model_config(p, stores[0].vocab_size).ffn_hidden != WIDTH  # the params alone say otherwise

    plan = plan_run(p, stores[0].vocab_size, CPU, measure=False, check=False)
    assert plan.config.ffn_hidden == WIDTH and plan.config.block_size == p.block_size

    timed: list[GPTConfig] = []

    def probe(params, config: GPTConfig, device, micro_batch, ranks):
        timed.append(config)
        return lambda c: Timing(c.dtype, c.compile, 0.2, 0.1, None, c.attention)

    monkeypatch.setenv("GPTCORE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(autotune, "TrainingProbe", probe)
    result = train(p, *stores, progress=False)
    assert [c.ffn_hidden for c in timed] == [WIDTH]
    assert result.model.config == timed[0] == plan.config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({"train": train_section(**dataclasses.asdict(p))}), encoding="utf-8"
    )
    main(["info"])
    out = capsys.readouterr().out
    assert f"intermediate_size={WIDTH}" in out
    assert "eager fp32, sdpa attention (cache)" in out  # the timings of the folder's shape


@pytest.mark.parametrize("accumulate", [1, 2])
def test_the_probe_and_training_take_the_same_step_accumulation_included(
    accumulate: int, stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = dataclasses.replace(BASE, grad_accum_steps=accumulate, attention="sdpa")
    forwards: list[bool] = []  # one entry a forward pass: whether the model was in training mode
    real_forward = GPT.forward

    def counted(self: GPT, idx: torch.Tensor, targets: torch.Tensor | None = None, **kwargs):
        forwards.append(self.training)
        return real_forward(self, idx, targets, **kwargs)

    monkeypatch.setattr(GPT, "forward", counted)
    ticks = itertools.count(step=100.0)  # every step "takes" 100 s: the warm-up steps and two timed
    TrainingProbe(p, model_config(p, 12), CPU, 4, clock=lambda: next(ticks))(Choice("float32", False))
    assert len(forwards) == (autotune.WARM_STEPS + 2) * accumulate

    forwards.clear()
    train(p, *stores, progress=False)
    assert forwards.count(True) == p.max_iters * accumulate  # evaluations run in eval mode
