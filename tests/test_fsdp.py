"""Sharded training (train.parallel: fsdp, FSDP2): the train stage under torchrun, 2 processes
with gloo on this CPU.

A sharded pair must train like one process on the same global batch, resume exactly after a
SIGKILL, write a checkpoint that another number of processes resumes, write the same plain model
file as any other run, and hold about half of DDP's parameter and optimizer bytes per process."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from support_stage import TWO, finish, kill_after_checkpoints, logged, stage_workspace

from gptcore.checkpoint import load_checkpoint, load_model

pytestmark = [
    pytest.mark.slow,  # every test runs torchrun
    pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without distributed"),
]

# two micro-batches a step and activation checkpointing: fsdp's reduce on each micro-batch and the
# recomputation in the backward pass both take part
FSDP = {**TWO, "parallel": "fsdp", "activation_checkpointing": True}
HELD = re.compile(r"held by this process: ([\d,]+) bytes of parameters, ([\d,]+) of optimizer state")


def held(out: str) -> tuple[int, int]:
    params, state = HELD.search(out).groups()
    return int(params.replace(",", "")), int(state.replace(",", ""))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """The same run as one process, as an fsdp pair and as a ddp pair: (workspace, stage output)."""
    base = tmp_path_factory.mktemp("fsdp")
    layouts = {
        "one": {**FSDP, "nproc_per_node": 1},
        "fsdp": FSDP,
        "ddp": {**FSDP, "parallel": "ddp"},
    }
    return {
        name: (ws := stage_workspace(base / name, **train), finish(ws)) for name, train in layouts.items()
    }


def test_an_fsdp_pair_gives_the_loss_curve_and_weights_of_one_process(runs) -> None:
    one, two = runs["one"][0], runs["fsdp"][0]
    for name in ("train/loss", "val/loss"):
        a, b = logged(one, name), logged(two, name)
        assert [s for s, _ in a] == [s for s, _ in b] == [str(s) for s in range(0, 41, 10)]
        for (_, x), (_, y) in zip(a, b, strict=True):
            assert float(y) == pytest.approx(float(x), rel=1e-5, abs=1e-6), name
    # the model file is the plain one of any run: evaluate, sample and chat load it as ever
    m1, _, _ = load_model(one / "models" / "model.pt")
    m2, _, _ = load_model(two / "models" / "model.pt")
    for (name, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
    assert sorted(p.name for p in (two / "models").iterdir()) == ["model.pt"]


def test_each_fsdp_process_holds_half_the_parameter_and_optimizer_bytes_of_ddp(runs) -> None:
    fsdp, ddp = held(runs["fsdp"][1]), held(runs["ddp"][1])
    assert ddp[0] > 0 and ddp[1] == 2 * ddp[0]  # AdamW: two moments a weight
    # measured from the tensors each process holds; shards are padded to whole rows, so a little over
    for sharded, whole in zip(fsdp, ddp, strict=True):
        assert 0.5 <= sharded / whole < 0.55


def test_an_fsdp_pair_killed_then_resumed_ends_identical_to_an_uninterrupted_pair(
    runs, tmp_path: Path
) -> None:
    ws = stage_workspace(tmp_path / "killed", **FSDP, checkpoint_interval=10)
    kill_after_checkpoints(ws, writes=1, extra_seconds=0.2, group=True)
    out = finish(ws)
    assert "resuming from models/checkpoint.pt at step" in out
    straight = runs["fsdp"][0]
    assert (ws / "models" / "model.pt").read_bytes() == (straight / "models" / "model.pt").read_bytes()
    for name in ("train/loss", "val/loss"):
        assert logged(ws, name) == logged(straight, name)


def test_an_fsdp_checkpoint_resumes_with_another_process_count(runs, tmp_path: Path) -> None:
    ws = stage_workspace(tmp_path / "pair", **FSDP, checkpoint_interval=10)
    kill_after_checkpoints(ws, writes=2, extra_seconds=0.0, group=True)
    saved = load_checkpoint(ws / "models" / "checkpoint.pt")
    # consolidated: whole tensors, the layout of a one-process run's checkpoint
    one, _, _ = load_model(runs["one"][0] / "models" / "model.pt")
    for name, tensor in one.state_dict().items():
        assert saved["model"][name].shape == tensor.shape, name
    alone = stage_workspace(tmp_path / "alone", **{**FSDP, "nproc_per_node": 1, "checkpoint_interval": 10})
    (alone / "models").mkdir(exist_ok=True)
    shutil.copy(ws / "models" / "checkpoint.pt", alone / "models" / "checkpoint.pt")
    out = finish(alone)
    assert f"resuming from models/checkpoint.pt at step {saved['step']}" in out
    assert "the checkpoint was written by 2 processes, this run has 1" in out
    # without dropout the data stream alone decides the run: it ends as the pair would have
    for name in ("train/loss", "val/loss"):
        for (s, a), (t, b) in zip(logged(alone, name), logged(runs["fsdp"][0], name), strict=True):
            assert s == t and float(a) == pytest.approx(float(b), rel=1e-5, abs=1e-6), name
