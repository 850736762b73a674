"""The scaling grid (gptcore.scaling.grid): sizes and budgets as params.yaml writes them, what each
run trains for its budget, and a bad grid named before any run starts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

from gptcore.errors import GptcoreError
from gptcore.params import ParamsError, ScalingParams, TrainParams, load_section, parse_section
from gptcore.scaling.grid import find_run, load_grid, parse_budget, parse_size
from gptcore.scaling.plan import OVERRIDES, check_grid, plan, tokens_per_step
from gptcore.train import lr_at

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
CPU = torch.device("cpu")


def scaling(**changes: object) -> ScalingParams:
    return parse_section("scaling", {**PARAMS["scaling"], **changes})


def train(**changes: object) -> TrainParams:
    return parse_section("train", {**PARAMS["train"], **changes})


def test_the_repository_grid_is_valid_and_every_run_buys_enough_steps() -> None:
    section = load_section("scaling", ROOT / "params.yaml")
    planned = check_grid(section, load_section("train", ROOT / "params.yaml"), 1024, CPU)
    assert len(planned) == len(section.sizes) * len(section.budgets)
    assert all(p.steps >= section.min_steps for p in planned)
    # a real IsoFLOP curve needs several sizes at each budget the fit sees, and a budget beyond them
    held = [p for p in planned if p.run.holdout]
    assert held and {p.run.budget for p in held} == {max(p.run.budget for p in planned)}
    assert len(section.sizes) >= 3 and len(section.budgets) - 1 >= 2


@pytest.mark.parametrize(
    ("text", "shape"),
    [("4x256", (4, 256, 8)), ("4x256x4", (4, 256, 4)), ("2x48x2", (2, 48, 2)), ("12x768x12", (12, 768, 12))],
)
def test_a_size_is_layers_by_width_with_heads_from_the_head_dim_or_given(text: str, shape: tuple) -> None:
    size = parse_size(text, head_dim=32)
    assert (size.n_layer, size.n_embd, size.n_head) == shape and size.name == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("4x250", "not a multiple of scaling.head_dim 32"),
        ("4x256x6", "6 heads do not divide the width 256"),
        ("4x96x32", "a head of 3 channels"),
        ("4by256", "is not a size"),
        ("0x256", "is not a size"),
        ("4x256x", "is not a size"),
    ],
)
def test_a_size_that_cannot_be_built_is_named(text: str, message: str) -> None:
    with pytest.raises(ParamsError, match=message) as err:
        parse_size(text, head_dim=32)
    assert text in str(err.value)


def test_budgets_are_quoted_numbers_of_flops() -> None:
    assert (
        parse_budget("3e12") == 3e12 and parse_budget("1.5e13") == 1.5e13 and parse_budget("2000") == 2000.0
    )
    for bad in ("3 TFLOPs", "-1e12", "0", "1e12e3", 3e12):
        with pytest.raises(ParamsError, match="scaling.budgets"):
            parse_budget(bad)  # type: ignore[arg-type]


def test_the_grid_is_every_size_at_every_budget_and_the_largest_is_held_out() -> None:
    grid = load_grid(scaling(sizes=["1x32", "2x64"], budgets=["1e10", "4e10", "2e10"], holdout_budget="4e10"))
    assert [r.name for r in grid] == [
        "1x32-1e10",
        "1x32-4e10",
        "1x32-2e10",
        "2x64-1e10",
        "2x64-4e10",
        "2x64-2e10",
    ]
    assert [r.name for r in grid if r.holdout] == ["1x32-4e10", "2x64-4e10"]
    assert (
        find_run(scaling(sizes=["1x32"], budgets=["1e10"], holdout_budget=None), "1x32", "1e10").budget
        == 1e10
    )
    with pytest.raises(ParamsError, match="no grid entry 3x96-1e10"):
        find_run(scaling(sizes=["1x32"], budgets=["1e10"], holdout_budget=None), "3x96", "1e10")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"holdout_budget": "1e12"}, "must be the largest budget"),
        ({"holdout_budget": "9e99"}, "is not one of scaling.budgets"),
        ({"sizes": ["2x64", "2x64"]}, "lists '2x64' twice"),
        ({"budgets": ["1e12", "1000000000000"], "holdout_budget": None}, "the same number of FLOPs"),
        ({"sizes": []}, "scaling.sizes"),
    ],
)
def test_a_bad_grid_is_refused(changes: dict, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        load_grid(scaling(**{"budgets": ["1e12", "2e12", "4e12"], "holdout_budget": "4e12", **changes}))


def test_a_run_trains_for_the_steps_its_budget_buys_with_the_schedule_scaled_to_them() -> None:
    section = scaling(sizes=["2x64"], budgets=["1e12", "4e12"], holdout_budget=None, warmup_fraction=0.05)
    base = train()
    small, big = (plan(run, base, section, 1024) for run in load_grid(section))
    per_step = small.flops_per_token * tokens_per_step(base)
    # as many whole steps as the budget pays for: never more, less by under one step
    assert small.flops <= 1e12 < small.flops + per_step and big.flops <= 4e12 < big.flops + per_step
    assert big.steps == pytest.approx(4 * small.steps, abs=1)
    assert (big.params.n_layer, big.params.n_embd, big.params.n_head) == (2, 64, 2)
    assert big.params.max_iters == big.steps and big.params.warmup_iters == round(0.05 * big.steps)
    # the cosine reaches train.min_lr at each run's own last step
    assert lr_at(big.steps, big.params) == pytest.approx(base.min_lr)
    assert lr_at(small.steps // 2, small.params) < lr_at(
        small.steps // 2, big.params
    )  # further along its decay
    # everything else is the train section's: the same family, batch and optimizer as pretraining
    same = {f.name for f in dataclasses.fields(TrainParams)} - {
        "n_layer", "n_head", "n_embd", "max_iters", "warmup_iters", "eval_interval",
        "checkpoint_interval", "benchmark_interval", "preset", "init_from", *OVERRIDES,
    }  # fmt: skip
    assert {k: getattr(big.params, k) for k in same} == {k: getattr(base, k) for k in same}
    # but precision and threads are scaling's where it sets them, train's where it says null
    assert (big.params.dtype, big.params.threads, big.params.batch_size) == (
        section.dtype or base.dtype,
        section.threads or base.threads,
        section.batch_size or base.batch_size,
    )
    unset = plan(
        load_grid(section)[0],
        base,
        dataclasses.replace(section, dtype=None, threads=None, batch_size=None),
        1024,
    )
    assert (unset.params.dtype, unset.params.threads, unset.params.batch_size) == (
        base.dtype,
        base.threads,
        base.batch_size,
    )
    batch = section.batch_size or base.batch_size
    assert big.parameters > 0 and big.tokens == big.steps * batch * base.block_size


def test_every_entry_that_cannot_run_is_named_before_any_run_starts() -> None:
    section = scaling(
        sizes=["1x32", "2x32", "4x256", "64x8192x64"],
        budgets=["1e11", "2e11", "1e15"],
        holdout_budget=None,
        min_steps=20,
        batch_size=None,  # train's 32 sequences a step
    )
    with pytest.raises(GptcoreError) as err:
        check_grid(section, train(), 1024, CPU)
    text = str(err.value)
    assert "no run started" in text
    # too small a budget for 20 steps of the two larger sizes at 1e11 FLOPs, with what would buy them
    assert "4x256-1e11: the budget buys 1 steps" in text and "2e+12 FLOPs would buy them" in text
    assert "64x8192x64-1e11: the budget buys 0 steps" in text
    assert "1x32" not in text and "2x32" not in text  # the entries that can run are not named
    # a model far beyond this machine's memory, named at the budget where it had steps enough
    assert "64x8192x64-1e15: its memory plan does not fit" in text


def test_a_budget_dvc_read_as_a_number_is_named_with_the_fix() -> None:
    # unquoted, 2e9 is a string to PyYAML (YAML 1.1) and a number to DVC (YAML 1.2), which then
    # passes the run 2000000000.0
    section = scaling(sizes=["1x32"], budgets=["2e9"], holdout_budget=None)
    with pytest.raises(ParamsError, match=r"no grid entry 1x32-2000000000.0: .*quote it in params.yaml"):
        find_run(section, "1x32", "2000000000.0")


def test_a_grid_in_bf16_where_bf16_matmuls_are_slow_is_warned_about(monkeypatch: pytest.MonkeyPatch) -> None:
    from gptcore.scaling import plan as plan_module

    widths: list[int] = []

    def slowdown(ratio: float):
        def measure(device: torch.device, width: int) -> float:
            widths.append(width)
            return ratio

        return measure

    section = load_section("scaling", ROOT / "params.yaml")
    bf16 = check_grid(dataclasses.replace(section, dtype="bfloat16"), train(), 1024, CPU)
    monkeypatch.setattr(plan_module, "matmul_slowdown", slowdown(78.0))
    warning = plan_module.slow_bf16_warning(bf16, CPU)
    assert warning is not None and "78x slower than fp32" in warning and "scaling.dtype to float32" in warning
    assert widths == [max(p.params.n_embd for p in bf16)]  # measured at the grid's widest model
    monkeypatch.setattr(plan_module, "matmul_slowdown", slowdown(1.2))
    assert plan_module.slow_bf16_warning(bf16, CPU) is None
    # a grid in fp32 is not measured at all
    fp32 = check_grid(dataclasses.replace(section, dtype="float32"), train(), 1024, CPU)
    widths.clear()
    assert plan_module.slow_bf16_warning(fp32, CPU) is None and widths == []
