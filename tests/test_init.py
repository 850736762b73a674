"""train.zero_init_proj: each block's output projections start at zero, and still learn."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, counting_documents, write_counting_store

from gptcore.model import GPT
from gptcore.params import ParamsError, TrainParams, parse_section
from gptcore.train import model_config, train

TINY = {
    "n_layer": 2,
    "n_head": 2,
    "n_embd": 16,
    "block_size": 16,
    "batch_size": 8,
    "max_iters": 30,
    "warmup_iters": 3,
    "eval_interval": 10,
    "eval_iters": 2,
    "checkpoint_interval": 0,
    "dtype": "float32",
    "compile": False,
    "device": "cpu",
    "threads": 1,
}


def params(**changes: object) -> TrainParams:
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))["train"]
    return parse_section("train", {**raw, **TINY, **changes})


def projections(model: GPT) -> dict[str, torch.Tensor]:
    return {
        name: module.weight
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and getattr(module, "residual_scale", False)
    }


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_zero_output_projections_zeroes_exactly_the_residual_projections(arch: str) -> None:
    torch.manual_seed(0)
    p = params(arch=arch, bias=arch == "gpt2")
    model = GPT(model_config(p, vocab_size=12))
    before = {name: t.detach().clone() for name, t in model.state_dict().items()}
    model.zero_output_projections()
    zeroed = {f"{name}.weight" for name in projections(model)} | {
        f"{name}.bias" for name in projections(model) if arch == "gpt2"
    }
    assert len(projections(model)) == 2 * p.n_layer  # attention's and the feed-forward's, per block
    for name, tensor in model.state_dict().items():
        if name in zeroed:
            assert not tensor.any(), name
        else:
            assert torch.equal(tensor, before[name]), name
    # every block is the identity: the residual stream leaving the blocks is the one entering them
    x = torch.randint(0, 12, (2, 8))
    with torch.no_grad():
        h = model.wte(x) + (model.wpe(torch.arange(8)) if model.wpe is not None else 0)
        for block in model.h:
            assert torch.equal(block(h, rope=model.rotary(0, 8) if model.rotary is not None else None), h)


def test_a_run_with_zero_initialised_projections_learns_them(tmp_path: Path) -> None:
    docs = counting_documents(200, seed=1)
    train_store = write_counting_store(tmp_path / "train.h5", docs)
    val_store = write_counting_store(tmp_path / "val.h5", counting_documents(40, seed=2))
    losses: list[float] = []
    result = train(
        params(zero_init_proj=True),
        train_store,
        val_store,
        on_eval=lambda step, m: losses.append(m["val/loss"]),
        progress=False,
    )
    assert all(w.abs().sum() > 0 for w in projections(result.model).values())
    assert losses[-1] < losses[0] - 0.5  # counting mod 11 is learnt
    # and it is another run than the default init's: same seed, other weights
    other = train(params(zero_init_proj=False), train_store, val_store, progress=False)
    assert not torch.equal(other.model.lm_head.weight, result.model.lm_head.weight)


def test_zero_init_proj_with_init_from_is_refused() -> None:
    with pytest.raises(ParamsError, match=r"train.zero_init_proj = True is invalid: .*init_from"):
        params(zero_init_proj=True, init_from="some/hf-folder")
