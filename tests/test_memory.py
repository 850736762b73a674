"""Named model sizes, the memory plan and activation checkpointing.

The plan is held against what a real training step allocates on this CPU (torch's profiler
records every allocation and free); a run whose plan does not fit stops before training with the
numbers and what would fit; checkpointed blocks train the same curve in less memory."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import counting_documents, write_counting_store
from support_train import BASE, train_section

from gptcore.data.token_store import TokenStore
from gptcore.errors import GptcoreError
from gptcore.memory import Sizes, checkpoint_blocks, held_bytes, peak_allocated, plan_memory, what_would_fit
from gptcore.model import GPT, GPTConfig
from gptcore.optimizers import configure_optimizer
from gptcore.params import ParamsError, parse_section
from gptcore.presets import PRESETS
from gptcore.train import train

GPT2_VOCAB = 50257
NULL_SHAPE = {"n_layer": None, "n_head": None, "n_embd": None, "block_size": None}


# --- presets -------------------------------------------------------------------------------------


def test_a_preset_sets_the_shape_its_keys_leave_open() -> None:
    params = parse_section("train", train_section(preset="gpt2-350m", **NULL_SHAPE))
    assert (params.n_layer, params.n_head, params.n_embd, params.block_size) == (24, 16, 1024, 1024)
    assert params.preset == "gpt2-350m"
    # a key that repeats the preset's value is no contradiction
    same = parse_section("train", train_section(preset="gpt2-350m", **{**NULL_SHAPE, "n_layer": 24}))
    assert same == params


def test_a_key_that_contradicts_the_preset_is_an_error_naming_both() -> None:
    with pytest.raises(
        ParamsError,
        match=r"train.n_embd = 256 contradicts train.preset = 'gpt2-124m', which sets train.n_embd = 768",
    ):
        parse_section("train", train_section(preset="gpt2-124m", **{**NULL_SHAPE, "n_embd": 256}))


def test_a_preset_sets_the_family_and_a_family_that_contradicts_it_is_an_error() -> None:
    params = parse_section("train", train_section(preset="gpt2-124m", arch=None, **NULL_SHAPE))
    assert params.arch == "gpt2"
    with pytest.raises(
        ParamsError,
        match=r"train.arch = 'llama' contradicts train.preset = 'gpt2-124m', which sets train.arch = 'gpt2'",
    ):
        parse_section("train", train_section(preset="gpt2-124m", arch="llama", **NULL_SHAPE))
    with pytest.raises(ParamsError, match=r"train.arch = None is invalid: give a family \(gpt2, llama\)"):
        parse_section("train", train_section(arch=None))


def test_an_unknown_preset_and_a_shape_left_open_without_one_are_errors() -> None:
    with pytest.raises(
        ParamsError, match=r"train.preset = 'gpt2-xxl' is invalid: allowed: seed-13m, gpt2-124m"
    ):
        parse_section("train", train_section(preset="gpt2-xxl", **NULL_SHAPE))
    with pytest.raises(
        ParamsError, match=r"train.n_layer = None is invalid: give a number, or set train.preset"
    ):
        parse_section("train", train_section(n_layer=None))


@pytest.mark.parametrize(
    ("name", "published"),
    [
        ("gpt2-124m", 124e6),
        ("gpt2-350m", 355e6),
        ("gpt2-774m", 774e6),
        ("gpt2-1.5b", 1558e6),
        ("seed-2b", 2.1e9),
    ],
)
def test_presets_have_the_sizes_they_are_named_for(name: str, published: float) -> None:
    shape = PRESETS[name]
    config = GPTConfig(GPT2_VOCAB, shape.block_size, shape.n_layer, shape.n_head, shape.n_embd)
    # GPT-2's released models carry biases; ours need not, which is under 0.1% of them
    assert Sizes.of(config).total == pytest.approx(published, rel=0.01)


# --- the plan against a real step ------------------------------------------------------------------


def measured_peak(config: GPTConfig, batch_size: int, checkpointing: bool, micro_steps: int = 1) -> int:
    """The most bytes live at once while a model is built and trains two AdamW steps."""
    x = torch.randint(0, config.vocab_size, (batch_size, config.block_size))
    y = torch.randint(0, config.vocab_size, (batch_size, config.block_size))

    def two_steps() -> None:
        model = GPT(config)
        if checkpointing:
            checkpoint_blocks(model)
        optimizer = configure_optimizer(model, BASE, torch.device("cpu"))
        for _ in range(2):
            for _ in range(micro_steps):
                _, loss = model(x, y)
                loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return peak_allocated(two_steps)


LLAMA = {"arch": "llama", "tie_embeddings": False}
SHAPES = {  # (n_layer, n_embd, n_head, block_size, vocab_size, dropout, family)
    "blocks dominate": (4, 128, 4, 64, 64, 0.0, {}),
    "blocks dominate, dropout": (4, 128, 4, 64, 64, 0.1, {}),
    "the loss dominates": (2, 256, 4, 128, 2000, 0.1, {}),
    # SwiGLU's hidden width, RMSNorm, rotary positions (no table), a head of its own
    "llama, blocks dominate": (4, 128, 4, 64, 64, 0.0, LLAMA),
    "llama with qk_norm, dropout": (4, 128, 4, 64, 64, 0.1, {**LLAMA, "qk_norm": True}),
    "llama, another SwiGLU width": (4, 128, 4, 64, 64, 0.0, {**LLAMA, "intermediate_size": 512}),
    "llama, the loss dominates": (2, 256, 4, 128, 2000, 0.1, LLAMA),
}


def shape_config(shape: str) -> GPTConfig:
    n_layer, n_embd, n_head, block_size, vocab_size, dropout, family = SHAPES[shape]
    return GPTConfig(vocab_size, block_size, n_layer, n_head, n_embd, dropout=dropout, **family)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("checkpointing", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_the_plan_matches_what_a_training_step_allocates_within_5_percent(
    shape: str, checkpointing: bool
) -> None:
    torch.manual_seed(0)
    config = shape_config(shape)
    plan = plan_memory(config, 8, checkpointing=checkpointing)
    peak = measured_peak(config, 8, checkpointing)
    assert plan.total == pytest.approx(peak, rel=0.05)
    if checkpointing:  # and checkpointing saves memory, measured
        assert peak < 0.8 * measured_peak(config, 8, checkpointing=False)


@pytest.mark.parametrize("family", [{}, LLAMA])
def test_accumulated_gradients_are_planned_beside_the_activations(family: dict[str, object]) -> None:
    config = GPTConfig(64, 64, 4, 4, 128, **family)
    plan = plan_memory(config, 8, accumulating=True)
    peak = measured_peak(config, 8, checkpointing=False, micro_steps=2)
    assert plan.total == pytest.approx(peak, rel=0.05)
    assert plan.total > plan_memory(config, 8).total


def test_the_plan_counts_each_familys_parameters_and_what_bf16_casts() -> None:
    # llama: SwiGLU's three matrices of the intermediate width, RMSNorm gains, no position table,
    # and an untied head beside the embedding; counted from the model itself, not a formula
    for family in ({}, LLAMA, {**LLAMA, "qk_norm": True, "intermediate_size": 320}):
        config = GPTConfig(vocab_size=500, block_size=64, n_layer=3, n_head=4, n_embd=128, **family)
        model = GPT(config)
        n = sum(p.numel() for p in model.parameters())
        sizes = Sizes.of(config)
        assert sizes.total == n and plan_memory(config, 8).weights == 4 * n
        linear = {id(p): p for m in model.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters()}
        assert sizes.cast == sum(p.numel() for p in linear.values())
        # bf16's working copies: every matrix the blocks and the head multiply by, the token
        # embedding only where it is the head (tied), never gpt2's position table
        head = config.vocab_size * config.n_embd
        blocks_cast = config.n_layer * sum(p.numel() for p in model.h[0].parameters() if p.dim() == 2)
        assert sizes.cast == blocks_cast + head
        assert plan_memory(config, 8, bf16=True).working == 2 * sizes.cast
    untied = Sizes.of(GPTConfig(500, 64, 3, 4, 128, **LLAMA))
    tied = Sizes.of(GPTConfig(500, 64, 3, 4, 128, arch="llama"))
    assert untied.total - tied.total == 500 * 128 and untied.cast == tied.cast


def test_sharding_over_w_processes_divides_weights_gradients_and_moments() -> None:
    config = GPTConfig(vocab_size=64, block_size=64, n_layer=8, n_head=4, n_embd=128)
    whole = plan_memory(config, 8, processes=4, parallel="ddp")
    sharded = plan_memory(config, 8, processes=4, parallel="fsdp")
    assert whole.weights == 4 * Sizes.of(config).total and whole.optimizer == 2 * whole.weights
    assert sharded.weights == pytest.approx(whole.weights / 4, rel=0.01)
    assert sharded.optimizer == pytest.approx(whole.optimizer / 4, rel=0.01)
    assert sharded.gradients < whole.gradients / 2 and sharded.activations == whole.activations
    assert sharded.total < whole.total


def test_advice_for_a_plan_that_does_not_fit_names_changes_that_do() -> None:
    shape = PRESETS["gpt2-1.5b"]
    config = GPTConfig(GPT2_VOCAB, shape.block_size, shape.n_layer, shape.n_head, shape.n_embd)
    plan = plan_memory(
        config, 64, processes=8, parallel="ddp", bf16=True, available=24 * 2**30, where="a GPU"
    )
    assert plan.fits is False
    advice = what_would_fit(plan)
    assert any(a.startswith("train.parallel: fsdp") for a in advice)
    assert any(a.startswith("train.activation_checkpointing: true") for a in advice)
    fitting = [a for a in advice if "over" in a and "processes" in a]
    assert fitting and "still too much" not in fitting[0]


# --- in a run ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[TokenStore, TokenStore]:
    path = tmp_path_factory.mktemp("tokens")
    return write_counting_store(path / "train.h5", counting_documents(60, 1)), write_counting_store(
        path / "val.h5", counting_documents(20, 2)
    )


def test_a_run_that_cannot_fit_stops_before_training_with_the_plan(stores, capsys) -> None:
    huge = dataclasses.replace(BASE, batch_size=512, n_layer=48, n_head=25, n_embd=1600, block_size=512)
    evaluations = []
    with pytest.raises(
        GptcoreError, match=r"the memory plan does not fit: .* GiB per process does NOT fit"
    ) as exc:
        train(huge, *stores, on_eval=lambda s, m: evaluations.append(s), progress=False)
    assert "train.activation_checkpointing: true" in str(exc.value)
    assert evaluations == []  # not one step, not one evaluation
    captured = capsys.readouterr()
    assert "train: peak:" in captured.out + captured.err  # the plan was printed first


@pytest.mark.parametrize("family", [{}, {"arch": "llama", "tie_embeddings": False, "qk_norm": True}])
def test_checkpointed_blocks_train_the_same_curve_and_model(stores, family: dict[str, object]) -> None:
    p = dataclasses.replace(BASE, n_layer=2, dropout=0.1, grad_accum_steps=2, max_iters=10, **family)
    results = {}
    for checkpointing in (False, True):
        curve = []
        result = train(
            dataclasses.replace(p, activation_checkpointing=checkpointing),
            *stores,
            on_eval=lambda s, m, c=curve: c.append((s, m["train/loss"], m["val/loss"])),
            progress=False,
        )
        results[checkpointing] = (curve, result.model.state_dict())
    (plain, plain_state), (ckpt, ckpt_state) = results[False], results[True]
    # the recomputation replays the RNG, so dropout masks match and the run is the same
    assert [s for s, *_ in ckpt] == [s for s, *_ in plain]
    for a, b in zip(plain, ckpt, strict=True):
        assert b[1:] == pytest.approx(a[1:], rel=1e-5)
    assert ckpt_state.keys() == plain_state.keys()  # the names a model file carries are unchanged
    for name, tensor in plain_state.items():
        torch.testing.assert_close(ckpt_state[name], tensor, rtol=1e-4, atol=1e-6, msg=name)


def test_any_block_class_is_checkpointed() -> None:
    class Unit(torch.nn.Module):  # a block of another family: any class in a ModuleList
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(self.proj(x))

    class Tower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.ModuleList(Unit() for _ in range(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for layer in self.layers:
                x = layer(x)
            return x

    def saved_by_forward(tower: Tower) -> list[torch.Tensor]:
        saved: list[torch.Tensor] = []
        x = torch.randn(2, 4, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            out = tower(x).sum()
        out.backward()  # the recomputation runs here, outside the hooks
        assert x.grad is not None and all(u.proj.weight.grad is not None for u in tower.layers)
        return saved

    plain = Tower()
    kept = saved_by_forward(plain)  # each block: its input, its weight, its tanh output
    assert len(kept) == 9
    checkpoint_blocks(plain)
    kept = saved_by_forward(plain)  # each block: its input, nothing it computes
    assert len(kept) == 3 and all(t.shape == (2, 4) for t in kept)


@pytest.mark.parametrize("family", [{}, {"arch": "llama", "tie_embeddings": False}])
def test_the_plan_knows_muon_keeps_one_moment_for_the_matrices_it_owns(family: dict[str, object]) -> None:
    config = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32, **family)
    model = GPT(config)
    p = dataclasses.replace(BASE, optimizer="muon")
    optimizer = configure_optimizer(model, p, torch.device("cpu"))
    x = torch.randint(0, 64, (2, 16))
    model(x, x)[1].backward()
    optimizer.step()
    _, state = held_bytes(model, optimizer)  # measured: the moments the optimizers hold
    plan = plan_memory(config, 2, optimizer="muon")
    assert plan.optimizer == state < plan_memory(config, 2).optimizer
    assert any(label == "  optimizer (AdamW + Muon)" for label, _ in plan.rows())


def test_muon_is_refused_with_fsdp_over_several_processes() -> None:
    with pytest.raises(
        ParamsError, match=r"train.optimizer = 'muon' is invalid: not with train.parallel: fsdp"
    ):
        parse_section(
            "train", train_section(optimizer="muon", parallel="fsdp", nproc_per_node=2, batch_size=8)
        )
    assert parse_section(
        "train", train_section(optimizer="muon", parallel="ddp", nproc_per_node=2, batch_size=8)
    )
