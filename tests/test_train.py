"""Tests of gptcore.train: LR schedule, AdamW groups, devices and precision, the training loop."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import COUNTING_VOCAB as VOCAB
from conftest import write_counting_store
from support_train import BASE, assert_same_weights

from gptcore.data.token_store import TokenStore
from gptcore.device import resolve_device
from gptcore.errors import GptcoreError
from gptcore.model import GPT, GPTConfig, flops_per_token
from gptcore.optimizers import configure_optimizer
from gptcore.params import TrainParams
from gptcore.train import TrainResult, lr_at, train


def params(**changes: object) -> TrainParams:
    return dataclasses.replace(BASE, **changes)


@pytest.fixture(scope="module", autouse=True)
def restore_torch_threads():
    # BASE.threads = 1: tiny models on a shared 2-core machine run ~50x faster without thread
    # contention; train() sets the count process-wide, so put it back for the other test modules
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def run(p: TrainParams, stores: tuple[TokenStore, TokenStore], **kw: object):
    return train(p, stores[0], stores[1], progress=False, **kw)


# --- learning-rate schedule ---------------------------------------------------------------------

SCHEDULE = params(learning_rate=6.0e-4, min_lr=6.0e-5, warmup_iters=10, max_iters=100)


def test_warmup_rises_linearly_from_lr_over_warmup_iters_to_the_peak() -> None:
    p = SCHEDULE
    warm = [lr_at(s, p) for s in range(p.warmup_iters)]
    assert warm[0] == pytest.approx(p.learning_rate / p.warmup_iters)
    steps = np.diff(warm)
    assert np.allclose(steps, p.learning_rate / p.warmup_iters)
    assert warm[-1] == pytest.approx(p.learning_rate)


def test_lr_peaks_at_learning_rate_then_decays_by_cosine_to_min_lr_at_max_iters() -> None:
    p = SCHEDULE
    lrs = [lr_at(s, p) for s in range(p.max_iters + 1)]
    assert max(lrs) == pytest.approx(p.learning_rate)
    assert lr_at(p.warmup_iters, p) == pytest.approx(p.learning_rate)
    assert lr_at(p.max_iters, p) == pytest.approx(p.min_lr)
    # half way through the decay the cosine is at its midpoint
    middle = p.warmup_iters + (p.max_iters - p.warmup_iters) // 2
    assert lr_at(middle, p) == pytest.approx((p.learning_rate + p.min_lr) / 2)
    after = lrs[p.warmup_iters :]
    assert all(a >= b for a, b in zip(after, after[1:], strict=False))
    assert all(p.min_lr <= lr <= p.learning_rate for lr in after)


def test_lr_stays_at_min_lr_past_max_iters() -> None:
    p = SCHEDULE
    assert [lr_at(s, p) for s in (p.max_iters + 1, 10 * p.max_iters)] == pytest.approx([p.min_lr] * 2)


def test_no_warmup_starts_at_the_peak() -> None:
    p = dataclasses.replace(SCHEDULE, warmup_iters=0)
    assert lr_at(0, p) == pytest.approx(p.learning_rate)
    assert lr_at(p.max_iters, p) == pytest.approx(p.min_lr)


# --- optimizer ----------------------------------------------------------------------------------


def test_configure_optimizer_puts_each_parameter_in_one_group_and_decays_only_matrices() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=8, n_layer=2, n_head=2, n_embd=16, bias=True))
    p = params(weight_decay=0.25, learning_rate=3.0e-3, beta1=0.8, beta2=0.95)
    optimizer = configure_optimizer(model, p, torch.device("cpu"))
    groups = optimizer.param_groups
    ids = [id(t) for g in groups for t in g["params"]]
    assert len(ids) == len(set(ids)), "a parameter sits in two groups"
    assert set(ids) == {id(t) for t in model.parameters()}
    decayed = {id(t) for g in groups if g["weight_decay"] == 0.25 for t in g["params"]}
    not_decayed = {id(t) for g in groups if g["weight_decay"] == 0.0 for t in g["params"]}
    assert decayed == {id(t) for t in model.parameters() if t.dim() >= 2}
    assert not_decayed == {id(t) for t in model.parameters() if t.dim() < 2}
    assert not_decayed, "the bias=True model has biases and LayerNorm gains to leave undecayed"
    assert all(g["lr"] == 3.0e-3 and g["betas"] == (0.8, 0.95) for g in groups)
    assert all(g["fused"] for g in groups)  # the fused kernel on CPU too: the faster step


def test_muon_takes_the_block_matrices_and_adamw_the_rest_each_at_its_own_rate() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=8, n_layer=2, n_head=2, n_embd=16, bias=True))
    p = params(optimizer="muon", learning_rate=3.0e-3, muon_learning_rate=0.05, weight_decay=0.25)
    optimizer = configure_optimizer(model, p, torch.device("cpu"))
    muon, adamw = optimizer.optimizers["muon"], optimizer.optimizers["adamw"]
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    names = {id(t): n for n, t in model.named_parameters()}
    in_muon = sorted(names[id(t)] for g in muon.param_groups for t in g["params"])
    in_adamw = [names[id(t)] for g in adamw.param_groups for t in g["params"]]
    assert in_muon == sorted(n for n, t in model.named_parameters() if n.startswith("h.") and t.dim() == 2)
    assert len(in_muon) == 2 * 4  # c_attn, attn c_proj, c_fc, mlp c_proj in each of 2 blocks
    assert {"wte.weight", "wpe.weight"} <= set(in_adamw)  # the head is tied to wte
    assert sorted(in_muon + in_adamw) == sorted(names.values()), "every parameter in exactly one group"
    optimizer.set_lr(1.5e-3)  # the schedule at half its peak: each group at half its own peak
    assert [g["lr"] for g in muon.param_groups] == pytest.approx([0.025])
    assert [g["lr"] for g in adamw.param_groups] == [1.5e-3, 1.5e-3]


def test_muon_training_lowers_the_loss(stores) -> None:
    result = run(params(optimizer="muon", max_iters=20), stores)
    # uniform guessing scores log(VOCAB); the counting documents are learnable far below it
    assert result.final_val_loss < math.log(VOCAB) - 0.5


def test_training_steps_muon_at_its_own_rate_on_the_schedule(stores, monkeypatch: pytest.MonkeyPatch) -> None:
    # what the optimizer really stepped with, not what it was built with
    seen: list[float] = []
    original = torch.optim.Muon.step

    def spy(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Muon, "step", spy)
    p = params(optimizer="muon", max_iters=6, warmup_iters=2, learning_rate=1.0e-3, muon_learning_rate=0.05)
    run(p, stores)
    assert seen == pytest.approx([lr_at(step, p) * 50 for step in range(6)])


# --- device and precision -----------------------------------------------------------------------


@pytest.fixture
def no_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.mark.usefixtures("no_accelerator")
def test_auto_device_is_cpu_without_an_accelerator() -> None:
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_auto_device_prefers_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


@pytest.mark.usefixtures("no_accelerator")
@pytest.mark.parametrize("name", ["cuda", "cuda:1", "mps"])
def test_explicit_missing_device_raises(name: str) -> None:
    with pytest.raises(GptcoreError, match=rf"train.device = '{name}'"):
        resolve_device(name)


# --- the training loop --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference_run(stores: tuple[TokenStore, TokenStore]):
    evals: list[tuple[int, float, float, float]] = []

    def record(step: int, metrics: dict[str, float]) -> None:
        evals.append((step, metrics["train/loss"], metrics["val/loss"], metrics["lr"]))

    result = run(BASE, stores, on_eval=record)
    return result, evals


def test_training_lowers_train_and_val_loss(reference_run) -> None:
    result, evals = reference_run
    _, first_train, first_val, _ = evals[0]
    assert first_train == pytest.approx(math.log(VOCAB), abs=0.3)
    assert result.final_train_loss < first_train - 0.5
    assert result.final_val_loss < first_val - 0.5


def test_on_eval_is_called_every_eval_interval_and_at_the_end(reference_run) -> None:
    _, evals = reference_run
    assert [e[0] for e in evals] == [0, 5, 10, 15, 20]
    assert [e[3] for e in evals] == pytest.approx([lr_at(s, BASE) for s in (0, 5, 10, 15, 20)])
    assert all(math.isfinite(e[1]) and math.isfinite(e[2]) for e in evals)


def test_final_eval_comes_at_max_iters_when_it_is_not_a_multiple_of_eval_interval(stores) -> None:
    steps: list[int] = []
    run(params(max_iters=7, eval_interval=3), stores, on_eval=lambda s, *_: steps.append(s))
    assert steps == [0, 3, 6, 7]


def test_result_fields_are_consistent(reference_run) -> None:
    result, evals = reference_run
    p = BASE
    assert result.steps == p.max_iters
    assert result.tokens_seen == p.max_iters * p.batch_size * p.block_size * p.grad_accum_steps
    assert (result.final_train_loss, result.final_val_loss) == evals[-1][1:3]
    assert isinstance(result.model, GPT)
    config = result.model.config
    assert (config.vocab_size, config.block_size, config.n_layer, config.n_head, config.n_embd) == (
        VOCAB,
        p.block_size,
        p.n_layer,
        p.n_head,
        p.n_embd,
    )
    assert result.flops_per_token == flops_per_token(config, result.model.num_params())
    assert result.wall_seconds > 0 and result.tokens_per_second > 0
    # throughput excludes evaluation time, so it is at least tokens over the whole wall time
    assert result.tokens_per_second >= result.tokens_seen / result.wall_seconds


def test_same_seed_gives_bit_identical_weights(reference_run, stores) -> None:
    again = run(BASE, stores)
    assert_same_weights(again.model, reference_run[0].model)
    assert again.final_val_loss == reference_run[0].final_val_loss


def test_different_seed_gives_different_weights(reference_run, stores) -> None:
    other = run(params(seed=BASE.seed + 1), stores).model.state_dict()
    reference = reference_run[0].model.state_dict()
    assert not torch.equal(other["wte.weight"], reference["wte.weight"])
    assert not torch.equal(other["h.0.attn.c_attn.weight"], reference["h.0.attn.c_attn.weight"])


def test_dropout_training_is_deterministic_too(stores) -> None:
    p = params(dropout=0.2, max_iters=6)
    assert_same_weights(run(p, stores).model, run(p, stores).model)


def trained_on(
    p: TrainParams, stores: tuple[TokenStore, TokenStore], monkeypatch: pytest.MonkeyPatch
) -> tuple[TrainResult, list[torch.Tensor]]:
    """Train, recording the windows the model trained on: its forward passes in training mode
    (evaluation scores its batches in eval mode)."""
    windows: list[torch.Tensor] = []
    forward = GPT.forward

    def recording(self, idx, *args, **kwargs):
        if self.training:
            windows.append(idx.clone())
        return forward(self, idx, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(GPT, "forward", recording)
        return run(p, stores), windows


def test_grad_accumulation_trains_on_every_micro_batch_and_the_seed_fixes_them(
    stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the attention kernel forced: no autotune probe steps among the recorded ones
    p = params(grad_accum_steps=3, max_iters=4, eval_interval=2, attention="sdpa")
    result, windows = trained_on(p, stores, monkeypatch)
    assert len(windows) == 4 * 3  # a micro-batch per accumulation step per optimizer step
    assert all(w.shape == (p.batch_size, p.block_size) for w in windows)
    assert result.tokens_seen == 4 * 3 * p.batch_size * p.block_size
    assert math.isfinite(result.final_val_loss)
    # each micro-batch of a step is new windows, not the step's first ones again
    for step in range(4):
        first, *rest = windows[3 * step : 3 * step + 3]
        assert not any(torch.equal(first, w) for w in rest), step
    # the same seed trains on the same tokens in the same order; another seed on others
    _, again = trained_on(p, stores, monkeypatch)
    assert all(torch.equal(a, b) for a, b in zip(windows, again, strict=True))
    _, other = trained_on(dataclasses.replace(p, seed=p.seed + 1), stores, monkeypatch)
    assert not all(torch.equal(a, b) for a, b in zip(windows, other, strict=True))


def test_two_accumulated_micro_batches_update_like_one_double_batch(stores) -> None:
    # micro-batches are drawn one after another from the same generator, so 2 x b windows are the
    # 2b windows of one batch, and the mean of the two half-batch losses is the full-batch loss:
    # the first update is the same up to float rounding (~1e-8 here; not bit-identical, as the
    # sums are taken in another order), far below the size of the update itself (~lr / warmup)
    p = params(max_iters=1, grad_clip=0.0)
    one = run(dataclasses.replace(p, batch_size=8), stores).model.state_dict()
    two = run(dataclasses.replace(p, batch_size=4, grad_accum_steps=2), stores).model.state_dict()
    torch.manual_seed(p.seed)
    init = GPT(GPTConfig(VOCAB, p.block_size, p.n_layer, p.n_head, p.n_embd)).state_dict()
    step = lr_at(0, p)
    assert (one["h.0.attn.c_attn.weight"] - init["h.0.attn.c_attn.weight"]).abs().max() > step / 2
    for key, value in two.items():
        torch.testing.assert_close(value, one[key], rtol=0, atol=step / 1000, msg=key)


def test_bfloat16_autocast_trains_on_cpu(stores) -> None:
    result = run(params(dtype="bfloat16", max_iters=2, eval_interval=2), stores)
    assert math.isfinite(result.final_train_loss)
    assert all(t.dtype == torch.float32 for t in result.model.parameters())  # master weights fp32


@pytest.mark.parametrize("split", ["train", "val"])
def test_split_shorter_than_a_window_raises_naming_it(
    split: str, stores: tuple[TokenStore, TokenStore], tmp_path: Path
) -> None:
    # block_size tokens give no full window of block_size inputs plus one target
    short = write_counting_store(tmp_path / "short.h5", [np.arange(BASE.block_size - 1) % 11])
    assert len(short) == BASE.block_size
    train_store, val_store = (short, stores[1]) if split == "train" else (stores[0], short)
    with pytest.raises(GptcoreError, match=rf"the {split} split has {BASE.block_size} tokens"):
        train(BASE, train_store, val_store, progress=False)
